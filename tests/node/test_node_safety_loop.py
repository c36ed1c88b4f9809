"""Issue 12's findings reproduced on real loop devices, real mounts and real mkfs (root).

Each test sets up what the issue's hostile or unlucky caller did and checks that nothing that is
not provably the volume's is unmounted, deleted or formatted, and that what is ours still gets
released (device gone, plugin restarted, node rebooted).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from csi_oxide.contract.publish_context import Origin
from csi_oxide.errors import AbortedError, FailedPreconditionError, NotFoundError
from csi_oxide.node import fs, zerocheck
from csi_oxide.node.fs import LinuxFilesystems
from csi_oxide.node.history import MKFS_DONE, MKFS_STARTED
from tests.loops import detach_if_ours
from tests.node.world import NEW_DISK, OTHER, TWIN, VOLUME, LoopWorld, digest, sh
from tests.units import GIB, MIB

pytestmark = pytest.mark.root

T = TypeVar("T")


@pytest.fixture
def world(loop_world: LoopWorld) -> LoopWorld:
    return loop_world


def _host_disk(world: LoopWorld, name: str = "host-disk") -> str:
    """A loop device the host formatted and uses itself (outside the rack's directory)."""
    elsewhere = world.rack.root / "host"
    elsewhere.mkdir(exist_ok=True)
    dev = world.rack.attach(world.rack.disk(name, 64 * MIB, elsewhere))
    sh("mkfs.ext4", "-q", dev)
    return dev


# ---- finding 1 ----


async def test_unstage_with_the_device_absent_leaves_the_hosts_own_mount(world: LoopWorld) -> None:
    staging = world.staging()
    sh("mount", _host_disk(world), staging)
    Path(staging, "keep").write_text("keep")
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(VOLUME, staging)  # a valid volume ID, not attached
    assert os.path.ismount(staging) and Path(staging, "keep").read_text() == "keep"


async def test_unpublish_through_a_symlink_to_a_bind_of_a_host_directory(world: LoopWorld) -> None:
    host_dir = world.rack.root / "host-dir"
    host_dir.mkdir()
    (host_dir / "keep").write_text("keep")
    bound = world.rack.root / "bound"
    bound.mkdir()
    sh("mount", "--bind", str(host_dir), str(bound))
    target = world.target()
    Path(target).symlink_to(bound)
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unpublish(VOLUME, target)
    assert world.mounted(bound) and (bound / "keep").read_text() == "keep"


async def test_unpublish_of_another_volumes_target_leaves_it(world: LoopWorld) -> None:
    world.rack.attach(world.rack.disk(OTHER))
    await world.stage(OTHER, "b")
    target = await world.publish(OTHER, "b")
    Path(target, "data").write_text("data")
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unpublish(VOLUME, target)
    assert os.path.ismount(target) and Path(target, "data").read_text() == "data"


async def test_unstage_through_dotdot_leaves_the_other_volumes_staging(world: LoopWorld) -> None:
    world.rack.attach(world.rack.disk(VOLUME))
    staging_a = await world.stage(VOLUME, "a")
    staging_b = world.staging("b")
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(OTHER, os.path.join(staging_b, "..", "..", "a", "globalmount"))
    assert os.path.ismount(staging_a)


async def test_our_mounts_are_released_with_the_device_gone_and_after_a_restart(
    world: LoopWorld,
) -> None:
    backing = world.rack.disk(VOLUME)
    world.rack.attach(backing)
    staging = await world.stage()
    target = await world.publish()
    backing.rename(world.rack.root / "detached")  # the finder no longer sees the volume
    assert await world.ops.max_volumes() == 12
    world.restart()
    await world.ops.unpublish(VOLUME, target)
    await world.ops.unstage(VOLUME, staging)
    assert not os.path.ismount(target) and not os.path.ismount(staging)
    assert not Path(target).exists()


async def test_after_a_reboot_only_the_records_own_leftovers_are_cleaned(world: LoopWorld) -> None:
    dev = world.rack.attach(world.rack.disk(VOLUME))
    staging = await world.stage()
    target = await world.publish()
    sh("umount", target)  # what a reboot does to every mount
    sh("umount", staging)
    world.restart(boot="a-later-boot")
    sh("mount", dev, staging)  # the same device at the same path, mounted by someone else
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(VOLUME, staging)
    assert os.path.ismount(staging)
    sh("umount", staging)
    await world.ops.unpublish(VOLUME, target)
    await world.ops.unstage(VOLUME, staging)
    assert not Path(target).exists()  # the directory this plugin made, same inode


# ---- finding 2 ----


async def test_unpublish_deletes_no_empty_file_or_directory_it_did_not_create(
    world: LoopWorld,
) -> None:
    empty_dir = world.rack.root / "empty-dir"
    empty_dir.mkdir()
    empty_file = world.rack.root / "empty-file"
    empty_file.touch()
    for path in (empty_dir, empty_file):
        await world.ops.unpublish(VOLUME, str(path))
        assert path.exists()


# ---- finding 3 ----


@pytest.mark.parametrize("offset", [1 * MIB, 100 * MIB, 700 * MIB])
async def test_data_past_the_edges_is_never_formatted_over(world: LoopWorld, offset: int) -> None:
    backing = world.rack.disk(VOLUME)
    with backing.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(4 * MIB))
    dev = world.rack.attach(backing)
    before = digest(dev)
    for origin in (None, Origin.BLANK):
        with pytest.raises(FailedPreconditionError, match="not blank"):
            await world.stage(origin=origin)
    assert digest(dev) == before


async def test_an_ext4_with_its_first_mib_zeroed_is_never_formatted_over(world: LoopWorld) -> None:
    backing = world.rack.disk(VOLUME)
    dev = world.rack.attach(backing)
    sh("mkfs.ext4", "-q", dev)
    mnt = world.rack.root / "fill"
    mnt.mkdir()
    sh("mount", dev, str(mnt))
    (mnt / "precious").write_bytes(os.urandom(8 * MIB))
    sh("umount", str(mnt))
    with open(dev, "r+b") as f:
        f.write(bytes(MIB))
    assert not (await fs.probe(dev)).found
    before = digest(dev)
    with pytest.raises(FailedPreconditionError, match="not blank"):
        await world.stage()
    assert digest(dev) == before


# ---- finding 4 ----


class MkfsDiesBeforeItsSuperblock(LinuxFilesystems):
    """The real mkfs, then the state a kill -9 of it leaves: its metadata written, no signature
    (``wipefs`` removes the superblock magic mkfs writes last). The chaos run kills for real."""

    async def mkfs(self, device: str, fstype: str) -> None:
        await super().mkfs(device, fstype)
        sh("wipefs", "-a", "-q", device)
        raise OSError("mkfs killed")


async def test_an_interrupted_mkfs_on_a_disk_born_blank_is_recovered(world: LoopWorld) -> None:
    dev = world.rack.attach(world.rack.disk(VOLUME, 64 * GIB))
    world.filesystems = MkfsDiesBeforeItsSuperblock()
    world.restart()
    with pytest.raises(OSError, match="killed"):
        await world.stage(origin=Origin.BLANK)
    assert (await world.store.load(VOLUME)).history == MKFS_STARTED
    assert not (await fs.probe(dev)).found and not zerocheck.reads_as_zeros(dev)  # the wedge
    world.filesystems = LinuxFilesystems()
    world.restart()
    for origin in (None, Origin.SNAPSHOT, Origin.STATIC):  # without the controller's word: no
        with pytest.raises(FailedPreconditionError, match="not blank"):
            await world.stage(origin=origin)
    staging = await world.stage(origin=Origin.BLANK)
    Path(staging, "data").write_text("data")
    await world.ops.unstage(VOLUME, staging)
    assert (await world.store.load(VOLUME)).history == MKFS_DONE
    sh("fsck.ext4", "-n", "-f", dev)
    # Its superblock wiped now, the disk is still not blank: it carried a complete filesystem.
    sh("wipefs", "-a", "-q", dev)
    with pytest.raises(FailedPreconditionError, match="complete filesystem"):
        await world.stage(origin=Origin.BLANK)


# ---- issue 24, finding 1: a reused volume name ----


def _delete_and_create_again(world: LoopWorld, dev: str, raw_data_at: int | None = None) -> str:
    """The volume's disk detached and deleted, then a new disk created under the same name (a
    new UUID), attached again: its loop device, with ``raw_data_at`` holding someone's data."""
    assert detach_if_ours(dev, world.rack.devices / VOLUME)
    world.rack.disk(VOLUME).unlink()
    backing = world.rack.disk(VOLUME, 64 * GIB)
    if raw_data_at is not None:
        with backing.open("r+b") as f:
            f.seek(raw_data_at)
            f.write(os.urandom(4 * MIB))
    return world.rack.attach(backing)


@pytest.mark.timeout(900)  # reads the whole 64 GiB device twice: about 3 minutes
async def test_a_stale_mkfs_started_never_formats_a_new_disks_raw_data(world: LoopWorld) -> None:
    dev = world.rack.attach(world.rack.disk(VOLUME, 64 * GIB))
    world.filesystems = MkfsDiesBeforeItsSuperblock()
    world.restart()
    with pytest.raises(OSError, match="killed"):
        await world.stage(origin=Origin.BLANK)  # the first life: mkfs killed on disk DISK
    world.filesystems = LinuxFilesystems()
    world.restart()
    assert (await world.store.load(VOLUME)).history == MKFS_STARTED
    dev = _delete_and_create_again(world, dev, raw_data_at=10 * GIB)
    before = digest(dev)
    for disk_id in (NEW_DISK, None):
        with pytest.raises(FailedPreconditionError, match="not blank"):
            await world.stage(origin=Origin.BLANK, disk_id=disk_id)
    assert digest(dev) == before and not (await fs.probe(dev)).found


async def test_a_new_blank_disk_under_a_formatted_name_is_formatted(world: LoopWorld) -> None:
    dev = world.rack.attach(world.rack.disk(VOLUME, 64 * GIB))
    staging = await world.stage(origin=Origin.BLANK)
    await world.ops.unstage(VOLUME, staging)
    dev = _delete_and_create_again(world, dev)
    staging = await world.stage(origin=Origin.BLANK, disk_id=NEW_DISK)
    Path(staging, "data").write_text("second life")
    await world.ops.unstage(VOLUME, staging)
    record = await world.store.load(VOLUME)
    assert (record.history, record.disk_id) == (MKFS_DONE, NEW_DISK)
    sh("fsck.ext4", "-n", "-f", dev)


# ---- finding 5 ----


async def _as_the_co_would(call: Callable[[], Awaitable[T]]) -> T:
    """``call``, retried while it is ABORTED (another operation on the device is in flight), as
    the CO retries an ABORTED call."""
    while True:
        try:
            return await call()
        except AbortedError:
            await asyncio.sleep(0.05)


async def test_two_ids_sharing_a_serial_never_share_the_device(world: LoopWorld) -> None:
    dev = world.rack.attach(world.rack.disk(VOLUME))
    # NodeOps' guard, keyed by the serial, answers the later of the two ABORTED at once; retried,
    # it is refused for the serial in use.
    results = await asyncio.gather(
        _as_the_co_would(lambda: world.stage(VOLUME, "a")),
        _as_the_co_would(lambda: world.stage(TWIN, "b")),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], FailedPreconditionError), results
    assert "already uses" in str(errors[0])
    first_won = not isinstance(results[0], BaseException)
    winner, loser = (VOLUME, TWIN) if first_won else (TWIN, VOLUME)
    staged = world.staging("a" if winner == VOLUME else "b")
    Path(staged, "data").write_text("data")
    with pytest.raises(FailedPreconditionError):
        await world.ops.unstage(loser, staged)
    assert os.path.ismount(staged) and Path(staged, "data").read_text() == "data"
    await world.ops.unstage(winner, staged)
    sh("fsck.ext4", "-n", "-f", dev)


# ---- finding 6 ----


async def test_messages_show_serials_as_text(world: LoopWorld) -> None:
    backing = world.rack.disk(VOLUME)
    world.rack.attach(backing)
    world.rack.attach(backing)
    with pytest.raises(FailedPreconditionError) as several:
        await world.stage()
    with pytest.raises(NotFoundError) as missing:
        await world.stage(OTHER)
    for caught in (several, missing):
        assert "b'" not in str(caught.value) and "serial 'csi-" in str(caught.value)
