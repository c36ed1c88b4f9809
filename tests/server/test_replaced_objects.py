"""An object replaced under the same name by someone else between two of the driver's steps.

Oxide names are unique only at one moment: between the read that decides an object is this
cluster's and the request that deletes, detaches or attaches it, another actor (an operator, a
script, another cluster's controller) can delete it and make a new one under the same name. The
driver's changes therefore address the object it checked by its UUID, so they can never land on
the newcomer. Over real gRPC against the simulator; ``World.before`` runs the other actor's steps
at exactly the point between the two requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller import record
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import CsiOxideError
from csi_oxide.oxide.types import DiskSpec
from csi_oxide.wiring import build_reconciler
from tests.units import GIB

from .controller_world import Code, World, code_of, serve

DATA = b"the cluster's data"
THEIRS = b"someone else's data"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in serve(tmp_path, hotplug=True, instances=1, quota_gib=100):
        yield w


async def _replace_disk(world: World, name: str) -> str:
    """Someone deletes disk ``name`` and makes their own under the same name; its UUID."""
    await world.api.disk_delete(name)
    return await _hand_made(world, name)


def _replace_before(world: World, operation: str, name: str) -> list[str]:
    """Have someone replace disk ``name`` right before each ``operation`` request the driver
    sends; the returned list collects the newcomers' UUIDs."""
    replaced: list[str] = []

    async def replace(*_args: object) -> None:
        replaced.append(await _replace_disk(world, name))

    world.before[operation] = replace
    return replaced


async def _hand_made(world: World, name: str) -> str:
    """Someone makes a disk of their own named ``name``; its UUID."""
    disk = await world.api.disk_create(
        DiskSpec(name=name, description="made by hand", size=GIB, block_size=4096)
    )
    world.sim.write_content(name, THEIRS)
    return disk.id


async def test_delete_volume_never_deletes_a_disk_made_after_its_check(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    replaced = _replace_before(world, "disk_delete", vol)
    assert await code_of(ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))) == Code.OK
    assert replaced, "the other actor ran between the check and the delete"
    newcomer = await world.api.disk_view(vol)
    assert newcomer.id == replaced[0]
    assert world.sim.read_content(vol) == THEIRS


async def test_an_expansion_never_deletes_a_disk_made_after_its_snapshot(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)
    replaced = _replace_before(world, "disk_delete", vol)
    code = await code_of(ctl.expand(vol, 2 * GIB))
    assert replaced
    # The newcomer is untouched, and the cluster's data is still in the expansion snapshot.
    newcomer = await world.api.disk_view(vol)
    assert newcomer.id == replaced[0]
    assert world.sim.read_content(vol) == THEIRS
    grow = record.grow_snapshot_name(vol)
    assert grow in world.sim.snapshot_names()
    assert code == Code.INTERNAL  # an operator must decide: two disks' worth of data, one name


async def test_delete_snapshot_never_deletes_a_snapshot_made_after_its_check(
    world: World,
) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
    replaced: list[str] = []

    async def replace(*_args: object) -> None:
        await world.api.snapshot_delete(snap)
        replaced.append((await world.api.snapshot_create(snap, "made by hand", vol)).id)

    world.before["snapshot_delete"] = replace
    request = csi.DeleteSnapshotRequest(snapshot_id=snap)
    assert await code_of(ctl.stub.DeleteSnapshot(request)) == Code.OK
    assert replaced
    assert (await world.api.snapshot_view(snap)).id == replaced[0]


async def test_unpublish_never_detaches_a_disk_made_after_its_check(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    await ctl.publish(vol, world.node)
    replaced: list[str] = []

    async def replace(*_args: object) -> None:
        await world.api.instance_disk_detach(world.node, vol)
        replaced.append(await _replace_disk(world, vol))
        await world.api.instance_disk_attach(world.node, vol)

    world.before["instance_disk_detach"] = replace
    assert await code_of(ctl.unpublish(vol, world.node)) == Code.OK
    assert replaced
    newcomer = await world.api.disk_view(vol)
    assert (newcomer.id, newcomer.instance_id) == (replaced[0], world.node)


async def test_publish_never_attaches_a_disk_made_after_its_check(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    replaced = _replace_before(world, "instance_disk_attach", vol)
    assert await code_of(ctl.publish(vol, world.node)) == Code.NOT_FOUND
    assert replaced
    newcomer = await world.api.disk_view(vol)
    assert (newcomer.id, newcomer.instance_id) == (replaced[0], None)


@pytest.mark.parametrize("operation", ["snapshot", "clone"])
async def test_a_source_replaced_before_its_snapshot_is_never_copied(
    world: World, operation: str
) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)
    replaced = _replace_before(world, "snapshot_create", vol)
    if operation == "snapshot":
        code = await code_of(ctl.snapshot("snap-1", vol))
    else:
        code = await code_of(ctl.create("pvc-clone", volume=vol))
    assert replaced
    # The newcomer's data went nowhere: no snapshot of it, no clone of it; it is untouched.
    assert code == Code.NOT_FOUND
    assert world.sim.snapshot_names() == []
    assert world.sim.disk_names() == [vol]
    assert (await world.api.disk_view(vol)).id == replaced[0]


async def test_an_expansion_never_snapshots_a_disk_made_after_its_check(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    replaced = _replace_before(world, "snapshot_create", vol)
    assert await code_of(ctl.expand(vol, 2 * GIB)) == Code.NOT_FOUND
    assert replaced
    newcomer = await world.api.disk_view(vol)
    assert (newcomer.id, newcomer.size) == (replaced[0], GIB)
    assert world.sim.read_content(vol) == THEIRS
    assert world.sim.snapshot_names() == []  # no expansion snapshot of someone else's disk


async def test_a_newcomer_that_looks_older_than_the_expansion_snapshot_never_gets_its_data(
    world: World,
) -> None:
    """An expansion died after deleting the disk; someone made a disk under its name. Oxide's
    timestamps come from several Nexus instances whose clocks differ by a little: the newcomer may
    carry a time a millisecond before the snapshot's. Only the UUIDs tell which disk the snapshot
    was taken of, so its data is never taken to be safe in the newcomer."""
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)
    world.sim.faults.inject("disk_create", status=500)
    assert await code_of(ctl.expand(vol, 2 * GIB)) != Code.OK
    grow = await world.api.snapshot_view(record.grow_snapshot_name(vol))
    newcomer = await _hand_made(world, vol)
    # The newcomer's Nexus clock lags by a millisecond (reaching into the simulator's state is
    # the only way to have two clocks in one process).
    state = world.sim._state
    state.disks[newcomer].created = grow.time_created - timedelta(milliseconds=1)
    assert await code_of(ctl.expand(vol, 2 * GIB)) == Code.INTERNAL
    assert await code_of(ctl.create("pvc-1")) == Code.INTERNAL
    reconciler = build_reconciler(
        world.api, cluster="test", inflight=InFlight(), stale_after=timedelta(0)
    )
    assert (await reconciler.run_once()).failed == [grow.name]
    assert grow.name in world.sim.snapshot_names()  # the data is still there
    assert world.sim.read_content(vol) == THEIRS


async def test_a_disk_made_under_a_half_expanded_volumes_name_is_never_served_as_it(
    world: World,
) -> None:
    """The volume's data is in its expansion snapshot; a disk without a record now holds the name.
    By the ownership rule such a disk would be a static volume, usable by ID: but this volume ID
    is this cluster's, mid-expansion, so the newcomer is an impostor. Serving it would attach
    someone else's disk to the pod (or snapshot and clone it as the volume)."""
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)
    world.sim.faults.inject("disk_create", status=500)
    assert await code_of(ctl.expand(vol, 2 * GIB)) != Code.OK
    await _hand_made(world, vol)
    get = ctl.stub.ControllerGetVolume(csi.ControllerGetVolumeRequest(volume_id=vol))
    assert await code_of(get) == Code.INTERNAL
    assert await code_of(ctl.publish(vol, world.node)) == Code.INTERNAL
    assert await code_of(ctl.snapshot("snap-1", vol)) == Code.INTERNAL
    assert await code_of(ctl.create("pvc-clone", volume=vol)) == Code.INTERNAL
    assert (await world.api.disk_view(vol)).instance_id is None
    assert world.sim.snapshot_names() == [record.grow_snapshot_name(vol)]
    assert world.sim.read_content(vol) == THEIRS


async def test_deleting_a_half_expanded_volume_leaves_a_disk_made_under_its_name(
    world: World,
) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)
    world.sim.faults.inject("disk_create", status=500)
    assert await code_of(ctl.expand(vol, 2 * GIB)) != Code.OK
    newcomer = await _hand_made(world, vol)
    assert await code_of(ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))) == Code.OK
    assert world.sim.snapshot_names() == []  # the volume (its data in the snapshot) is gone
    assert (await world.api.disk_view(vol)).id == newcomer  # the other disk is untouched
    assert world.sim.read_content(vol) == THEIRS


async def test_a_snapshot_racing_an_interrupted_expansion_is_of_the_re_created_disk(
    world: World,
) -> None:
    """Not a replacement: the volume's own expansion re-creates its disk (a new UUID) between
    CreateSnapshot's read and its snapshot. The snapshot of the re-created disk is the volume's."""
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)

    async def interrupted_expansion(*_args: object) -> None:
        world.sim.faults.inject("disk_create", status=500)
        with pytest.raises(CsiOxideError):
            await ctl.ops.expand_volume(vol, CapacityRange(2 * GIB))
        assert vol not in world.sim.disk_names()  # the data is in the expansion snapshot

    world.before["snapshot_create"] = interrupted_expansion
    snap = await ctl.snapshot("snap-1", vol)
    assert (await world.api.snapshot_view(snap.snapshot_id)).disk_id == (
        await world.api.disk_view(vol)
    ).id
    assert world.sim.read_content(vol) == DATA
    assert world.sim.snapshot_names() == [snap.snapshot_id]


async def test_a_clone_racing_its_sources_expansion_is_aborted_then_made(world: World) -> None:
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    world.sim.write_content(vol, DATA)

    async def expansion(*_args: object) -> None:
        await ctl.ops.expand_volume(vol, CapacityRange(2 * GIB))  # a new disk, a new UUID

    world.before["snapshot_create"] = expansion
    assert await code_of(ctl.create("pvc-clone", 2 * GIB, volume=vol)) == Code.ABORTED
    assert world.sim.snapshot_names() == []
    clone = await ctl.create("pvc-clone", 2 * GIB, volume=vol)
    assert world.sim.read_content(clone.volume_id) == DATA
