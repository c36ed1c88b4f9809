"""Two clusters in one Oxide project, and hand-made look-alikes: the ownership rule over real gRPC.

Cluster A runs a whole lifecycle (create, snapshot, restore, clone, expand, publish, an interrupted
expansion, delete). After every step cluster B, another ``--cluster-id`` on the same simulated
project, tries every Controller RPC on A's IDs and names: each answer is the spec's "not there"
(NOT_FOUND, or OK for deletes and unpublish), and Oxide holds exactly what it held before, down to
the data on the disks. Then disks and snapshots made by hand with a copied record (forgeries) are
shown to be nobody's: not listed, not found, not expanded, not deleted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.controller import record
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.oxide.types import DiskSpec
from csi_oxide.wiring import build_reconciler
from tests.units import GIB

from .controller_world import Cluster, Code, World, cap, code_of, serve

A, B = "cluster-a", "cluster-b"
DATA = b"cluster A's data"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in serve(tmp_path, (A, B), hotplug=True, instances=1, quota_gib=100):
        yield w


async def _codes_for_volume(b: Cluster, vol: str, node: str) -> dict[str, Code]:
    stub = b.stub
    return {
        "ControllerGetVolume": await code_of(
            stub.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol))
        ),
        "ValidateVolumeCapabilities": await code_of(
            stub.ValidateVolumeCapabilities(
                csi.ValidateVolumeCapabilitiesRequest(volume_id=vol, volume_capabilities=[cap()])
            )
        ),
        "ControllerPublishVolume": await code_of(b.publish(vol, node)),
        "ControllerUnpublishVolume": await code_of(b.unpublish(vol, node)),
        "ControllerUnpublishVolume(no node)": await code_of(
            stub.ControllerUnpublishVolume(csi.ControllerUnpublishVolumeRequest(volume_id=vol))
        ),
        "ControllerExpandVolume": await code_of(b.expand(vol, 4 * GIB)),
        "CreateSnapshot": await code_of(b.snapshot(f"b-snap-of-{vol}", vol)),
        "CreateVolume(clone)": await code_of(b.create(f"b-clone-of-{vol}", volume=vol)),
        "ListSnapshots(source)": Code.OK
        if await b.listed_snapshots(source_volume_id=vol) == []
        else Code.UNKNOWN,
        "DeleteVolume": await code_of(stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))),
    }


async def _codes_for_snapshot(b: Cluster, snap: str) -> dict[str, Code]:
    stub = b.stub
    return {
        "GetSnapshot": await code_of(stub.GetSnapshot(csi.GetSnapshotRequest(snapshot_id=snap))),
        "ListSnapshots(id)": Code.OK
        if await b.listed_snapshots(snapshot_id=snap) == []
        else Code.UNKNOWN,
        "CreateVolume(restore)": await code_of(b.create(f"b-restore-of-{snap}", snapshot=snap)),
        "DeleteSnapshot": await code_of(
            stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap))
        ),
    }


NOT_THERE = {
    "ControllerGetVolume": Code.NOT_FOUND,
    "ValidateVolumeCapabilities": Code.NOT_FOUND,
    "ControllerPublishVolume": Code.NOT_FOUND,
    "ControllerUnpublishVolume": Code.OK,
    "ControllerUnpublishVolume(no node)": Code.OK,
    "ControllerExpandVolume": Code.NOT_FOUND,
    "CreateSnapshot": Code.NOT_FOUND,
    "CreateVolume(clone)": Code.NOT_FOUND,
    "ListSnapshots(source)": Code.OK,
    "DeleteVolume": Code.OK,
    "GetSnapshot": Code.NOT_FOUND,
    "ListSnapshots(id)": Code.OK,
    "CreateVolume(restore)": Code.NOT_FOUND,
    "DeleteSnapshot": Code.OK,
}


async def _b_is_refused(
    world: World,
    volumes: list[str],
    snapshots: list[str],
    names: dict[str, str],
    b_own: list[str],
) -> None:
    """Cluster B tries everything on A's objects; Oxide is unchanged afterwards."""
    b = world.clusters[B]
    before = await world.state()
    for vol in volumes:
        codes = await _codes_for_volume(b, vol, world.node)
        assert codes == {k: NOT_THERE[k] for k in codes}, vol
    for snap in snapshots:
        codes = await _codes_for_snapshot(b, snap)
        assert codes == {k: NOT_THERE[k] for k in codes}, snap
    # A's CSI names are taken in Oxide: B cannot create under them, nor snapshot into A's name.
    for name, kind in names.items():
        if kind == "volume":
            assert await code_of(b.create(name)) == Code.ALREADY_EXISTS
        else:
            assert await code_of(b.snapshot(name, b_own[0])) == Code.ALREADY_EXISTS
    assert await b.listed_volumes() == b_own
    assert await b.listed_snapshots() == []
    reconciler = build_reconciler(
        world.api, cluster=B, inflight=InFlight(), stale_after=timedelta(0)
    )
    repaired = await reconciler.run_once()
    assert (repaired.finished, repaired.deleted, repaired.failed) == ([], [], [])
    assert await world.state() == before


async def test_cluster_b_never_touches_cluster_a(world: World) -> None:
    a, b = world.clusters[A], world.clusters[B]
    b_own = [(await b.create("b-own")).volume_id]
    names: dict[str, str] = {}

    vol = (await a.create("pvc-a")).volume_id
    world.sim.write_content(vol, DATA)
    names["pvc-a"] = "volume"
    await _b_is_refused(world, [vol], [], names, b_own)

    snap = (await a.snapshot("snap-a", vol)).snapshot_id
    names["snap-a"] = "snapshot"
    await _b_is_refused(world, [vol], [snap], names, b_own)

    restored = (await a.create("pvc-r", snapshot=snap)).volume_id
    clone = (await a.create("pvc-c", volume=vol)).volume_id
    names.update({"pvc-r": "volume", "pvc-c": "volume"})
    assert world.sim.read_content(restored) == world.sim.read_content(clone) == DATA
    volumes = [vol, restored, clone]
    await _b_is_refused(world, volumes, [snap], names, b_own)

    assert await a.expand(vol, 2 * GIB) == 2 * GIB
    assert await a.publish(vol, world.node)
    await _b_is_refused(world, volumes, [snap], names, b_own)
    assert (await world.api.disk_view(vol)).instance_id == world.node

    # An expansion of A's interrupted between delete and re-create: the data is only in A's
    # tmp-grow snapshot, which B must neither use nor delete.
    world.sim.faults.inject("disk_create", status=500)
    assert await code_of(a.expand(restored, 3 * GIB)) != Code.OK
    assert restored not in world.sim.disk_names()
    assert record.grow_snapshot_name(restored) in world.sim.snapshot_names()
    await _b_is_refused(world, volumes, [snap], names, b_own)
    assert sorted(await a.listed_volumes()) == sorted(volumes)  # A still sees all three

    answer = await a.stub.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=restored))
    assert answer.volume.capacity_bytes == 3 * GIB  # A's own call finished the expansion
    assert world.sim.read_content(restored) == DATA

    await a.unpublish(vol, world.node)
    await a.stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snap))
    for v in volumes:
        await a.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=v))
    assert world.sim.disk_names() == b_own
    assert world.sim.snapshot_names() == []


async def test_b_sees_and_lists_only_its_own(world: World) -> None:
    a, b = world.clusters[A], world.clusters[B]
    a_vol = (await a.create("shared-name-a")).volume_id
    b_vol = (await b.create("shared-name-b")).volume_id
    a_snap = (await a.snapshot("sa", a_vol)).snapshot_id
    b_snap = (await b.snapshot("sb", b_vol)).snapshot_id
    assert await a.listed_volumes() == [a_vol]
    assert await b.listed_volumes() == [b_vol]
    assert await a.listed_snapshots() == [a_snap]
    assert await b.listed_snapshots() == [b_snap]
    assert await a.listed_snapshots(source_volume_id=b_vol) == []


# ---- forgeries: a copied record does not make a disk or snapshot ours ----


async def _forge_disk(world: World, name: str, description: str) -> str:
    disk = await world.api.disk_create(
        DiskSpec(name=name, description=description, size=GIB, block_size=4096)
    )
    world.sim.write_content(name, b"someone else's data")
    return disk.id


@pytest.mark.parametrize(
    "forged_name",
    ["copied-by-hand", record.volume_name("not-the-recorded-name")],
    ids=["other-name", "csi-name-of-another-volume"],
)
async def test_a_disk_with_a_copied_record_is_nobodys(world: World, forged_name: str) -> None:
    a = world.clusters[A]
    vol = (await a.create("pvc-a")).volume_id
    copied = (await world.api.disk_view(vol)).description
    forged_id = await _forge_disk(world, forged_name, copied)
    before = await world.state()

    assert await a.listed_volumes() == [vol]
    codes = await _codes_for_volume(a, forged_name, world.node)
    assert codes == {k: NOT_THERE[k] for k in codes}
    assert await world.state() == before
    assert (await world.api.disk_view(forged_name)).id == forged_id  # never re-created


async def test_a_record_of_another_cluster_on_a_csi_name_is_not_ours(world: World) -> None:
    a = world.clusters[A]
    name = record.volume_name("pvc-x")
    foreign = record.Record(cluster=B, name="pvc-x", size=GIB).encode()
    await _forge_disk(world, name, foreign)
    before = await world.state()
    codes = await _codes_for_volume(a, name, world.node)
    assert codes == {k: NOT_THERE[k] for k in codes}
    assert await code_of(a.create("pvc-x")) == Code.ALREADY_EXISTS
    assert await world.state() == before


async def test_a_damaged_record_is_not_static(world: World) -> None:
    """A description that starts like a record but does not parse is not "no record": it is not
    treated as a static disk (which could be deleted), but as somebody else's."""
    a = world.clusters[A]
    await _forge_disk(world, "damaged", record.PREFIX + "{not json")
    before = await world.state()
    codes = await _codes_for_volume(a, "damaged", world.node)
    assert codes == {k: NOT_THERE[k] for k in codes}
    assert await world.state() == before


async def test_a_snapshot_with_a_copied_record_is_nobodys(world: World) -> None:
    a = world.clusters[A]
    vol = (await a.create("pvc-a")).volume_id
    snap = (await a.snapshot("snap-a", vol)).snapshot_id
    copied = (await world.api.snapshot_view(snap)).description
    await _forge_disk(world, "by-hand", "made by hand")
    forged = record.snapshot_name("another-snapshot")
    await world.api.snapshot_create(forged, copied, "by-hand")
    before = await world.state()
    assert await a.listed_snapshots() == [snap]
    codes = await _codes_for_snapshot(a, forged)
    assert codes == {k: NOT_THERE[k] for k in codes}
    assert await world.state() == before
