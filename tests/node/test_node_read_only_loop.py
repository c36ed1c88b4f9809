"""NodeOps with a read-only disk on a real read-only loop device (``losetup --read-only``, as the
simulator's loop backing attaches an Oxide read-only disk): staged read-only without a journal
replay, its data readable, writes refused by the kernel, healthy stats, no growth."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from csi_oxide.contract.publish_context import Origin
from csi_oxide.errors import FailedPreconditionError
from csi_oxide.node import mountinfo
from tests.loops import attach, detach_if_ours
from tests.node.world import VOLUME, LoopWorld, PublishContext, sh
from tests.units import MIB

pytestmark = pytest.mark.root

# What ``publish_context`` says of the volume: a read-only disk, made from a snapshot.
READ_ONLY = PublishContext(origin=Origin.SNAPSHOT, read_only_disk=True)
SIZES = {"ext4": 64 * MIB, "ext3": 64 * MIB, "xfs": 320 * MIB}  # mkfs.xfs: 300 MB at least


@pytest.fixture
def world(loop_world: LoopWorld) -> LoopWorld:
    return loop_world


def _golden_disk(world: LoopWorld, fstype: str) -> None:
    """The volume's disk in the rack, holding ``fstype`` with one file on it, attached as a
    read-only loop device."""
    backing = world.rack.disk(VOLUME, SIZES[fstype])
    sh(f"mkfs.{fstype}", "-q", str(backing))
    by_hand = world.root / "by-hand"
    by_hand.mkdir()
    dev = attach(backing)
    try:
        sh("mount", dev, str(by_hand))
        (by_hand / "data").write_bytes(b"golden")
        sh("umount", str(by_hand))
    finally:
        detach_if_ours(dev, backing)
    world.rack.attach(backing, "--read-only")


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "xfs"])
async def test_read_only_disk_is_staged_read_only(world: LoopWorld, fstype: str) -> None:
    _golden_disk(world, fstype)
    staging = Path(await world.stage(fstype=fstype, **READ_ONLY))
    assert (staging / "data").read_bytes() == b"golden"
    (top,) = [m for m in mountinfo.read() if m.mount_point == os.path.realpath(staging)]
    assert top.fstype == fstype  # an ext3 is mounted as ext3 (by the kernel's ext4 driver)
    with pytest.raises(OSError, match="Read-only file system") as info:
        (staging / "new").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    stats = await world.ops.stats(VOLUME, str(staging))
    assert stats.abnormal is None and stats.total_bytes > 0
    with pytest.raises(FailedPreconditionError, match="mounted read-only"):
        await world.ops.expand(VOLUME, str(staging))
    await world.unstage()


async def test_a_blank_read_only_disk_is_not_formatted(world: LoopWorld) -> None:
    backing = world.rack.disk(VOLUME, SIZES["ext4"])
    world.rack.attach(backing, "--read-only")
    with pytest.raises(FailedPreconditionError, match="never formatted"):
        await world.stage(fstype="ext4", **READ_ONLY)
    assert backing.read_bytes().strip(b"\0") == b""
