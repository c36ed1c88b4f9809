"""Operations that meet the leftovers of an interrupted one, and idempotency after a source is gone.

Over real gRPC against the simulator. A crash is a fault the simulator injects on one Oxide request
(with ``after=True`` the request takes effect and only its answer is lost, as when the controller
dies right after sending it). The memory backing carries a content token from disk to snapshot to
disk, so each test checks where the data went.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.oxide_rules import is_uuid
from csi_oxide.contract.publish_context import ORIGIN_KEY
from csi_oxide.controller import record
from csi_oxide.oxide.types import DiskSpec
from tests.units import GIB

from .controller_world import Cluster, Code, World, code_of, failure, serve

DATA = b"precious user data"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in serve(tmp_path, hotplug=True, instances=1, quota_gib=100):
        yield w


def _ctl(world: World) -> Cluster:
    return world.clusters["test"]


def _temporary(world: World) -> list[str]:
    return [n for n in world.sim.snapshot_names() if record.is_temporary_snapshot_name(n)]


async def _volume(world: World, name: str, data: bytes = DATA, size: int = GIB) -> str:
    vol = (await _ctl(world).create(name, size)).volume_id
    world.sim.write_content(vol, data)
    return vol


async def _half_expanded(world: World, name: str = "pvc-1") -> str:
    """A volume whose expansion died between deleting the disk and re-creating it."""
    vol = await _volume(world, name)
    world.sim.faults.inject("disk_create", status=500)
    assert await code_of(_ctl(world).expand(vol, 2 * GIB)) != Code.OK
    assert vol not in world.sim.disk_names()
    assert _temporary(world) == [record.grow_snapshot_name(vol)]
    return vol


# ---- finding 1: a leftover clone snapshot taken from another source is not reused ----


async def test_a_clone_leftover_from_another_source_is_not_reused(world: World) -> None:
    ctl = _ctl(world)
    first = await _volume(world, "src-a", b"data of A")
    second = await _volume(world, "src-b", b"data of B")
    # The first attempt dies right after taking its temporary snapshot (of the first source).
    world.sim.faults.inject("snapshot_create", status=500, after=True)
    assert await code_of(ctl.create("pvc-clone", volume=first)) != Code.OK
    assert _temporary(world) == [record.clone_snapshot_name(record.volume_name("pvc-clone"))]
    # The CO now asks for the same name from another source (the claim was re-created).
    clone = await ctl.create("pvc-clone", volume=second)
    assert clone.content_source.volume.volume_id == second
    assert world.sim.read_content(clone.volume_id) == b"data of B"
    assert _temporary(world) == []


async def test_a_clone_leftover_from_the_same_source_finishes_the_clone(world: World) -> None:
    ctl = _ctl(world)
    source = await _volume(world, "src")
    world.sim.faults.inject("snapshot_create", status=500, after=True)
    assert await code_of(ctl.create("pvc-clone", volume=source)) != Code.OK
    clone = await ctl.create("pvc-clone", volume=source)
    assert world.sim.read_content(clone.volume_id) == DATA
    assert _temporary(world) == []


async def test_a_failed_clone_deletes_its_temporary_snapshot_at_once(tmp_path: Path) -> None:
    # 1 GiB source + 1 GiB temporary snapshot fit in 3 GiB of quota; the 2 GiB clone does not.
    async for world in serve(tmp_path, quota_gib=3):
        source = await _volume(world, "src")
        answer = await code_of(_ctl(world).create("pvc-clone", 2 * GIB, volume=source))
        assert answer == Code.RESOURCE_EXHAUSTED
        assert _temporary(world) == []  # not left for the reconciler's 10-minute mark
        assert world.sim.disk_names() == [source]


# ---- finding 2: CreateVolume in the middle of an interrupted expansion ----


async def test_create_volume_finishes_an_interrupted_expansion(world: World) -> None:
    ctl = _ctl(world)
    vol = await _half_expanded(world)
    again = await ctl.create("pvc-1", GIB)  # the provisioner's retry (or a restarted one)
    assert (again.volume_id, again.capacity_bytes) == (vol, 2 * GIB)
    assert world.sim.read_content(vol) == DATA  # not a blank disk
    disk = await world.api.disk_view(vol)
    assert disk.snapshot_id is not None
    assert _temporary(world) == []
    assert await ctl.expand(vol, 3 * GIB) == 3 * GIB
    assert world.sim.read_content(vol) == DATA


async def test_create_volume_refuses_a_name_held_by_a_foreign_expansion_snapshot(
    world: World,
) -> None:
    """A tmp-grow snapshot for this name that is not ours: the name is refused, nothing touched."""
    vol = record.volume_name("pvc-1")
    await world.api.disk_create(
        DiskSpec(name="elsewhere", description="by hand", size=GIB, block_size=4096)
    )
    foreign = record.Record(cluster="other", name="pvc-1", grow_from=GIB, grow_to=2 * GIB)
    await world.api.snapshot_create(record.grow_snapshot_name(vol), foreign.encode(), "elsewhere")
    before = await world.state()
    assert await code_of(_ctl(world).create("pvc-1")) == Code.ALREADY_EXISTS
    assert await world.state() == before


async def test_expansion_never_builds_on_a_foreign_expansion_snapshot(world: World) -> None:
    """A tmp-grow snapshot under this volume's expansion name that is not ours (another cluster's
    record, taken of another disk): expanding must neither delete it nor delete the disk and
    re-create it from that snapshot."""
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-1")
    await world.api.disk_create(
        DiskSpec(name="elsewhere", description="by hand", size=GIB, block_size=4096)
    )
    world.sim.write_content("elsewhere", b"not this volume's data")
    foreign = record.Record(cluster="other", name="pvc-1", grow_from=GIB, grow_to=2 * GIB)
    await world.api.snapshot_create(record.grow_snapshot_name(vol), foreign.encode(), "elsewhere")
    before = await world.state()
    error = await failure(ctl.expand(vol, 2 * GIB))
    assert error.code() == Code.INTERNAL
    assert "left untouched" in (error.details() or "")
    assert await world.state() == before
    assert world.sim.read_content(vol) == DATA


# ---- finding 5: idempotency by name after the source is gone ----


async def test_create_snapshot_retried_after_its_source_was_deleted(world: World) -> None:
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-1")
    first = await ctl.snapshot("snap-1", vol)
    await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    again = await ctl.snapshot("snap-1", vol)
    assert again == first
    assert await code_of(ctl.snapshot("snap-1", record.volume_name("other"))) == (
        Code.ALREADY_EXISTS
    )
    assert await code_of(ctl.snapshot("snap-2", vol)) == Code.NOT_FOUND


async def test_create_volume_retried_after_its_source_was_deleted(world: World) -> None:
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-1")
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    restored = await ctl.create("pvc-r", snapshot=snap)
    clone = await ctl.create("pvc-c", volume=vol)
    await ctl.stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap))
    await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    assert await ctl.create("pvc-r", snapshot=snap) == restored
    assert await ctl.create("pvc-c", volume=vol) == clone
    assert await code_of(ctl.create("pvc-new", snapshot=snap)) == Code.NOT_FOUND
    assert await code_of(ctl.create("pvc-new", volume=vol)) == Code.NOT_FOUND


# ---- finding 6 ----


async def test_a_snapshot_without_our_record_reports_a_volume_id_not_a_uuid(world: World) -> None:
    ctl = _ctl(world)
    disk = await world.api.disk_create(
        DiskSpec(name="legacy-data", description="by hand", size=GIB, block_size=4096)
    )
    await world.api.snapshot_create("legacy-snap", "by hand", "legacy-data")
    got = await ctl.stub.GetSnapshot(csi.GetSnapshotRequest(snapshot_id="legacy-snap"))
    assert got.snapshot.source_volume_id == "legacy-data"
    assert await ctl.listed_snapshots(snapshot_id="legacy-snap") == ["legacy-snap"]
    assert await ctl.listed_snapshots() == []  # listing shows this cluster's snapshots only
    restored = await ctl.create("from-legacy", snapshot="legacy-snap")  # static: usable
    assert restored.capacity_bytes == GIB
    await world.api.disk_delete("legacy-data")
    got = await ctl.stub.GetSnapshot(csi.GetSnapshotRequest(snapshot_id="legacy-snap"))
    assert got.snapshot.source_volume_id != disk.id
    assert not is_uuid(got.snapshot.source_volume_id)


@pytest.mark.parametrize("kind", ["snapshot", "volume"])
async def test_block_size_on_a_restore_or_clone_is_invalid(world: World, kind: str) -> None:
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-1")
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    source = (
        csi.VolumeContentSource(snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snap))
        if kind == "snapshot"
        else csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=vol))
    )
    before = await world.state()
    request = Cluster.create_request("pvc-2", GIB, source, {"blockSize": "512"})
    error = await failure(ctl.stub.CreateVolume(request))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "blockSize" in (error.details() or "")
    assert await world.state() == before


async def test_a_matching_block_size_on_a_restore_is_accepted(world: World) -> None:
    """The shipped StorageClass sets blockSize 4096: restores and clones with it must work, also
    once the source disk is gone (the snapshot's record keeps the block size)."""
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-1")
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    clone = await ctl.create("pvc-c", volume=vol, parameters={"blockSize": "4096"})
    await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    sized = {"blockSize": "4096"}
    restored = await ctl.create("pvc-r", snapshot=snap, parameters=sized)
    assert world.sim.read_content(restored.volume_id) == DATA
    assert await ctl.create("pvc-r", snapshot=snap, parameters=sized) == restored
    assert await ctl.create("pvc-c", volume=vol, parameters=sized) == clone  # source gone
    # A retry with another block size is refused, not answered OK.
    retry = ctl.create("pvc-r", snapshot=snap, parameters={"blockSize": "512"})
    assert await code_of(retry) == Code.INVALID_ARGUMENT


async def test_block_size_of_a_static_snapshot_whose_disk_is_gone_cannot_apply(
    world: World,
) -> None:
    ctl = _ctl(world)
    await world.api.disk_create(
        DiskSpec(name="legacy-data", description="by hand", size=GIB, block_size=4096)
    )
    await world.api.snapshot_create("legacy-snap", "by hand", "legacy-data")
    assert await ctl.create("r1", snapshot="legacy-snap", parameters={"blockSize": "4096"})
    await world.api.disk_delete("legacy-data")
    before = await world.state()
    error = await failure(
        ctl.create("r2", snapshot="legacy-snap", parameters={"blockSize": "4096"})
    )
    assert error.code() == Code.INVALID_ARGUMENT
    assert "cannot be read" in (error.details() or "")
    assert await world.state() == before
    assert await ctl.create("r2", snapshot="legacy-snap")  # without blockSize it works


async def test_block_size_of_a_blank_volume_is_part_of_its_identity(world: World) -> None:
    ctl = _ctl(world)
    first = await ctl.create("pvc-1", parameters={"blockSize": "512"})
    assert (await world.api.disk_view(first.volume_id)).block_size == 512
    assert await ctl.create("pvc-1", parameters={"blockSize": "512"}) == first
    assert await code_of(ctl.create("pvc-1", parameters={"blockSize": "4096"})) == (
        Code.ALREADY_EXISTS
    )
    assert await code_of(ctl.create("pvc-1")) == Code.ALREADY_EXISTS  # 4096 is the default


async def test_a_half_expanded_volume_is_listed_and_can_be_cloned(world: World) -> None:
    ctl = _ctl(world)
    vol = await _half_expanded(world)
    assert await ctl.listed_volumes() == [vol]
    clone = await ctl.create("pvc-clone", 2 * GIB, volume=vol)
    assert world.sim.read_content(clone.volume_id) == DATA
    assert (await world.api.disk_view(vol)).size == 2 * GIB  # the expansion was finished first
    assert _temporary(world) == []
    assert sorted(await ctl.listed_volumes()) == sorted([vol, clone.volume_id])


async def test_delete_of_a_half_expanded_volume_removes_its_snapshot(world: World) -> None:
    vol = await _half_expanded(world)
    await _ctl(world).stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    assert world.sim.disk_names() == []
    assert _temporary(world) == []


# ---- publish_context: how the disk was born ----


async def test_publish_context_names_the_origin(world: World) -> None:
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-blank")
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    restored = (await ctl.create("pvc-restored", snapshot=snap)).volume_id
    clone = (await ctl.create("pvc-clone", volume=vol)).volume_id
    await world.api.disk_create(
        DiskSpec(name="legacy-data", description="by hand", size=GIB, block_size=4096)
    )
    origins = {}
    for name in (vol, restored, clone, "legacy-data"):
        origins[name] = (await ctl.publish(name, world.node)).get(ORIGIN_KEY)
        assert (await ctl.publish(name, world.node)).get(ORIGIN_KEY) == origins[name]  # again
    assert origins == {
        vol: "blank",
        restored: "snapshot",
        clone: "volume",
        "legacy-data": "static",
    }


async def test_publish_context_of_an_expanded_volume_keeps_its_origin(world: World) -> None:
    ctl = _ctl(world)
    vol = await _volume(world, "pvc-blank")
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    restored = (await ctl.create("pvc-restored", snapshot=snap)).volume_id
    for name in (vol, restored):
        assert await ctl.expand(name, 2 * GIB) == 2 * GIB
    assert (await ctl.publish(vol, world.node))[ORIGIN_KEY] == "blank"
    assert (await ctl.publish(restored, world.node))[ORIGIN_KEY] == "snapshot"


# ---- CreateVolume retried with changed parameters: compared with the record, never rebuilt ----


async def test_create_volume_retried_with_changed_parameters(world: World) -> None:
    ctl = _ctl(world)
    v = await _volume(world, "src-v", b"data of V")
    w = await _volume(world, "src-w", b"data of W")
    s1 = (await ctl.snapshot("s1", v)).snapshot_id
    s2 = (await ctl.snapshot("s2", w)).snapshot_id
    blank = (await ctl.create("pvc-blank")).volume_id
    restored = (await ctl.create("pvc-restored", snapshot=s1)).volume_id
    cloned = (await ctl.create("pvc-cloned", volume=v)).volume_id
    before = await world.state()
    k8s = {"csi.storage.k8s.io/pvc/name": "renamed", "csi.storage.k8s.io/pvc/namespace": "x"}
    retries = {
        ("pvc-blank", "same"): (ctl.create("pvc-blank"), Code.OK),
        ("pvc-blank", "pvc renamed"): (ctl.create("pvc-blank", parameters=k8s), Code.OK),
        ("pvc-blank", "default block size"): (
            ctl.create("pvc-blank", parameters={"blockSize": "4096"}),
            Code.OK,
        ),
        ("pvc-blank", "other block size"): (
            ctl.create("pvc-blank", parameters={"blockSize": "512"}),
            Code.ALREADY_EXISTS,
        ),
        ("pvc-blank", "bigger"): (ctl.create("pvc-blank", 2 * GIB), Code.ALREADY_EXISTS),
        ("pvc-blank", "now a restore"): (ctl.create("pvc-blank", snapshot=s1), Code.ALREADY_EXISTS),
        ("pvc-blank", "now a clone"): (ctl.create("pvc-blank", volume=v), Code.ALREADY_EXISTS),
        ("pvc-restored", "same"): (ctl.create("pvc-restored", snapshot=s1), Code.OK),
        ("pvc-restored", "other snapshot"): (
            ctl.create("pvc-restored", snapshot=s2),
            Code.ALREADY_EXISTS,
        ),
        ("pvc-restored", "now blank"): (ctl.create("pvc-restored"), Code.ALREADY_EXISTS),
        ("pvc-restored", "now a clone"): (
            ctl.create("pvc-restored", volume=v),
            Code.ALREADY_EXISTS,
        ),
        ("pvc-cloned", "same"): (ctl.create("pvc-cloned", volume=v), Code.OK),
        ("pvc-cloned", "other source"): (ctl.create("pvc-cloned", volume=w), Code.ALREADY_EXISTS),
        ("pvc-cloned", "now a restore"): (
            ctl.create("pvc-cloned", snapshot=s1),
            Code.ALREADY_EXISTS,
        ),
    }
    for what, (call, code) in retries.items():
        assert await code_of(call) == code, what
    # Nothing was made, changed or left behind by any of them.
    assert await world.state() == before
    assert world.sim.read_content(restored) == b"data of V"
    assert world.sim.read_content(cloned) == b"data of V"
    assert world.sim.read_content(blank) != b"data of V"
