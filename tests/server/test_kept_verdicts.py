"""Kept ownership verdicts over real gRPC: a volume's lifecycle reads its disk no more, and what
another controller replica or someone else did between two calls is never acted on wrongly.

Two controllers of one cluster share the simulated project, as two replicas of the controller
Deployment do (only the leader acts, but the previous leader may have acted a moment ago); each
keeps its own verdicts (``controller.verdicts``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.controller import record
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.types import DiskSpec
from csi_oxide.wiring import build_controller_ops
from csi_oxide_lab.testing import sim_client
from tests.units import GIB

from .controller_world import Cluster, Code, Interposer, World, code_of, controller_stub, serve


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in serve(tmp_path, hotplug=True, instances=1, quota_gib=100):
        yield w


@pytest.fixture
async def replica(world: World, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A second controller of the same cluster (the previous leader), with verdicts of its own."""
    api = sim_client(world.sim)
    ops = build_controller_ops(
        cast(OxideApi, Interposer(api, world)), cluster="test", inflight=InFlight()
    )
    async with controller_stub(tmp_path / "replica.sock", ops) as stub:
        yield Cluster("test", stub, ops)
    await api.aclose()


async def test_a_lifecycle_over_grpc_makes_six_oxide_requests(world: World) -> None:
    ctl = world.clusters["test"]
    world.sim.request_counts.clear()
    vol = (await ctl.create("pvc-1")).volume_id
    await ctl.publish(vol, world.node)
    await ctl.unpublish(vol, world.node)
    await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    counts = {op: n for op, n in world.sim.request_counts.items() if n}
    assert counts == {
        "snapshot_view": 2,  # CreateVolume and DeleteVolume: an interrupted expansion's snapshot?
        "disk_create": 1,
        "instance_disk_attach": 1,
        "instance_disk_detach": 1,
        "disk_delete": 1,
    }
    assert world.sim.disk_names() == []


async def test_what_the_previous_leader_did_is_followed_never_undone(
    world: World, replica: Cluster
) -> None:
    """The leader created the volume and keeps its verdict; the previous leader then expanded
    it (a new disk, a new UUID) and published it. The leader's unpublish and delete act on the
    volume's disk as it is now: nothing stays attached, nothing leaks."""
    leader = world.clusters["test"]
    vol = (await leader.create("pvc-1")).volume_id
    world.sim.write_content(vol, b"data")
    assert await replica.expand(vol, 2 * GIB) == 2 * GIB
    await replica.publish(vol, world.node)
    await leader.unpublish(vol, world.node)
    assert (await world.api.disk_view(vol)).instance_id is None
    assert world.sim.read_content(vol) == b"data"
    assert await code_of(leader.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))) == (
        Code.OK
    )
    assert world.sim.disk_names() == []
    assert world.sim.snapshot_names() == []


async def _made_again_by_hand(world: World, vol: str) -> str:
    """Someone deletes the volume's disk and makes their own under its name; its UUID."""
    await world.api.disk_delete(vol)
    disk = await world.api.disk_create(
        DiskSpec(name=vol, description="made by hand", size=GIB, block_size=4096)
    )
    return disk.id


@pytest.mark.parametrize("call", ["publish", "delete"])
async def test_a_disk_deleted_and_made_again_between_two_calls_is_left_alone(
    world: World, call: str
) -> None:
    """Between two calls on a volume, its disk is replaced by hand: the kept UUID answers 404,
    the name is read again, and the newcomer is neither attached nor deleted."""
    ctl = world.clusters["test"]
    vol = (await ctl.create("pvc-1")).volume_id
    newcomer = await _made_again_by_hand(world, vol)
    before = await world.state()
    if call == "publish":
        assert await code_of(ctl.publish(vol, world.node)) == Code.NOT_FOUND
    else:
        request = csi.DeleteVolumeRequest(volume_id=vol)
        assert await code_of(ctl.stub.DeleteVolume(request)) == Code.OK
    assert await world.state() == before
    assert (await world.api.disk_view(vol)).id == newcomer


async def test_delete_after_the_previous_leaders_cut_expansion_leaves_nothing(
    world: World, replica: Cluster
) -> None:
    """The previous leader's expansion stopped after its snapshot: the leader's kept UUID still
    names the disk, and DeleteVolume still finds and removes the expansion snapshot."""
    leader = world.clusters["test"]
    vol = (await leader.create("pvc-1")).volume_id
    world.sim.faults.inject("disk_delete", status=500)
    assert await code_of(replica.expand(vol, 2 * GIB)) != Code.OK
    assert world.sim.snapshot_names() == [record.grow_snapshot_name(vol)]
    await leader.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    assert world.sim.disk_names() == []
    assert world.sim.snapshot_names() == []
