"""NodeOps on real loop devices: mkfs, mount, bind, grow, stats and every refusal.

A loop device whose backing file lies in the finder's device directory stands in for an attached
Oxide disk; the file's name plays the NVMe serial, exactly as with the simulator's loop backing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csi_oxide.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from csi_oxide.node import fs
from csi_oxide.node.devices import BlockDevice, UdevDeviceFinder
from csi_oxide.node.mount import LinuxMounter
from csi_oxide.node.ops import NodeOps
from tests import skips
from tests.node.world import (
    OTHER,
    VOLUME,
    LoopWorld,
    Rack,
    digest,
    publish_at,
    sh,
    stage_at,
)
from tests.units import GIB, MIB

pytestmark = pytest.mark.root

SMALL = 64 * MIB  # for tests that checksum whole devices: keeps them quick
XFS_MIN = 320 * MIB  # mkfs.xfs refuses filesystems under 300 MB
FSTYPES = ["ext4", "ext3", "xfs"]
EXT = ["ext4", "ext3"]  # e2fsprogs' filesystems, served by the kernel's ext4 driver
# Not asked of CI: a container may run its root without this capability (the refusal is tested).
CAP_SYS_RESOURCE = "online {fstype} growth needs CAP_SYS_RESOURCE, which this process lacks"


@pytest.fixture
def ops(loop_world: LoopWorld) -> NodeOps:
    return loop_world.ops


@pytest.fixture
def rack_ops(rack: Rack) -> Iterator[Callable[[bool], NodeOps]]:
    """Another node plugin over the rack, with or without online ext4 growth."""
    made: list[LoopWorld] = []

    def make(online_ext4_growth: bool) -> NodeOps:
        made.append(LoopWorld(rack, online_ext4_growth=online_ext4_growth))
        return made[-1].ops

    yield make
    for world in made:
        world.store.close()


def _needs(tool: str) -> None:
    skips.need_tools(tool)


@pytest.mark.parametrize("fstype", FSTYPES)
async def test_full_cycle_is_idempotent(rack: Rack, ops: NodeOps, fstype: str) -> None:
    _needs(f"mkfs.{fstype}")
    dev = rack.attach(rack.disk(VOLUME))
    staging, target = rack.paths()
    for _ in range(2):
        await stage_at(ops, VOLUME, staging, fstype=fstype)
    assert (await fs.probe(dev)).fstype == fstype
    (mounted,) = await LinuxMounter().mounts_at(staging)
    assert mounted.fstype == fstype  # mounted as what was asked (ext3: by the ext4 driver)
    for _ in range(2):
        await publish_at(ops, VOLUME, staging, target)
    Path(target, "hello").write_text("hello")
    stats = await ops.stats(VOLUME, target)
    assert stats.abnormal is None
    assert 0 < stats.used_bytes < stats.total_bytes <= GIB
    assert stats.total_inodes > stats.available_inodes > 0
    for _ in range(2):
        await ops.unpublish(VOLUME, target)
    assert not Path(target).exists()
    for _ in range(2):
        await ops.unstage(VOLUME, staging)
    assert not os.path.ismount(staging)
    # Staged again: the same filesystem, the file still there (never re-formatted).
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    assert Path(staging, "hello").read_text() == "hello"
    await ops.unstage(VOLUME, staging)
    if fstype in EXT:
        sh(f"fsck.{fstype}", "-n", "-f", dev)  # clean: exit 0


async def test_read_only_publish(rack: Rack, ops: NodeOps) -> None:
    rack.attach(rack.disk(VOLUME))
    staging, target = rack.paths()
    await stage_at(ops, VOLUME, staging)
    await publish_at(ops, VOLUME, staging, target, read_only=True)
    with pytest.raises(OSError, match="Read-only"):
        Path(target, "x").write_text("x")
    with pytest.raises(Exception, match="read-only"):
        await publish_at(
            ops, VOLUME, staging, target, read_only=False
        )  # a different request: refused


async def test_raw_block_publish_reaches_the_device(rack: Rack, ops: NodeOps) -> None:
    dev = rack.attach(rack.disk(VOLUME))
    staging, target = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype="", block=True)
    await publish_at(ops, VOLUME, staging, target, block=True)
    await publish_at(ops, VOLUME, staging, target, block=True)
    payload = os.urandom(4096)
    fd = os.open(target, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(dev, "rb") as f:
        f.seek(8192)
        assert f.read(4096) == payload
    stats = await ops.stats(VOLUME, target)
    assert (stats.block, stats.total_bytes) == (True, GIB)
    await ops.unpublish(VOLUME, target)
    assert not Path(target).exists()


async def test_single_writer_refuses_a_second_target(rack: Rack, ops: NodeOps) -> None:
    rack.attach(rack.disk(VOLUME))
    staging, target = rack.paths()
    await stage_at(ops, VOLUME, staging)
    await publish_at(ops, VOLUME, staging, target, single_writer=True)
    with pytest.raises(FailedPreconditionError, match="SINGLE_WRITER"):
        await publish_at(ops, VOLUME, staging, target + "-2", single_writer=True)


@pytest.mark.parametrize("fstype", FSTYPES)
async def test_a_grown_device_grows_its_filesystem_at_stage(
    rack: Rack, ops: NodeOps, fstype: str
) -> None:
    _needs(f"mkfs.{fstype}")
    backing = rack.disk(VOLUME)
    dev = rack.attach(backing)
    staging, _ = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    Path(staging, "data").write_bytes(os.urandom(1 << 20))
    before = digest(Path(staging, "data"))
    small = (await ops.stats(VOLUME, staging)).total_bytes
    await ops.unstage(VOLUME, staging)
    rack.grow(backing, dev, 2 * GIB)  # what offline expansion does to the disk
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    assert (await ops.stats(VOLUME, staging)).total_bytes > small + GIB // 2
    assert digest(Path(staging, "data")) == before
    assert await ops.expand(VOLUME, staging) == 2 * GIB
    await ops.unstage(VOLUME, staging)


@pytest.mark.parametrize("fstype", FSTYPES)
async def test_expand_grows_online_through_the_published_path(
    rack: Rack, ops: NodeOps, fstype: str
) -> None:
    _needs(f"mkfs.{fstype}")
    backing = rack.disk(VOLUME)
    dev = rack.attach(backing)
    staging, target = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    await publish_at(ops, VOLUME, staging, target)
    small = (await ops.stats(VOLUME, target)).total_bytes
    rack.grow(backing, dev, 2 * GIB)
    if fstype in EXT and not fs.can_grow_ext4_online():
        with pytest.raises(FailedPreconditionError, match="CAP_SYS_RESOURCE"):
            await ops.expand(VOLUME, target)
        skips.skip(CAP_SYS_RESOURCE.format(fstype=fstype))
    assert await ops.expand(VOLUME, target) == 2 * GIB
    assert (await ops.stats(VOLUME, target)).total_bytes > small + GIB // 2
    assert await ops.expand(VOLUME, target) == 2 * GIB  # nothing left to do: still fine


@pytest.mark.parametrize("fstype", EXT)
@pytest.mark.parametrize("online", [True, False])
async def test_ext4_grows_at_stage_online_or_before_mounting(
    rack: Rack, rack_ops: Callable[[bool], NodeOps], online: bool, fstype: str
) -> None:
    """ext4, and ext3 alike (resize2fs; e2fsck first when unmounted)."""
    if online and not fs.can_grow_ext4_online():
        skips.skip(CAP_SYS_RESOURCE.format(fstype=fstype))
    ops = rack_ops(online)
    backing = rack.disk(VOLUME)
    dev = rack.attach(backing)
    staging, _ = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    await ops.unstage(VOLUME, staging)
    rack.grow(backing, dev, 2 * GIB)
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    assert await fs.filesystem_size(dev, fstype) == 2 * GIB
    assert (await fs.probe(dev)).fstype == fstype  # still ext3: growth adds no ext4 feature
    await ops.unstage(VOLUME, staging)
    sh(f"fsck.{fstype}", "-n", "-f", dev)


@pytest.mark.parametrize(("first", "then"), [("ext4", "xfs"), ("ext4", "ext3"), ("ext3", "ext4")])
async def test_staged_again_with_another_type_is_refused(
    rack: Rack, ops: NodeOps, first: str, then: str
) -> None:
    rack.attach(rack.disk(VOLUME))
    staging, _ = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype=first)
    with pytest.raises(AlreadyExistsError, match=f"as {first}, not {then}"):
        await stage_at(ops, VOLUME, staging, fstype=then)


async def test_stats_report_a_filesystem_gone_read_only(rack: Rack, ops: NodeOps) -> None:
    rack.attach(rack.disk(VOLUME))
    staging, target = rack.paths()
    await stage_at(ops, VOLUME, staging)
    await publish_at(ops, VOLUME, staging, target, read_only=True)
    assert (await ops.stats(VOLUME, target)).abnormal is None  # asked read-only: healthy
    sh("mount", "-o", "remount,ro", staging)  # what ext4 errors=remount-ro does
    assert "read-only" in str((await ops.stats(VOLUME, staging)).abnormal)


@pytest.mark.parametrize("fstype", EXT)
async def test_existing_filesystem_is_mounted_never_reformatted(
    rack: Rack, ops: NodeOps, fstype: str
) -> None:
    backing = rack.disk(VOLUME)
    dev = rack.attach(backing)
    sh(f"mkfs.{fstype}", "-q", "-L", "precious", dev)
    mnt = rack.root / "by-hand"
    mnt.mkdir()
    sh("mount", dev, str(mnt))
    (mnt / "data").write_bytes(os.urandom(1 << 20))
    before = digest(mnt / "data")
    sh("umount", str(mnt))
    uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", dev)
    staging, _ = rack.paths()
    await stage_at(ops, VOLUME, staging, fstype=fstype)
    assert digest(Path(staging, "data")) == before
    blkid = sh("blkid", "-p", "-o", "export", dev)
    assert "LABEL=precious" in blkid and f"TYPE={fstype}" in blkid and f"UUID={uuid}" in blkid


async def test_raw_data_without_signature_is_refused_untouched(rack: Rack, ops: NodeOps) -> None:
    backing = rack.disk(VOLUME, SMALL)
    with backing.open("r+b") as f:
        f.seek(SMALL - 4096)  # data only near the end: the start still reads as zeros
        f.write(os.urandom(4096))
    dev = rack.attach(backing)
    before = digest(dev)
    staging, _ = rack.paths()
    with pytest.raises(FailedPreconditionError, match="not blank"):
        await stage_at(ops, VOLUME, staging)
    assert digest(dev) == before
    assert not os.path.ismount(staging)


@pytest.mark.parametrize(("holds", "asked"), [("ext4", "ext3"), ("ext3", "ext4")])
async def test_an_ext4_asked_for_as_ext3_or_the_reverse_is_refused_untouched(
    rack: Rack, ops: NodeOps, holds: str, asked: str
) -> None:
    """The kernel's ext4 driver would mount either way; the node does not: the filesystem a
    volume holds is the one it was asked for (as for xfs and ext4), else FAILED_PRECONDITION."""
    dev = rack.attach(rack.disk(VOLUME, SMALL))
    sh(f"mkfs.{holds}", "-q", dev)
    before = digest(dev)
    staging, _ = rack.paths()
    with pytest.raises(FailedPreconditionError, match=f"holds '{holds}', not {asked}"):
        await stage_at(ops, VOLUME, staging, fstype=asked)
    assert digest(dev) == before
    assert not os.path.ismount(staging)


async def test_another_filesystem_type_is_refused(rack: Rack, ops: NodeOps) -> None:
    _needs("mkfs.xfs")
    dev = rack.attach(rack.disk(VOLUME, XFS_MIN))
    sh("mkfs.xfs", "-q", dev)
    before = digest(dev)
    staging, _ = rack.paths()
    with pytest.raises(FailedPreconditionError, match="xfs"):
        await stage_at(ops, VOLUME, staging, fstype="ext4")
    assert digest(dev) == before


async def test_a_device_with_another_serial_is_never_touched(rack: Rack, ops: NodeOps) -> None:
    elsewhere = rack.root / "elsewhere"
    elsewhere.mkdir()
    foreign = rack.attach(rack.disk(VOLUME, SMALL, elsewhere))  # right name, wrong directory
    other = rack.attach(rack.disk(OTHER, SMALL))  # right directory, another volume
    digests = {dev: digest(dev) for dev in (foreign, other)}
    staging, _ = rack.paths()
    with pytest.raises(NotFoundError, match=VOLUME):
        await stage_at(ops, VOLUME, staging)
    assert {dev: digest(dev) for dev in digests} == digests


async def test_two_devices_with_one_serial_are_refused(rack: Rack, ops: NodeOps) -> None:
    backing = rack.disk(VOLUME)
    rack.attach(backing)
    rack.attach(backing)
    staging, _ = rack.paths()
    with pytest.raises(FailedPreconditionError, match="several devices"):
        await stage_at(ops, VOLUME, staging)


async def test_the_device_may_appear_after_the_call(
    rack: Rack, ops: NodeOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = threading.Semaphore(0)
    scan = UdevDeviceFinder.scan

    def watched(finder: UdevDeviceFinder) -> list[BlockDevice]:
        found = scan(finder)
        scans.release()  # the finder looked (its udev monitor already listens) and went on
        return found

    monkeypatch.setattr(UdevDeviceFinder, "scan", watched)
    backing = rack.disk(VOLUME)
    staging, _ = rack.paths()
    stage = asyncio.ensure_future(stage_at(ops, VOLUME, staging))
    assert await asyncio.to_thread(scans.acquire, timeout=10)  # looked: no device yet
    assert not stage.done()
    await asyncio.to_thread(rack.attach, backing)
    await asyncio.wait_for(stage, 10)
    assert os.path.ismount(staging)


async def test_paths_that_are_not_ours(rack: Rack, ops: NodeOps) -> None:
    rack.attach(rack.disk(VOLUME))
    with pytest.raises(NotFoundError):
        await ops.stats(VOLUME, str(rack.root / "missing"))
    with pytest.raises(NotFoundError, match="not staged"):
        await ops.stats(VOLUME, str(rack.root))
    await ops.unpublish(VOLUME, str(rack.root / "never-published"))
    assert await ops.max_volumes() == 12


async def test_unpublish_and_unstage_touch_only_what_is_the_volumes(
    rack: Rack, ops: NodeOps
) -> None:
    rack.attach(rack.disk(VOLUME))
    foreign = rack.root / "foreign"
    foreign.mkdir()
    sh("mount", "-t", "tmpfs", "tmpfs", str(foreign))
    (foreign / "keep").write_text("keep")
    for call in (ops.unpublish(VOLUME, str(foreign)), ops.unstage(VOLUME, str(foreign))):
        with pytest.raises(FailedPreconditionError, match="not volume"):
            await call
    assert (foreign / "keep").read_text() == "keep"
    data = rack.root / "some-file"
    data.write_text("data")
    await ops.unpublish(VOLUME, str(data))  # nothing of ours there: OK, and never deleted
    assert data.read_text() == "data"
    link = rack.root / "link"
    link.symlink_to(foreign)
    with pytest.raises(FailedPreconditionError, match="not volume"):
        await ops.unpublish(VOLUME, str(link))
