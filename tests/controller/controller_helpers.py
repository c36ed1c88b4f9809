"""Shared set-up for controller tests: ``csi_oxide.testing.controller_env`` (ControllerOps over a
simulator reached by real HTTP requests, carried in-process by the ASGI transport)."""

from __future__ import annotations

from csi_oxide.controller.ops import NewVolume
from csi_oxide.testing import ControllerEnv as Env
from csi_oxide.testing import controller_env
from csi_oxide.volumes import CapacityRange

GIB = 1024**3

__all__ = ["GIB", "Env", "controller_env", "new"]


def new(name: str = "pvc-1", required: int = GIB, limit: int = 0, **kw: object) -> NewVolume:
    return NewVolume(name=name, capacity=CapacityRange(required, limit), **kw)  # type: ignore[arg-type]
