"""Helpers for the simulator tests: a simulator behind an in-process HTTP client (the lab's
``AsgiClient``: plain requests handed to the simulator's ASGI app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from csi_oxide_lab.asgi import AsgiClient, Response
from csi_oxide_lab.sim import SimConfig
from csi_oxide_lab.sim.inprocess import InProcessSimulator
from tests.oxide_bodies import blank_source, disk_create_body, snapshot_source
from tests.units import GIB

TOKEN = "oxide-token-" + "ab" * 20


@dataclass
class Api:
    """A simulator and an authenticated client talking to it over in-process HTTP."""

    sim: InProcessSimulator
    http: AsgiClient

    @property
    def node(self) -> str:
        return self.sim.local_instance_id

    async def create_disk(
        self,
        name: str,
        size: int = GIB,
        *,
        block_size: int = 4096,
        snapshot_id: str | None = None,
        description: str = "",
    ) -> Response:
        source = blank_source(block_size) if snapshot_id is None else snapshot_source(snapshot_id)
        body = disk_create_body(name, size, source, description=description)
        return await self.http.post("/v1/disks", params={"project": "csi"}, json=body)

    async def disk(self, name: str) -> dict[str, object]:
        r = await self.http.get(f"/v1/disks/{name}", params={"project": "csi"})
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        return body

    async def snapshot(self, name: str, disk: str) -> Response:
        body = {"name": name, "description": "", "disk": disk}
        return await self.http.post("/v1/snapshots", params={"project": "csi"}, json=body)

    async def attach(self, disk: str, instance: str | None = None) -> Response:
        target = instance or self.node
        return await self.http.post(f"/v1/instances/{target}/disks/attach", json={"disk": disk})

    async def detach(self, disk: str, instance: str | None = None) -> Response:
        target = instance or self.node
        return await self.http.post(f"/v1/instances/{target}/disks/detach", json={"disk": disk})

    async def run_state(self, instance: str | None = None) -> str:
        r = await self.http.get(f"/v1/instances/{instance or self.node}")
        assert r.status_code == 200, r.text
        state: str = r.json()["run_state"]
        return state


def error_of(r: Response) -> tuple[int, str | None, str]:
    """(status, error_code, message) of an error answer, after checking its shape."""
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"]
    assert set(body) <= {"request_id", "error_code", "message"}
    return r.status_code, body.get("error_code"), body["message"]


@asynccontextmanager
async def serve(
    *, validate: bool = True, token: str | None = TOKEN, **config: object
) -> AsyncIterator[Api]:
    """A fresh simulator (``config`` as SimConfig fields) and a client with its token."""
    sim = InProcessSimulator(SimConfig(token=token, **config))  # type: ignore[arg-type]
    headers = {"authorization": f"Bearer {sim.token}"}
    try:
        async with AsgiClient(sim.asgi_app(validate=validate), headers=headers) as http:
            yield Api(sim, http)
    finally:
        sim.close()
