"""Oxide API JSON bodies as the tests build them, defined here once: what Oxide answers (``Disk``,
``Snapshot``, ``Instance``, ``Image``, an error) and what a client sends (``DiskCreate`` with its
``disk_source``, ``ImageCreate``). Each builder gives a valid body of the published document
(``tests/test_oxide_bodies.py`` checks them against it), with ``changes`` applied: a test spoils
or adjusts only the fields it is about."""

from __future__ import annotations

from tests.units import GIB

DISK_UUID = "6c1a9d3e-2f4b-4c5d-8e9f-0a1b2c3d4e5f"
PROJECT_UUID = "11111111-2222-4333-8444-555555555555"
INSTANCE_UUID = "0f1e2d3c-4b5a-4968-8776-655443322110"
SNAPSHOT_UUID = "22222222-3333-4444-8555-666666666666"
IMAGE_UUID = "0b9e1c1e-5d4c-4a3b-9f2e-1d0c9b8a7f6e"
TIME = "2026-01-02T03:04:05Z"
# The disk states whose body names the instance (``DiskState``'s variants with ``instance``).
ATTACHMENT_STATES = frozenset({"attaching", "attached", "detaching"})


def disk_state(state: str, instance: str = INSTANCE_UUID) -> dict[str, object]:
    """A ``DiskState``: ``{"state": state}``, with the instance for the attachment states."""
    body: dict[str, object] = {"state": state}
    if state in ATTACHMENT_STATES:
        body["instance"] = instance
    return body


def disk_body(
    name: str = "csi-0123456789abcdef",
    *,
    state: str | dict[str, object] = "detached",
    **changes: object,
) -> dict[str, object]:
    """A ``Disk`` (detached unless ``state``: a state's name, or the whole ``DiskState``)."""
    body: dict[str, object] = {
        "id": DISK_UUID,
        "name": name,
        "description": "",
        "project_id": PROJECT_UUID,
        "size": GIB,
        "block_size": 4096,
        "state": disk_state(state) if isinstance(state, str) else state,
        "device_path": f"/mnt/{name}",
        "disk_type": "distributed",
        "read_only": False,
        "image_id": None,
        "snapshot_id": None,
        "time_created": TIME,
        "time_modified": TIME,
    }
    body.update(changes)
    return body


def snapshot_body(name: str = "snap-0123456789abcdef", **changes: object) -> dict[str, object]:
    """A ``Snapshot`` (ready) of the disk ``DISK_UUID``."""
    body: dict[str, object] = {
        "id": SNAPSHOT_UUID,
        "name": name,
        "description": "",
        "project_id": PROJECT_UUID,
        "disk_id": DISK_UUID,
        "size": GIB,
        "state": "ready",
        "time_created": TIME,
        "time_modified": TIME,
    }
    body.update(changes)
    return body


def instance_body(name: str = "node-1", **changes: object) -> dict[str, object]:
    """An ``Instance`` (running, no boot disk)."""
    body: dict[str, object] = {
        "id": INSTANCE_UUID,
        "name": name,
        "description": "",
        "project_id": PROJECT_UUID,
        "run_state": "running",
        "boot_disk_id": None,
        "hostname": name,
        "memory": GIB,
        "ncpus": 2,
        "auto_restart_enabled": True,
        "enable_jumbo_frames": False,
        "time_created": TIME,
        "time_modified": TIME,
        "time_run_state_updated": TIME,
    }
    body.update(changes)
    return body


def image_body(name: str = "img-a", **changes: object) -> dict[str, object]:
    """An ``Image`` of the project (``project_id=None``: a silo image)."""
    body: dict[str, object] = {
        "id": IMAGE_UUID,
        "name": name,
        "description": "",
        "project_id": PROJECT_UUID,
        "size": GIB,
        "block_size": 4096,
        "os": "debian",
        "version": "13",
        "time_created": TIME,
        "time_modified": TIME,
    }
    body.update(changes)
    return body


def error_body(
    message: str, code: str | None = None, request_id: str = "req-1"
) -> dict[str, object]:
    """An ``Error``: its ``error_code`` only when ``code`` is given (Oxide leaves it out)."""
    body: dict[str, object] = {"request_id": request_id, "message": message}
    if code is not None:
        body["error_code"] = code
    return body


# ---- DiskCreate -----------------------------------------------------------------------------


def blank_source(block_size: int = 4096) -> dict[str, object]:
    """A ``disk_source`` for a blank disk."""
    return {"type": "blank", "block_size": block_size}


def snapshot_source(snapshot_id: str, *, read_only: bool | None = None) -> dict[str, object]:
    """A ``disk_source`` from a snapshot (``read_only`` only when given)."""
    source: dict[str, object] = {"type": "snapshot", "snapshot_id": snapshot_id}
    if read_only is not None:
        source["read_only"] = read_only
    return source


def image_source(image_id: str, *, read_only: bool | None = None) -> dict[str, object]:
    """A ``disk_source`` from an image (``read_only`` only when given)."""
    source: dict[str, object] = {"type": "image", "image_id": image_id}
    if read_only is not None:
        source["read_only"] = read_only
    return source


def disk_create_body(
    name: str = "vol-a",
    size: int = GIB,
    source: dict[str, object] | None = None,
    **changes: object,
) -> dict[str, object]:
    """A ``DiskCreate`` of a distributed disk from ``source`` (default: blank, 4096-byte
    blocks)."""
    body: dict[str, object] = {
        "name": name,
        "description": "",
        "size": size,
        "disk_backend": {"type": "distributed", "disk_source": source or blank_source()},
    }
    body.update(changes)
    return body


def image_create_body(
    name: str = "img-a", snapshot_id: str = SNAPSHOT_UUID, **changes: object
) -> dict[str, object]:
    """An ``ImageCreate`` from the snapshot ``snapshot_id``."""
    body: dict[str, object] = {
        "name": name,
        "description": "",
        "os": "debian",
        "version": "13",
        "source": {"type": "snapshot", "id": snapshot_id},
    }
    body.update(changes)
    return body
