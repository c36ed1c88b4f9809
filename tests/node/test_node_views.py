"""Read-only raw block publishes over fakes (no root): the view bound instead of the device, its
anchor recorded before it exists, and unpublish detaching it, after a crash too (issue 24, item
5; ``test_node_escape_loop.py`` writes through real targets)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from csi_oxide.errors import AlreadyExistsError, FailedPreconditionError
from csi_oxide.node.ops import NodeOps
from csi_oxide.node.state import FileRecordStore, MountRecord, VolumeRecord, from_json, to_json
from csi_oxide.node.views import LoopViews
from tests.node.fakes import FakeDevices, FakeFilesystems, FakeMounter, FakeViews, fake_node_ops

VOLUME = "csi-0123456789abcdef"


@dataclass
class World:
    root: Path
    devices: FakeDevices
    mounter: FakeMounter
    views: FakeViews
    store: FileRecordStore
    ops: NodeOps

    def paths(self, name: str) -> tuple[str, str]:
        staging = self.root / "kubelet" / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        return str(staging), str(self.root / "kubelet" / name)

    async def publish(self, name: str, *, read_only: bool) -> str:
        staging, target = self.paths(name)
        await self.ops.publish(
            VOLUME,
            staging,
            target,
            block=True,
            read_only=read_only,
            mount_flags=[],
            single_writer=False,
        )
        return target

    def bound_root(self, target: str) -> str:
        (top,) = [m for m in self.mounter.table if m.mount_point == target]
        return top.root

    async def entry(self, target: str) -> MountRecord | None:
        return (await self.store.load(VOLUME)).publish.get(target)


@pytest.fixture
async def world(tmp_path: Path) -> World:
    devices = FakeDevices()
    devices.attach(VOLUME)
    mounter = FakeMounter(devices)
    views = FakeViews()
    store = FileRecordStore(tmp_path / "state", boot="boot-1")
    ops = fake_node_ops(devices, FakeFilesystems(), store, mounter=mounter, views=views)
    w = World(tmp_path, devices, mounter, views, store, ops)
    staging, _ = w.paths("staging")
    await ops.stage(VOLUME, staging, fstype="", mount_flags=[], block=True)
    return w


async def test_a_read_only_publish_binds_a_view_and_a_read_write_one_the_device(
    world: World,
) -> None:
    ro = await world.publish("ro", read_only=True)
    rw = await world.publish("rw", read_only=False)
    assert world.bound_root(rw) == "/nvme1n1"
    (anchor,) = world.views.views
    assert world.bound_root(ro) == "/" + world.views.views[anchor].removeprefix("/dev/")
    entry = await world.entry(ro)
    assert entry is not None and entry.view == anchor and entry.read_only
    rw_entry = await world.entry(rw)
    assert rw_entry is not None and rw_entry.view is None
    await world.publish("ro", read_only=True)  # the same request again: the same view
    assert len(world.views.views) == 1
    with pytest.raises(AlreadyExistsError, match="read-only"):
        await world.publish("ro", read_only=False)


async def test_unpublish_detaches_the_view(world: World) -> None:
    ro = await world.publish("ro", read_only=True)
    await world.ops.unpublish(VOLUME, ro)
    assert world.views.views == {} and await world.entry(ro) is None
    assert not Path(ro).exists()


async def test_a_crash_once_the_view_exists_leaves_a_record_that_finds_it(world: World) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await world.publish("ro", read_only=True)
    _, ro = world.paths("ro")
    entry = await world.entry(ro)
    assert entry is not None and entry.view in world.views.views and entry.identity is None
    await world.ops.unpublish(VOLUME, ro)
    assert world.views.views == {} and await world.entry(ro) is None


async def test_a_retry_after_the_crash_binds_the_view_it_made(world: World) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await world.publish("ro", read_only=True)
    (loop,) = world.views.views.values()
    ro = await world.publish("ro", read_only=True)
    assert list(world.views.views.values()) == [loop]
    assert world.bound_root(ro) == "/" + loop.removeprefix("/dev/")


async def test_a_view_left_by_a_request_that_differed_is_detached(world: World) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await world.publish("ro", read_only=True)
    rw = await world.publish("ro", read_only=False)  # the CO asked again, differently
    assert world.views.views == {} and world.bound_root(rw) == "/nvme1n1"


async def test_stats_find_the_volume_at_its_view(world: World) -> None:
    ro = await world.publish("ro", read_only=True)
    await world.ops.stats(VOLUME, ro)  # a mount recorded as the volume's: no NotFoundError


# ---- the records ----


def test_a_records_view_survives_the_round_trip_and_older_records_have_none() -> None:
    entry = MountRecord("/t", "boot-1", True, None, True, None, "/state/views/x")
    record = VolumeRecord(VOLUME, VOLUME[:20], publish={"/t": entry})
    assert from_json(to_json(record)).publish["/t"].view == "/state/views/x"
    older = json.loads(to_json(record))
    del older["publish"]["/t"]["view"]
    assert from_json(json.dumps(older)).publish["/t"].view is None


# ---- LoopViews without root: anchors and the kernel's loop table ----


def _loop(
    sys_block: Path, name: str, backing: str | None, ro: str = "1", autoclear: str = "0"
) -> None:
    (sys_block / name / "loop").mkdir(parents=True)
    (sys_block / name / "ro").write_text(ro + "\n")
    (sys_block / name / "loop" / "autoclear").write_text(autoclear + "\n")
    if backing is not None:
        (sys_block / name / "loop" / "backing_file").write_text(backing + "\n")


def test_anchors_are_one_per_volume_and_target(tmp_path: Path) -> None:
    views = LoopViews(tmp_path / "views")
    a = views.anchor(VOLUME, "/pods/a/dev")
    assert a == views.anchor(VOLUME, "/pods/a/dev")
    assert a != views.anchor(VOLUME, "/pods/b/dev")
    assert Path(a).parent == tmp_path / "views" and Path(a).name.startswith(VOLUME + ".")


async def test_the_loops_of_an_anchor_are_found_by_their_backing_path(tmp_path: Path) -> None:
    sys_block = tmp_path / "sys"
    views = LoopViews(tmp_path / "views", sys_block=sys_block)
    anchor = views.anchor(VOLUME, "/pods/a/dev")
    _loop(sys_block, "loop3", anchor)
    _loop(sys_block, "loop5", anchor + " (deleted)")
    _loop(sys_block, "loop7", "/dev/nvme1n1")
    _loop(sys_block, "loop9", anchor + "0")
    _loop(sys_block, "loop11", None)  # not attached
    _loop(sys_block, "loop13", anchor, ro="0")
    _loop(sys_block, "loop15", anchor, autoclear="1")  # detached while open: on its way out
    every = ["/dev/loop13", "/dev/loop15", "/dev/loop3", "/dev/loop5"]
    assert await views.loops(anchor) == every  # all of them are detached at unpublish
    assert await views.loops(anchor, usable=True) == ["/dev/loop3"]  # only this one is bound


async def test_close_leaves_what_is_not_its_anchor(tmp_path: Path) -> None:
    views = LoopViews(tmp_path / "views", sys_block=tmp_path / "sys")
    anchor = views.anchor(VOLUME, "/pods/a/dev")
    await views.close(anchor)  # nothing there: done
    Path(anchor).parent.mkdir(parents=True)
    Path(anchor).write_text("someone's file")
    with pytest.raises(FailedPreconditionError, match="left in place"):
        await views.close(anchor)
    assert Path(anchor).read_text() == "someone's file"
