"""Shared set-up for controller tests: ControllerOps over a simulator reached by real HTTP requests
(the ASGI transport carries them in-process)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from csi_oxide.controller.ops import ControllerOps, NewVolume
from csi_oxide.controller.sizing import CapacityRange
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.sim import SimConfig, Simulator

GIB = 1024**3


@dataclass
class Env:
    sim: Simulator
    api: HttpOxideClient
    ops: ControllerOps
    node: str


async def make_env(**config: object) -> tuple[Simulator, HttpOxideClient]:
    sim = Simulator(SimConfig(**config))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=sim.asgi_app(validate=True))
    api = HttpOxideClient.for_tests(
        host="http://sim", token=sim.token, project=sim.config.project, transport=transport
    )
    return sim, api


def new(name: str = "pvc-1", required: int = GIB, limit: int = 0, **kw: object) -> NewVolume:
    return NewVolume(name=name, capacity=CapacityRange(required, limit), **kw)  # type: ignore[arg-type]
