"""The Controller service over real gRPC, against the simulator: the spec's error table, row by row.

Each row names an RPC, how the request (or the world) is set up and the gRPC code the CSI spec
asks for. The server is the real one (CsiServer on a unix socket, interceptor and all); the Oxide
side is the simulator reached through the HTTP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.controller.ops import SnapshotInfo, VolumeInfo
from csi_oxide.controller.pages import Walks
from csi_oxide.controller.record import volume_name
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.types import Disk, DiskSpec
from csi_oxide.server import controller as controller_service
from csi_oxide_lab.sim.inprocess import InProcessSimulator
from csi_oxide_lab.testing import controller_env
from tests.server.controller_world import code_of, controller_stub
from tests.units import GIB

Code = grpc.StatusCode
Mode = csi.VolumeCapability.AccessMode
T = TypeVar("T")
MISSING_NODE = "00000000-0000-4000-8000-000000000000"


def cap(
    mode: Mode.Mode.ValueType = Mode.SINGLE_NODE_WRITER, block: bool = False
) -> csi.VolumeCapability:
    if block:
        return csi.VolumeCapability(
            block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=mode)
        )
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=Mode(mode=mode)
    )


@dataclass
class World:
    sim: InProcessSimulator
    api: HttpOxideClient
    stub: csi_grpc.ControllerAsyncStub
    node: str

    async def volume(self, name: str = "pvc-1", size: int = GIB) -> str:
        answer = await self.stub.CreateVolume(
            csi.CreateVolumeRequest(
                name=name,
                capacity_range=csi.CapacityRange(required_bytes=size),
                volume_capabilities=[cap()],
            )
        )
        return answer.volume.volume_id

    async def publish(self, volume_id: str, node: str | None = None) -> None:
        await self.stub.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=node or self.node, volume_capability=cap()
            )
        )


async def _serve(tmp_path: Path, **config: object) -> AsyncIterator[World]:
    env = controller_env(**config)  # type: ignore[arg-type]
    try:
        async with controller_stub(tmp_path / "c.sock", env.ops) as stub:
            yield World(env.sim, env.api, stub, env.node)
    finally:
        await env.api.aclose()
    assert env.sim.contract_violations == []


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in _serve(tmp_path, hotplug=True, instances=1, quota_gib=100):
        yield w


def _create(**kw: object) -> csi.CreateVolumeRequest:
    fields: dict[str, object] = {"name": "pvc-x", "volume_capabilities": [cap()]}
    fields.update(kw)
    return csi.CreateVolumeRequest(**fields)  # type: ignore[arg-type]


# ---- CreateVolume ----


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (_create(name=""), Code.INVALID_ARGUMENT),
        (_create(volume_capabilities=[]), Code.INVALID_ARGUMENT),
        (_create(volume_capabilities=[cap(Mode.MULTI_NODE_MULTI_WRITER)]), Code.INVALID_ARGUMENT),
        (_create(parameters={"type": "fast"}), Code.INVALID_ARGUMENT),
        (_create(parameters={"blockSize": "1024"}), Code.INVALID_ARGUMENT),
        (_create(capacity_range=csi.CapacityRange(required_bytes=-1)), Code.INVALID_ARGUMENT),
        (
            _create(capacity_range=csi.CapacityRange(required_bytes=GIB + 1, limit_bytes=GIB + 2)),
            Code.OUT_OF_RANGE,
        ),
        (_create(capacity_range=csi.CapacityRange(required_bytes=1024 * GIB)), Code.OUT_OF_RANGE),
        (
            _create(
                volume_content_source=csi.VolumeContentSource(
                    snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id="snap-missing")
                )
            ),
            Code.NOT_FOUND,
        ),
        (
            _create(
                volume_content_source=csi.VolumeContentSource(
                    volume=csi.VolumeContentSource.VolumeSource(volume_id="csi-0000000000000000")
                )
            ),
            Code.NOT_FOUND,
        ),
        (
            # A clone of itself: the source cannot exist yet (was ABORTED forever: the source's
            # guard is the volume's own, held by this very call).
            _create(
                name="pvc-self",
                volume_content_source=csi.VolumeContentSource(
                    volume=csi.VolumeContentSource.VolumeSource(volume_id=volume_name("pvc-self"))
                ),
            ),
            Code.NOT_FOUND,
        ),
        (_create(), Code.OK),
    ],
)
async def test_create_volume_rows(
    world: World, request_: csi.CreateVolumeRequest, code: Code
) -> None:
    assert await code_of(world.stub.CreateVolume(request_)) == code


async def test_create_volume_conflicts_and_quota(world: World) -> None:
    await world.volume("pvc-1", GIB)
    assert await code_of(world.stub.CreateVolume(_create(name="pvc-1"))) == Code.OK
    bigger = _create(name="pvc-1", capacity_range=csi.CapacityRange(required_bytes=5 * GIB))
    assert await code_of(world.stub.CreateVolume(bigger)) == Code.ALREADY_EXISTS
    huge = _create(name="pvc-2", capacity_range=csi.CapacityRange(required_bytes=200 * GIB))
    assert await code_of(world.stub.CreateVolume(huge)) == Code.RESOURCE_EXHAUSTED


async def test_second_call_for_a_volume_in_flight_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = controller_env()
    inside, release = asyncio.Event(), asyncio.Event()
    disk_create = env.api.disk_create

    async def held(spec: DiskSpec) -> Disk:
        inside.set()  # the first CreateVolume holds the volume's guard until released
        await release.wait()
        return await disk_create(spec)

    monkeypatch.setattr(env.api, "disk_create", held)
    try:
        async with controller_stub(tmp_path / "c.sock", env.ops) as stub:
            first = asyncio.ensure_future(stub.CreateVolume(_create(name="pvc-slow")))
            await asyncio.wait_for(inside.wait(), 30)
            assert await code_of(stub.CreateVolume(_create(name="pvc-slow"))) == Code.ABORTED
            release.set()
            assert (await first).volume.volume_id == volume_name("pvc-slow")
    finally:
        await env.api.aclose()
    assert env.sim.contract_violations == []


# ---- DeleteVolume ----


async def test_delete_volume_rows(world: World) -> None:
    vol = await world.volume()
    assert await code_of(world.stub.DeleteVolume(csi.DeleteVolumeRequest())) == (
        Code.INVALID_ARGUMENT
    )
    await world.publish(vol)
    attached = world.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    assert await code_of(attached) == Code.FAILED_PRECONDITION
    for unknown in ("csi-0000000000000000", "Not A Name", "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"):
        assert await code_of(
            world.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=unknown))
        ) == (Code.OK)


async def test_an_id_with_a_trailing_newline_is_no_volume_and_never_sent(world: World) -> None:
    """``csi-…\\n`` is not an Oxide name (``$`` in a Python regex also matches before a final
    newline): every RPC treats it as unknown without asking Oxide, and the volume it resembles is
    untouched (the simulator's router, like that regex, would resolve it to that volume)."""
    vol = await world.volume()
    snap = (
        await world.stub.CreateSnapshot(csi.CreateSnapshotRequest(name="s", source_volume_id=vol))
    ).snapshot.snapshot_id
    bad, bad_snap = vol + "\n", snap + "\n"
    requests_before = sum(world.sim.request_counts.values())
    calls = {
        "DeleteVolume": (world.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=bad)), Code.OK),
        "GetVolume": (
            world.stub.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=bad)),
            Code.NOT_FOUND,
        ),
        "Expand": (
            world.stub.ControllerExpandVolume(
                csi.ControllerExpandVolumeRequest(
                    volume_id=bad, capacity_range=csi.CapacityRange(required_bytes=2 * GIB)
                )
            ),
            Code.NOT_FOUND,
        ),
        "DeleteSnapshot": (
            world.stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=bad_snap)),
            Code.OK,
        ),
        "GetSnapshot": (
            world.stub.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=bad_snap)),
            Code.NOT_FOUND,
        ),
    }
    for what, (call, code) in calls.items():
        assert await code_of(call) == code, what
    assert sum(world.sim.request_counts.values()) == requests_before
    assert world.sim.disk_names() == [vol]
    assert world.sim.snapshot_names() == [snap]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("n" * 128, Code.OK),  # csi-sanity's maximum-length name
        ("\u00e9" * 64, Code.OK),  # 128 bytes
        ("\u00e9" * 65, Code.INVALID_ARGUMENT),  # 130 bytes
        ("n" * 100_000, Code.INVALID_ARGUMENT),
        ("pvc\n1", Code.INVALID_ARGUMENT),  # control characters are banned by the spec
        ("pvc\x7f", Code.INVALID_ARGUMENT),
    ],
    ids=["128-ascii", "128-bytes", "130-bytes", "100k", "newline", "del"],
)
async def test_names_beyond_the_spec_limits_are_invalid(
    world: World, name: str, code: Code
) -> None:
    assert await code_of(world.stub.CreateVolume(_create(name=name))) == code
    snapshot = csi.CreateSnapshotRequest(name=name, source_volume_id=await world.volume("src"))
    assert await code_of(world.stub.CreateSnapshot(snapshot)) == code


async def test_an_enormous_id_gets_its_own_code_not_a_dropped_trailer(world: World) -> None:
    """A NOT_FOUND message names the ID it was asked about; with an ID of 100,000 characters the
    status trailer outgrew the client's 8 KiB metadata limit, and the CO saw RESOURCE_EXHAUSTED
    from its own gRPC library instead of NOT_FOUND."""
    for huge in ("v" * 100_000, "\u00e9" * 50_000):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await world.stub.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=huge))
        assert info.value.code() == Code.NOT_FOUND
        details = info.value.details() or ""
        assert "more characters cut" in details
        assert len(details) < 4096


# ---- ControllerPublishVolume / ControllerUnpublishVolume ----


async def test_publish_rows(world: World) -> None:
    vol = await world.volume()

    def req(**kw: object) -> csi.ControllerPublishVolumeRequest:
        fields: dict[str, object] = {
            "volume_id": vol,
            "node_id": world.node,
            "volume_capability": cap(),
        }
        fields.update(kw)
        return csi.ControllerPublishVolumeRequest(**fields)  # type: ignore[arg-type]

    publish = world.stub.ControllerPublishVolume
    assert await code_of(publish(req(volume_id=""))) == Code.INVALID_ARGUMENT
    assert await code_of(publish(req(node_id=""))) == Code.INVALID_ARGUMENT
    assert await code_of(publish(req(volume_capability=None))) == Code.INVALID_ARGUMENT
    assert await code_of(publish(req(volume_id="csi-0000000000000000"))) == Code.NOT_FOUND
    assert await code_of(publish(req(node_id=MISSING_NODE))) == Code.NOT_FOUND
    assert await code_of(publish(req(node_id="not-a-uuid"))) == Code.NOT_FOUND
    assert await code_of(publish(req())) == Code.OK
    assert await code_of(publish(req())) == Code.OK  # idempotent
    other = world.sim.instance_ids[1]
    assert await code_of(publish(req(node_id=other))) == Code.FAILED_PRECONDITION


async def test_publish_beyond_the_attach_limit_is_resource_exhausted(world: World) -> None:
    volumes = [await world.volume(f"pvc-{i}") for i in range(13)]
    codes = [
        await code_of(
            world.stub.ControllerPublishVolume(
                csi.ControllerPublishVolumeRequest(
                    volume_id=v, node_id=world.node, volume_capability=cap()
                )
            )
        )
        for v in volumes
    ]
    # The simulated instance has no boot disk: all 12 of Oxide's slots are free.
    assert codes[:12] == [Code.OK] * 12
    assert codes[12] == Code.RESOURCE_EXHAUSTED


async def test_unpublish_rows(world: World) -> None:
    vol = await world.volume()
    await world.publish(vol)
    unpublish = world.stub.ControllerUnpublishVolume
    missing_id = csi.ControllerUnpublishVolumeRequest(node_id=world.node)
    assert await code_of(unpublish(missing_id)) == Code.INVALID_ARGUMENT
    for volume_id, node in (
        ("csi-0000000000000000", world.node),
        (vol, MISSING_NODE),
        (vol, world.sim.instance_ids[1]),
    ):
        request = csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node)
        assert await code_of(unpublish(request)) == Code.OK
    assert (await world.api.disk_view(vol)).instance_id == world.node  # none of those detached it
    done = csi.ControllerUnpublishVolumeRequest(volume_id=vol, node_id=world.node)
    assert await code_of(unpublish(done)) == Code.OK
    assert (await world.api.disk_view(vol)).instance_id is None


async def test_hotplug_off_refuses_attach_and_detach(tmp_path: Path) -> None:
    async for w in _serve(tmp_path, hotplug=False):
        vol = await w.volume()
        publish = w.stub.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=vol, node_id=w.node, volume_capability=cap()
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await publish
        assert info.value.code() == Code.FAILED_PRECONDITION
        assert w.node in (info.value.details() or "")
        assert "hot-plug" in (info.value.details() or "")
        assert (await w.api.disk_view(vol)).instance_id is None


# ---- ValidateVolumeCapabilities, GetVolume, List*, GetCapacity ----


async def test_validate_rows(world: World) -> None:
    vol = await world.volume()
    validate = world.stub.ValidateVolumeCapabilities
    assert await code_of(validate(csi.ValidateVolumeCapabilitiesRequest(volume_id=vol))) == (
        Code.INVALID_ARGUMENT
    )
    missing = csi.ValidateVolumeCapabilitiesRequest(
        volume_id="csi-0000000000000000", volume_capabilities=[cap()]
    )
    assert await code_of(validate(missing)) == Code.NOT_FOUND
    multi = await validate(
        csi.ValidateVolumeCapabilitiesRequest(
            volume_id=vol, volume_capabilities=[cap(Mode.MULTI_NODE_READER_ONLY)]
        )
    )
    assert not multi.HasField("confirmed")
    assert multi.message
    ok = await validate(
        csi.ValidateVolumeCapabilitiesRequest(volume_id=vol, volume_capabilities=[cap(block=True)])
    )
    assert ok.HasField("confirmed")


async def test_get_and_list_rows(world: World) -> None:
    vols = sorted([await world.volume(f"pvc-{i}") for i in range(3)])
    get = world.stub.ControllerGetVolume
    assert await code_of(get(csi.ControllerGetVolumeRequest())) == Code.INVALID_ARGUMENT
    missing = csi.ControllerGetVolumeRequest(volume_id="csi-0000000000000000")
    assert await code_of(get(missing)) == Code.NOT_FOUND
    page = await world.stub.ListVolumes(csi.ListVolumesRequest(max_entries=2))
    assert [e.volume.volume_id for e in page.entries] == vols[:2]
    rest = await world.stub.ListVolumes(csi.ListVolumesRequest(starting_token=page.next_token))
    assert [e.volume.volume_id for e in rest.entries] == vols[2:]
    bad = csi.ListVolumesRequest(starting_token="garbage")
    assert await code_of(world.stub.ListVolumes(bad)) == Code.ABORTED
    negative = csi.ListVolumesRequest(max_entries=-1)
    assert await code_of(world.stub.ListVolumes(negative)) == Code.INVALID_ARGUMENT
    capacity = await world.stub.GetCapacity(csi.GetCapacityRequest())
    assert capacity.available_capacity == 97 * GIB


class _StillWalks(Walks[T]):
    """The servicer's ``Walks`` on a clock that stands still: a walk is kept however long the
    test takes (on the real clock a walk is kept ``WALK_TTL``, 5 s: a slow machine outlives it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, clock=lambda: 0.0, **kwargs)


async def test_a_paged_walk_lists_the_project_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real gRPC and simulator; the controller's listing calls are counted, not replaced.
    monkeypatch.setattr(controller_service, "Walks", _StillWalks)  # expiry: test_pages.py
    env = controller_env(hotplug=True, instances=1, quota_gib=100)
    listings = {"volumes": 0, "snapshots": 0}
    list_volumes, list_snapshots = env.ops.list_volumes, env.ops.list_snapshots

    async def counted_volumes() -> list[VolumeInfo]:
        listings["volumes"] += 1
        return await list_volumes()

    async def counted_snapshots(**kw: str) -> list[SnapshotInfo]:
        listings["snapshots"] += 1
        return await list_snapshots(**kw)

    monkeypatch.setattr(env.ops, "list_volumes", counted_volumes)
    monkeypatch.setattr(env.ops, "list_snapshots", counted_snapshots)
    try:
        async with controller_stub(tmp_path / "c.sock", env.ops) as stub:
            world = World(env.sim, env.api, stub, env.node)
            vols = sorted([await world.volume(f"pvc-{i}") for i in range(7)])
            snaps = sorted(
                [
                    (
                        await stub.CreateSnapshot(
                            csi.CreateSnapshotRequest(name=f"snap-{i}", source_volume_id=vols[i])
                        )
                    ).snapshot.snapshot_id
                    for i in range(5)
                ]
            )
            seen: list[str] = []
            page = await stub.ListVolumes(csi.ListVolumesRequest(max_entries=2))
            seen += [e.volume.volume_id for e in page.entries]
            added = await world.volume("pvc-mid-walk")  # created while the walk is under way
            while page.next_token:
                page = await stub.ListVolumes(
                    csi.ListVolumesRequest(max_entries=2, starting_token=page.next_token)
                )
                seen += [e.volume.volume_id for e in page.entries]
            assert seen == vols  # the project as the walk found it: nothing twice or missing
            assert listings["volumes"] == 1
            fresh = await stub.ListVolumes(csi.ListVolumesRequest())
            assert sorted(e.volume.volume_id for e in fresh.entries) == sorted([*vols, added])
            snap_seen: list[str] = []
            token = ""
            while True:
                answer = await stub.ListSnapshots(
                    csi.ListSnapshotsRequest(max_entries=2, starting_token=token)
                )
                snap_seen += [e.snapshot.snapshot_id for e in answer.entries]
                token = answer.next_token
                if not token:
                    break
            assert snap_seen == snaps
            assert listings["snapshots"] == 1
            one = await stub.ListSnapshots(
                csi.ListSnapshotsRequest(source_volume_id=vols[0], max_entries=1)
            )
            assert [e.snapshot.source_volume_id for e in one.entries] == [vols[0]]
            assert one.next_token == ""
    finally:
        await env.api.aclose()
    assert env.sim.contract_violations == []


# ---- snapshots ----


async def test_snapshot_rows(world: World) -> None:
    vol = await world.volume()
    other = await world.volume("pvc-2")
    create = world.stub.CreateSnapshot
    assert await code_of(create(csi.CreateSnapshotRequest(source_volume_id=vol))) == (
        Code.INVALID_ARGUMENT
    )
    assert await code_of(create(csi.CreateSnapshotRequest(name="s"))) == Code.INVALID_ARGUMENT
    missing = csi.CreateSnapshotRequest(name="s", source_volume_id="csi-0000000000000000")
    assert await code_of(create(missing)) == Code.NOT_FOUND
    first = csi.CreateSnapshotRequest(name="s", source_volume_id=vol)
    assert await code_of(create(first)) == Code.OK
    assert await code_of(create(first)) == Code.OK
    clash = csi.CreateSnapshotRequest(name="s", source_volume_id=other)
    assert await code_of(create(clash)) == Code.ALREADY_EXISTS
    delete = world.stub.DeleteSnapshot
    assert await code_of(delete(csi.DeleteSnapshotRequest())) == Code.INVALID_ARGUMENT
    gone = csi.DeleteSnapshotRequest(snapshot_id="snap-0000000000000000")
    assert await code_of(delete(gone)) == Code.OK
    bad = csi.ListSnapshotsRequest(starting_token="garbage")
    assert await code_of(world.stub.ListSnapshots(bad)) == Code.ABORTED
    get = world.stub.GetSnapshot
    assert await code_of(get(csi.GetSnapshotRequest(snapshot_id="snap-0000000000000000"))) == (
        Code.NOT_FOUND
    )


# ---- ControllerExpandVolume ----


async def test_expand_rows(world: World) -> None:
    vol = await world.volume()
    expand = world.stub.ControllerExpandVolume

    def req(**kw: object) -> csi.ControllerExpandVolumeRequest:
        fields: dict[str, object] = {
            "volume_id": vol,
            "capacity_range": csi.CapacityRange(required_bytes=2 * GIB),
        }
        fields.update(kw)
        return csi.ControllerExpandVolumeRequest(**fields)  # type: ignore[arg-type]

    assert await code_of(expand(req(volume_id=""))) == Code.INVALID_ARGUMENT
    assert await code_of(expand(req(capacity_range=None))) == Code.INVALID_ARGUMENT
    assert await code_of(expand(req(volume_id="csi-0000000000000000"))) == Code.NOT_FOUND
    too_big = req(capacity_range=csi.CapacityRange(required_bytes=1024 * GIB))
    assert await code_of(expand(too_big)) == Code.OUT_OF_RANGE
    await world.publish(vol)
    assert await code_of(expand(req())) == Code.FAILED_PRECONDITION
    await world.stub.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vol, node_id=world.node)
    )
    grown = await expand(req(volume_capability=cap()))
    assert (grown.capacity_bytes, grown.node_expansion_required) == (2 * GIB, True)
    block = await expand(req(volume_capability=cap(block=True)))
    assert (block.capacity_bytes, block.node_expansion_required) == (2 * GIB, False)
    # Already larger than the limit: a disk cannot shrink, and 2 GiB is not "at most 1 GiB".
    beyond = req(capacity_range=csi.CapacityRange(required_bytes=GIB, limit_bytes=GIB))
    assert await code_of(expand(beyond)) == Code.OUT_OF_RANGE
    await world.api.disk_create(DiskSpec(name="by-hand", description="", size=GIB, block_size=4096))
    assert await code_of(expand(req(volume_id="by-hand"))) == Code.FAILED_PRECONDITION


async def test_modify_volume_is_unimplemented(world: World) -> None:
    vol = await world.volume()
    modify = world.stub.ControllerModifyVolume(csi.ControllerModifyVolumeRequest(volume_id=vol))
    assert await code_of(modify) == Code.UNIMPLEMENTED
