"""Shared set-up for controller tests: ``csi_oxide_lab.testing.controller_env`` (ControllerOps over
a
simulator reached by real HTTP requests, carried in-process by the ASGI transport)."""

from __future__ import annotations

from datetime import UTC, datetime

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller.ops import NewVolume
from csi_oxide.oxide.types import Disk, DiskState, Snapshot, SnapshotState
from csi_oxide_lab.testing import ControllerEnv as Env
from csi_oxide_lab.testing import controller_env
from tests.units import GIB

__all__ = ["Env", "controller_env", "new"]


def new(name: str = "pvc-1", required: int = GIB, limit: int = 0, **kw: object) -> NewVolume:
    return NewVolume(name=name, capacity=CapacityRange(required, limit), **kw)  # type: ignore[arg-type]


def a_snapshot(name: str, description: str) -> Snapshot:
    """A ready 1 GiB snapshot of the test project's disk (``a_disk``'s default ID)."""
    return Snapshot(
        id="6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e61",
        name=name,
        description=description,
        project_id="6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e60",
        disk_id="6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
        size=GIB,
        state=SnapshotState.READY,
        time_created=datetime(2026, 1, 1, tzinfo=UTC),
    )


def a_disk(
    name: str, description: str, disk_id: str = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
) -> Disk:
    """A detached 1 GiB disk of the test project, as the API would answer it."""
    return Disk(
        id=disk_id,
        name=name,
        description=description,
        project_id="6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e60",
        size=GIB,
        block_size=4096,
        state=DiskState.DETACHED,
        instance_id=None,
        snapshot_id=None,
        image_id=None,
        read_only=False,
        disk_type="distributed",
        time_created=datetime(2026, 1, 1, tzinfo=UTC),
    )
