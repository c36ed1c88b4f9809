"""Real Controller servers over gRPC for several clusters sharing one simulated Oxide project.

Each cluster is a ``ControllerService`` with its own ``--cluster-id``, its own HTTP client and its
own unix socket, as two Kubernetes clusters' controllers would share one Oxide project. The raw
client ``World.api`` reads and changes the simulator behind the drivers' backs (set-up, checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.controller.ops import ControllerOps
from csi_oxide.daemon.health import Health
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.controller import ControllerService
from csi_oxide.server.identity import IdentityService
from csi_oxide.wiring import build_controller_ops
from csi_oxide_lab.sim import SimConfig
from csi_oxide_lab.sim.inprocess import InProcessSimulator
from csi_oxide_lab.testing import sim_client
from tests.units import GIB

Code = grpc.StatusCode
Mode = csi.VolumeCapability.AccessMode


def cap(block: bool = False) -> csi.VolumeCapability:
    mode = Mode(mode=Mode.SINGLE_NODE_WRITER)
    if block:
        return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=mode)
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode
    )


@asynccontextmanager
async def controller_stub(
    socket: Path, ops: ControllerOps, *, grace: float = 1.0
) -> AsyncIterator[csi_grpc.ControllerAsyncStub]:
    """A real Controller server for ``ops`` on the unix socket ``socket``, and a stub for it."""
    server = CsiServer(
        f"unix://{socket}",
        Services(identity=IdentityService(Health()), controller=ControllerService(ops)),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            yield csi_grpc.ControllerStub(channel)
    finally:
        await server.stop(grace=grace)


async def code_of(call: object) -> Code:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return Code.OK


async def failure(call: object) -> grpc.aio.AioRpcError:
    """The error a call must end with."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


@dataclass
class Cluster:
    """One cluster's controller, reached over gRPC."""

    cluster_id: str
    stub: csi_grpc.ControllerAsyncStub
    ops: ControllerOps

    async def create(
        self,
        name: str,
        size: int = GIB,
        *,
        snapshot: str = "",
        volume: str = "",
        parameters: dict[str, str] | None = None,
    ) -> csi.Volume:
        source = None
        if snapshot:
            source = csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot)
            )
        elif volume:
            source = csi.VolumeContentSource(
                volume=csi.VolumeContentSource.VolumeSource(volume_id=volume)
            )
        answer = await self.stub.CreateVolume(self.create_request(name, size, source, parameters))
        return answer.volume

    @staticmethod
    def create_request(
        name: str,
        size: int = GIB,
        source: csi.VolumeContentSource | None = None,
        parameters: dict[str, str] | None = None,
    ) -> csi.CreateVolumeRequest:
        return csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[cap()],
            volume_content_source=source,
            parameters=parameters or {},
        )

    async def snapshot(
        self, name: str, source: str, parameters: dict[str, str] | None = None
    ) -> csi.Snapshot:
        answer = await self.stub.CreateSnapshot(
            csi.CreateSnapshotRequest(
                name=name, source_volume_id=source, parameters=parameters or {}
            )
        )
        return answer.snapshot

    async def publish(self, volume_id: str, node: str) -> dict[str, str]:
        answer = await self.stub.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=node, volume_capability=cap()
            )
        )
        return dict(answer.publish_context)

    async def unpublish(self, volume_id: str, node: str) -> None:
        await self.stub.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node)
        )

    async def expand(self, volume_id: str, size: int) -> int:
        answer = await self.stub.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=volume_id, capacity_range=csi.CapacityRange(required_bytes=size)
            )
        )
        return answer.capacity_bytes

    async def listed_volumes(self) -> list[str]:
        answer = await self.stub.ListVolumes(csi.ListVolumesRequest())
        return [e.volume.volume_id for e in answer.entries]

    async def listed_snapshots(
        self, snapshot_id: str = "", source_volume_id: str = ""
    ) -> list[str]:
        request = csi.ListSnapshotsRequest(
            snapshot_id=snapshot_id, source_volume_id=source_volume_id
        )
        answer = await self.stub.ListSnapshots(request)
        return [e.snapshot.snapshot_id for e in answer.entries]


Hook = Callable[..., Awaitable[None]]


class Interposer:
    """A cluster's ``OxideApi`` that runs a test's hooks around its Oxide calls: ``before[op]``
    once before the next call of ``op`` (someone else changing Oxide between two of the driver's
    steps, at exactly that point), and ``each`` around every call (given the operation's name and
    whether the call was made yet: raising or stalling there cuts the operation at that point).
    The simulator and the client stay real; only the moment is scripted."""

    def __init__(self, api: HttpOxideClient, world: World) -> None:
        self._api = api
        self._world = world

    def __getattr__(self, name: str) -> object:
        target = getattr(self._api, name)
        if not callable(target) or name.startswith("_") or name == "aclose":
            return target

        async def call(*args: object, **kwargs: object) -> object:
            hook = self._world.before.pop(name, None)
            if hook is not None:
                await hook(*args)
            if self._world.each is not None:
                await self._world.each(name, False)
            try:
                return await target(*args, **kwargs)
            finally:  # also after an error answer: a hook raising here replaces it (lost)
                if self._world.each is not None:
                    await self._world.each(name, True)

        return call


@dataclass
class World:
    """One simulator, its raw client, and a controller per cluster. ``before``: hooks run once
    before a driver's next call of an Oxide operation (see ``Interposer``)."""

    sim: InProcessSimulator
    api: HttpOxideClient
    clusters: dict[str, Cluster] = field(default_factory=dict)
    before: dict[str, Hook] = field(default_factory=dict)
    each: Callable[[str, bool], Awaitable[None]] | None = None

    @property
    def node(self) -> str:
        return self.sim.local_instance_id

    async def state(self) -> tuple[object, ...]:
        """Everything Oxide holds, for "nothing was touched" comparisons."""
        disks = sorted(
            (d.id, d.name, d.description, d.size, str(d.state), d.instance_id, d.snapshot_id)
            for d in await self.api.disk_list()
        )
        snaps = sorted(
            (s.id, s.name, s.description, s.disk_id, s.size, str(s.state))
            for s in await self.api.snapshot_list()
        )
        content = sorted((name, self.sim.read_content(name)) for name in self.sim.disk_names())
        return (tuple(disks), tuple(snaps), tuple(content))


async def serve(
    tmp_path: Path,
    clusters: Sequence[str] = ("test",),
    *,
    inflight: Callable[[], InFlight] = InFlight,
    **config: object,
) -> AsyncGenerator[World, None]:
    """Start the simulator and one controller per cluster ID; stop them afterwards.
    ``inflight`` makes each controller's guard (the default never cuts an operation)."""
    sim = InProcessSimulator(SimConfig(**config))  # type: ignore[arg-type]
    world = World(sim, sim_client(sim))
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(world.api.aclose)
        for i, cluster_id in enumerate(clusters):
            api = sim_client(sim)
            stack.push_async_callback(api.aclose)
            ops = build_controller_ops(
                cast(OxideApi, Interposer(api, world)), cluster=cluster_id, inflight=inflight()
            )
            stub = await stack.enter_async_context(controller_stub(tmp_path / f"c{i}.sock", ops))
            world.clusters[cluster_id] = Cluster(cluster_id, stub, ops)
        yield world
    assert sim.contract_violations == []
