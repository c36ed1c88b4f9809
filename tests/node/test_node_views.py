"""Read-only raw block publishes over fakes (no root): the view bound instead of the device, its
anchor recorded before it exists, and unpublish detaching it, after a crash too (issue 24, item
5; ``test_node_escape_loop.py`` writes through real targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csi_oxide.errors import AlreadyExistsError, FailedPreconditionError
from csi_oxide.node.state import MountRecord, VolumeRecord, from_json, to_json
from csi_oxide.node.views import LoopViews
from tests.node.world import VOLUME, FakeWorld

STAGED = "staging"  # the one staging every target here is published from


@pytest.fixture
async def world(fake_world: FakeWorld) -> FakeWorld:
    """The volume attached and staged as a raw block volume (no ``publish_context``)."""
    fake_world.devices.attach(VOLUME)
    await fake_world.stage(name=STAGED, fstype="", block=True, disk_id=None)
    return fake_world


async def _publish(world: FakeWorld, name: str, *, read_only: bool) -> str:
    """A raw block publish at ``target(name)``; the target."""
    return await world.publish(name=name, block=True, read_only=read_only, staged_as=STAGED)


def _bound_root(world: FakeWorld, target: str) -> str:
    """What is bound at ``target``: the path below its filesystem's root (/dev's: a device)."""
    (top,) = [m for m in world.mounter.table if m.mount_point == target]
    return top.root


async def _entry(world: FakeWorld, target: str) -> MountRecord | None:
    return (await world.store.load(VOLUME)).publish.get(target)


async def test_a_read_only_publish_binds_a_view_and_a_read_write_one_the_device(
    world: FakeWorld,
) -> None:
    ro = await _publish(world, "ro", read_only=True)
    rw = await _publish(world, "rw", read_only=False)
    assert _bound_root(world, rw) == "/nvme1n1"
    (anchor,) = world.views.views
    assert _bound_root(world, ro) == "/" + world.views.views[anchor].removeprefix("/dev/")
    entry = await _entry(world, ro)
    assert entry is not None and entry.view == anchor and entry.read_only
    rw_entry = await _entry(world, rw)
    assert rw_entry is not None and rw_entry.view is None
    await _publish(world, "ro", read_only=True)  # the same request again: the same view
    assert len(world.views.views) == 1
    with pytest.raises(AlreadyExistsError, match="read-only"):
        await _publish(world, "ro", read_only=False)


async def test_unpublish_detaches_the_view(world: FakeWorld) -> None:
    ro = await _publish(world, "ro", read_only=True)
    await world.ops.unpublish(VOLUME, ro)
    assert world.views.views == {} and await _entry(world, ro) is None
    assert not Path(ro).exists()


async def test_a_crash_once_the_view_exists_leaves_a_record_that_finds_it(world: FakeWorld) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await _publish(world, "ro", read_only=True)
    ro = world.target("ro")
    entry = await _entry(world, ro)
    assert entry is not None and entry.view in world.views.views and entry.identity is None
    await world.ops.unpublish(VOLUME, ro)
    assert world.views.views == {} and await _entry(world, ro) is None


async def test_a_retry_after_the_crash_binds_the_view_it_made(world: FakeWorld) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await _publish(world, "ro", read_only=True)
    (loop,) = world.views.views.values()
    ro = await _publish(world, "ro", read_only=True)
    assert list(world.views.views.values()) == [loop]
    assert _bound_root(world, ro) == "/" + loop.removeprefix("/dev/")


async def test_a_view_left_by_a_request_that_differed_is_detached(world: FakeWorld) -> None:
    world.views.die_after_open = True
    with pytest.raises(OSError, match="killed"):
        await _publish(world, "ro", read_only=True)
    rw = await _publish(world, "ro", read_only=False)  # the CO asked again, differently
    assert world.views.views == {} and _bound_root(world, rw) == "/nvme1n1"


async def test_stats_find_the_volume_at_its_view(world: FakeWorld) -> None:
    ro = await _publish(world, "ro", read_only=True)
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
