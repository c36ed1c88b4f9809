"""The node's decisions against fakes of its seams (no root): format or refuse, unmount or refuse,
delete or leave, one serial per volume. Each finding of issue 12 has its case here; the same
findings are reproduced on real loop devices in ``test_node_safety_loop.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from csi_oxide.contract.publish_context import Origin
from csi_oxide.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
)
from csi_oxide.node.fs import Signature
from csi_oxide.node.history import MKFS_DONE, MKFS_STARTED, RAW
from csi_oxide.node.mountinfo import Mount
from csi_oxide.node.ops import MKFS_CONCURRENCY
from csi_oxide.node.state import VolumeRecord
from tests.node.fakes import Disk, FakeFilesystems, FakeMounter, MkfsInterruptedError
from tests.node.world import DISK, NEW_DISK, OTHER, TWIN, VOLUME, FakeWorld

GUARD = 10.0  # ends a test that would hang on the old behaviour; never reached when it passes


@pytest.fixture
def world(fake_world: FakeWorld) -> FakeWorld:
    return fake_world


# ---- finding 1: unmount only what provably is ours ----


async def test_unstage_leaves_a_foreign_mount_when_the_device_is_absent(world: FakeWorld) -> None:
    staging = world.staging()
    world.mounter.add("8:16", "/", staging, "ext4", "/dev/sdb")  # the host's own disk
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(VOLUME, staging)
    assert world.mounted(staging)
    assert ("unmount", os.path.realpath(staging)) not in world.mounter.calls


async def test_unstage_leaves_a_foreign_mount_when_the_device_is_present(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    staging = world.staging()
    world.mounter.add("8:16", "/", staging, "ext4", "/dev/sdb")
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(VOLUME, staging)
    assert world.mounted(staging)


async def test_unpublish_through_a_symlink_to_a_root_fs_bind_is_refused(world: FakeWorld) -> None:
    host_dir = world.root / "etc-bind"
    host_dir.mkdir()
    world.mounter.add("8:1", "/etc", str(host_dir), "ext4", "/dev/sda1")
    link = Path(world.target())
    link.symlink_to(host_dir)
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unpublish(VOLUME, str(link))
    assert world.mounted(str(host_dir))
    assert host_dir.is_dir() and link.is_symlink()


async def test_unpublish_of_another_volumes_target_touches_nothing(world: FakeWorld) -> None:
    world.devices.attach(OTHER)
    await world.stage(OTHER, "b")
    await world.publish(OTHER, "b")
    target = world.target("b")
    for volume in (VOLUME, "csi-aaaaaaaaaaaaaaaa"):  # attached or not: the same answer
        with pytest.raises(FailedPreconditionError, match="left mounted"):
            await world.ops.unpublish(volume, target)
    assert world.mounted(target) and Path(target).is_dir()


async def test_unstage_through_dotdot_to_another_volumes_staging_is_refused(
    world: FakeWorld,
) -> None:
    world.devices.attach(VOLUME)
    await world.stage(VOLUME, "a")
    sneaky = os.path.join(world.staging("b"), "..", "..", "a", "globalmount")
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(OTHER, sneaky)
    assert world.mounted(world.staging("a"))


async def test_our_mounts_are_released_with_the_device_gone(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    await world.publish()
    world.devices.detach(VOLUME)
    await world.ops.unpublish(VOLUME, world.target())
    await world.ops.unstage(VOLUME, world.staging())
    assert not world.mounted(world.target()) and not world.mounted(world.staging())
    assert not Path(world.target()).exists()
    record = await world.store.load(VOLUME)
    assert (record.stage, record.publish, record.history) == (None, {}, MKFS_DONE)


async def test_after_a_plugin_restart_the_records_still_prove_it(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    await world.publish()
    world.restart()  # a new process, the same host directory and boot
    await world.unpublish()
    await world.unstage()
    assert not world.mounted(world.staging())


async def test_after_a_reboot_nothing_mounted_is_ours(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    await world.publish()
    world.reboot()
    # Someone mounts the same device number at the old staging path: not provably ours.
    dev = await world.devices.find(VOLUME)
    world.mounter.add(dev.major_minor, "/", world.staging(), "ext4", dev.path)
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(VOLUME, world.staging())
    world.mounter.table.pop()
    # Nothing mounted: done; the target this plugin made (same inode) is removed.
    await world.ops.unpublish(VOLUME, world.target())
    await world.ops.unstage(VOLUME, world.staging())
    assert not Path(world.target()).exists()
    assert (await world.store.load(VOLUME)).stage is None


async def test_the_record_is_on_disk_before_anything_is_mounted(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    seen: list[str] = []

    def check(target: str) -> None:
        text = (world.root / "state" / f"{VOLUME}.json").read_text()
        assert os.path.realpath(target) in text
        seen.append(target)

    world.mounter.before_mount = check
    await world.stage()
    await world.publish()
    assert len(seen) == 2


async def test_a_half_done_read_only_bind_is_finished_by_the_retry(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    await world.publish(read_only=True)
    top = world.mounter.table[-1]
    world.mounter.table[-1] = replace(top, options=("rw",))  # killed between bind and remount
    await world.publish(read_only=True)
    assert world.mounter.table[-1].read_only
    with pytest.raises(AlreadyExistsError, match="read-only"):
        await world.publish(read_only=False)


# ---- finding 2: delete only the target this plugin created ----


async def test_unpublish_never_deletes_an_empty_file_or_directory_it_did_not_create(
    world: FakeWorld,
) -> None:
    empty_dir = Path(world.target("d"))
    empty_dir.mkdir()
    empty_file = Path(world.target("f"))
    empty_file.touch()
    for path in (empty_dir, empty_file):
        await world.ops.unpublish(VOLUME, str(path))
        assert path.exists()


async def test_a_target_the_co_made_is_left_for_the_co(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    Path(world.target()).mkdir()  # kubelet creates the mount directory itself
    await world.publish()
    await world.ops.unpublish(VOLUME, world.target())
    assert Path(world.target()).is_dir() and not world.mounted(world.target())


async def test_a_target_replaced_after_publish_is_left_in_place(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage()
    await world.publish()
    target = Path(world.target())
    world.mounter.table.pop()  # unmounted behind the plugin's back...
    target.rename(target.with_name("moved"))
    target.mkdir()  # ...and the directory replaced by another one
    with pytest.raises(FailedPreconditionError, match="left in place"):
        await world.ops.unpublish(VOLUME, str(target))
    assert target.is_dir()


async def test_block_publish_creates_and_removes_its_file(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage(block=True)
    await world.publish(block=True)
    await world.publish(block=True)  # idempotent
    target = Path(world.target())
    assert target.is_file() and world.mounter.table[-1].root == "/nvme1n1"
    await world.ops.unpublish(VOLUME, str(target))
    assert not target.exists()


# ---- findings 3 and 4: format only on proof ----


async def _staged_with(world: FakeWorld, origin: Origin | None = None) -> None:
    await world.stage(origin=origin)


async def test_a_signature_free_device_that_reads_as_zeros_is_formatted(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    await _staged_with(world)
    assert world.fs.formatted == [(dev.path, "ext4")]
    assert (await world.store.load(VOLUME)).history == MKFS_DONE


async def test_data_anywhere_on_the_device_is_never_formatted(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).zeros = False  # some sample in the middle is not zero
    for origin in (None, Origin.BLANK, Origin.SNAPSHOT):
        with pytest.raises(FailedPreconditionError, match="not blank"):
            await _staged_with(world, origin)
    assert world.fs.formatted == [] and not world.mounted(world.staging())


async def test_any_other_signature_is_refused_untouched(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    for sig in (Signature(fstype="xfs"), Signature(pttype="gpt"), Signature(usage="raid")):
        world.fs.disk(dev.path).signature = sig
        with pytest.raises(FailedPreconditionError, match="never re-formatted"):
            await _staged_with(world, Origin.BLANK)
    assert world.fs.formatted == []


async def test_an_existing_filesystem_is_mounted_not_formatted(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).signature = Signature(fstype="ext4")
    world.fs.disk(dev.path).zeros = False
    await _staged_with(world)
    assert world.fs.formatted == [] and world.mounted(world.staging())


async def test_a_formatted_disk_is_staged_without_waiting_for_the_zero_check(
    world: FakeWorld,
) -> None:
    """Once blkid finds the filesystem the zero check's answer cannot change anything: the stage
    goes on without it (on a large disk it reads for a long time) and stops it."""
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).signature = Signature(fstype="ext4")
    world.fs.zero_check_gate = asyncio.Event()  # never set: a zero check that never ends
    await asyncio.wait_for(_staged_with(world), GUARD)
    assert world.mounted(world.staging()) and world.fs.formatted == []
    assert world.fs.zero_checks_answered == 0 and world.fs.zero_checks_running == 0  # stopped


async def test_a_blank_disk_is_formatted_only_after_the_zero_check_answers(
    world: FakeWorld,
) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.zero_check_gate = gate = asyncio.Event()
    staging = asyncio.ensure_future(_staged_with(world))
    for _ in range(20):  # let the stage run as far as it can without the answer
        await asyncio.sleep(0)
    assert not staging.done() and world.fs.formatted == []
    gate.set()
    await asyncio.wait_for(staging, GUARD)
    assert world.fs.formatted == [(dev.path, "ext4")] and world.fs.zero_checks_answered == 1


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (the record store works in threads); a test whose
    condition never comes fails at GUARD."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - the condition has no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GUARD)


async def test_zero_checks_run_for_every_volume_at_once_while_mkfs_stays_bounded(
    world: FakeWorld,
) -> None:
    """A burst of new volumes on one node: the checks only read and all run together (on a
    network disk each waits on thousands of reads); mkfs, which writes, is MKFS_CONCURRENCY at
    a time."""
    volumes = [f"csi-{i:016x}" for i in range(MKFS_CONCURRENCY + 2)]
    for volume in volumes:
        world.devices.attach(volume)
    world.fs.zero_check_gate, world.fs.mkfs_gate = asyncio.Event(), asyncio.Event()
    stages = [
        asyncio.ensure_future(world.stage(volume, name=str(i))) for i, volume in enumerate(volumes)
    ]
    await _until(lambda: world.fs.zero_checks_running == len(volumes))
    world.fs.zero_check_gate.set()
    await _until(lambda: world.fs.mkfs_running == MKFS_CONCURRENCY)
    world.fs.mkfs_gate.set()
    await asyncio.wait_for(asyncio.gather(*stages), GUARD)
    assert len(world.fs.formatted) == len(volumes) and world.fs.mkfs_peak == MKFS_CONCURRENCY


# ---- every filesystem through the same rules: ext4, ext3, xfs ----

FSTYPES = ["ext4", "ext3", "xfs"]


def _staged_mount(world: FakeWorld) -> Mount:
    (top,) = [m for m in world.mounter.table if m.mount_point == os.path.realpath(world.staging())]
    return top


@pytest.mark.parametrize("fstype", FSTYPES)
async def test_a_blank_device_gets_the_filesystem_asked_for_once(
    world: FakeWorld, fstype: str
) -> None:
    dev = world.devices.attach(VOLUME)
    for _ in range(2):  # the retry finds it mounted
        await world.stage(fstype=fstype)
    assert world.fs.formatted == [(dev.path, fstype)]
    assert _staged_mount(world).fstype == fstype  # mount -t fstype
    record = await world.store.load(VOLUME)
    assert (record.history, record.history_fstype) == (MKFS_DONE, fstype)
    assert record.stage is not None and record.stage.identity is not None
    assert record.stage.identity.fstype == fstype
    await world.ops.unstage(VOLUME, world.staging())
    await world.stage(fstype=fstype)  # staged again: mounted, never formatted again
    assert world.fs.formatted == [(dev.path, fstype)] and _staged_mount(world).fstype == fstype


@pytest.mark.parametrize("fstype", FSTYPES)
async def test_a_device_holding_the_filesystem_asked_for_is_mounted_as_it_is(
    world: FakeWorld, fstype: str
) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).signature = Signature(fstype=fstype)
    world.fs.disk(dev.path).zeros = False
    await world.stage(fstype=fstype)
    assert world.fs.formatted == [] and _staged_mount(world).fstype == fstype


@pytest.mark.parametrize(
    ("holds", "asked"), [("ext4", "ext3"), ("ext3", "ext4"), ("xfs", "ext3"), ("ext3", "xfs")]
)
async def test_another_filesystem_than_the_one_asked_for_is_refused_untouched(
    world: FakeWorld, holds: str, asked: str
) -> None:
    """The rule for a filesystem-type mismatch holds between ext3 and ext4 too: an ext4 is not
    mounted as ext3 (nor the reverse), and never formatted."""
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).signature = Signature(fstype=holds)
    world.fs.disk(dev.path).zeros = False
    for origin in (None, Origin.BLANK):
        with pytest.raises(FailedPreconditionError, match=f"holds '{holds}', not {asked}"):
            await world.stage(fstype=asked, origin=origin)
    assert world.fs.formatted == [] and not world.mounted(world.staging())


@pytest.mark.parametrize(("first", "then"), [("ext4", "ext3"), ("ext3", "ext4")])
async def test_staged_again_as_the_other_ext_is_refused(
    world: FakeWorld, first: str, then: str
) -> None:
    world.devices.attach(VOLUME)
    await world.stage(fstype=first)
    with pytest.raises(AlreadyExistsError, match=f"as {first}, not {then}"):
        await world.stage(fstype=then)
    assert _staged_mount(world).fstype == first


@dataclass
class Growing(FakeFilesystems):
    """Filesystems smaller than their device until grown; each growth is recorded with whether
    the volume was mounted at the time."""

    mounter: FakeMounter | None = None
    grown: list[tuple[str, str]] = field(default_factory=list)  # (fstype, "mounted"/"unmounted")

    async def needs_growth(self, device: str, fstype: str) -> bool:
        return not self.grown

    async def grow_mounted(self, device: str, fstype: str, mount_point: str) -> None:
        assert self.mounter is not None and await self.mounter.mounts_at(mount_point)
        self.grown.append((fstype, "mounted"))

    async def grow_unmounted_ext4(self, device: str) -> None:
        assert self.mounter is not None
        assert not [m for m in self.mounter.table if m.source == device]
        fstype = self.disk(device).signature.fstype
        self.grown.append((fstype, "unmounted"))


@pytest.mark.parametrize(
    ("fstype", "online", "how"),
    [
        ("ext4", True, "mounted"),
        ("ext4", False, "unmounted"),
        ("ext3", True, "mounted"),
        ("ext3", False, "unmounted"),
        ("xfs", False, "mounted"),  # xfs_growfs needs no CAP_SYS_RESOURCE
    ],
)
async def test_a_larger_disk_grows_its_filesystem_at_stage(
    tmp_path: Path, fstype: str, online: bool, how: str
) -> None:
    """Offline expansion re-created the disk larger: stage grows the filesystem, online, or,
    for ext4 and ext3 without CAP_SYS_RESOURCE (resize2fs's online growth needs it), with
    e2fsck and resize2fs before mounting."""
    world = FakeWorld(tmp_path)
    world.fs = filesystems = Growing(mounter=world.mounter)
    world.online_ext4_growth = online
    world.restart()
    world.holding(fstype)
    staging = await world.stage(fstype=fstype, disk_id=None)
    assert filesystems.grown == [(fstype, how)] and filesystems.formatted == []
    assert await world.ops.expand(VOLUME, staging) == 1 << 30  # nothing left to grow
    assert filesystems.grown == [(fstype, how)]
    filesystems.grown.clear()  # smaller again: NodeExpandVolume grows it online, or says why not
    if how == "mounted":
        await world.ops.expand(VOLUME, staging)
        assert filesystems.grown == [(fstype, "mounted")]
    else:
        with pytest.raises(FailedPreconditionError, match=f"{fstype} .*CAP_SYS_RESOURCE"):
            await world.ops.expand(VOLUME, staging)
        assert filesystems.grown == []


def _hold(disk: Disk) -> None:
    disk.held = True  # a mount elsewhere, or another mkfs still running


def _make_xfs(disk: Disk) -> None:
    disk.signature = Signature(fstype="xfs")  # someone's mkfs, finished: nothing holds it


@pytest.mark.parametrize(
    ("meanwhile", "refusal"),
    [(_hold, "held by something else"), (_make_xfs, "xfs appeared on it while it waited")],
    ids=["device-held", "filesystem-made"],
)
async def test_what_happened_while_waiting_for_a_mkfs_slot_is_seen_and_left_alone(
    world: FakeWorld, meanwhile: Callable[[Disk], None], refusal: str
) -> None:
    """The checks passed, then the volume waited for a mkfs slot: whatever took the device or
    wrote a filesystem on it in the meantime is seen again (held check, blkid) right before
    mkfs."""
    busy = [f"csi-{i:016x}" for i in range(MKFS_CONCURRENCY)]
    for volume in busy:
        world.devices.attach(volume)
    dev = world.devices.attach(VOLUME)
    world.fs.mkfs_gate = asyncio.Event()
    holders = [asyncio.ensure_future(world.stage(v, name=v)) for v in busy]
    await _until(lambda: world.fs.mkfs_running == MKFS_CONCURRENCY)  # every slot taken
    waiting = asyncio.ensure_future(world.stage())
    await _until(lambda: world.fs.zero_checks_answered == len(busy) + 1)  # its checks passed
    assert not waiting.done()
    meanwhile(world.fs.disk(dev.path))
    world.fs.mkfs_gate.set()
    with pytest.raises(FailedPreconditionError, match=refusal):
        await asyncio.wait_for(waiting, GUARD)
    await asyncio.gather(*holders)
    assert (dev.path, "ext4") not in world.fs.formatted
    assert (await world.store.load(VOLUME)).history == ""


async def test_an_interrupted_mkfs_on_a_disk_born_blank_is_formatted_again(
    world: FakeWorld,
) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.interrupt_next_mkfs = True
    with pytest.raises(MkfsInterruptedError):
        await _staged_with(world, Origin.BLANK)
    assert (await world.store.load(VOLUME)).history == MKFS_STARTED
    assert not world.fs.disk(dev.path).zeros  # the wedge: no signature, not zeros
    await _staged_with(world, Origin.BLANK)
    assert world.fs.formatted == [(dev.path, "ext4")]
    assert (await world.store.load(VOLUME)).history == MKFS_DONE


@pytest.mark.parametrize("origin", [None, Origin.SNAPSHOT, Origin.VOLUME, Origin.STATIC])
async def test_an_interrupted_mkfs_without_the_controllers_word_stays_refused(
    world: FakeWorld, origin: Origin | None
) -> None:
    world.devices.attach(VOLUME)
    world.fs.interrupt_next_mkfs = True
    with pytest.raises(MkfsInterruptedError):
        await _staged_with(world, Origin.BLANK)
    with pytest.raises(FailedPreconditionError, match="not blank"):
        await _staged_with(world, origin)
    assert world.fs.formatted == []


async def test_a_disk_that_carried_a_filesystem_is_never_blank_again(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    await _staged_with(world, Origin.BLANK)
    await world.ops.unstage(VOLUME, world.staging())
    disk = world.fs.disk(dev.path)
    disk.signature, disk.zeros = Signature(), True  # superblock wiped, samples all zero
    with pytest.raises(FailedPreconditionError, match="complete filesystem"):
        await _staged_with(world, Origin.BLANK)
    assert world.fs.formatted == [(dev.path, "ext4")]


async def test_a_disk_used_raw_is_never_formatted_on_the_controllers_word(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.interrupt_next_mkfs = True
    with pytest.raises(MkfsInterruptedError):
        await _staged_with(world, Origin.BLANK)
    await world.stage(block=True)  # then handed out as a raw device
    await world.ops.unstage(VOLUME, world.staging())
    assert (await world.store.load(VOLUME)).history == RAW
    with pytest.raises(FailedPreconditionError, match="raw block data"):
        await _staged_with(world, Origin.BLANK)
    assert world.fs.formatted == [] and world.fs.disk(dev.path).signature == Signature()


# ---- issue 24, finding 1: the history belongs to the disk, not to its name ----


def _name_given_to_a_new_disk(world: FakeWorld) -> str:
    """VOLUME's disk deleted and a new one created under the same name (same volume ID, another
    disk UUID): the device the node then finds; blank, unless the caller writes to it."""
    world.devices.detach(VOLUME)
    return world.devices.attach(VOLUME).path


async def test_an_interrupted_mkfs_never_vouches_for_a_new_disk_of_the_same_name(
    world: FakeWorld,
) -> None:
    world.devices.attach(VOLUME)
    world.fs.interrupt_next_mkfs = True
    with pytest.raises(MkfsInterruptedError):
        await world.stage(origin=Origin.BLANK)  # disk DISK: the record says mkfs-started
    new = _name_given_to_a_new_disk(world)
    world.fs.disk(new).zeros = False  # someone's raw data, no signature
    for disk_id in (NEW_DISK, None):  # the new disk, or a context that names none
        with pytest.raises(FailedPreconditionError, match="not blank"):
            await world.stage(origin=Origin.BLANK, disk_id=disk_id)
    assert world.fs.formatted == []


async def test_a_new_disk_under_a_formatted_disks_name_is_formatted(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage(origin=Origin.BLANK)
    await world.ops.unstage(VOLUME, world.staging())
    assert (await world.store.load(VOLUME)).history == MKFS_DONE
    new = _name_given_to_a_new_disk(world)
    await world.stage(origin=Origin.BLANK, disk_id=NEW_DISK)
    assert world.fs.formatted[-1] == (new, "ext4")
    record = await world.store.load(VOLUME)
    assert (record.history, record.disk_id) == (MKFS_DONE, NEW_DISK)


async def test_a_history_without_a_disk_id_still_refuses_and_vouches_for_nothing(
    world: FakeWorld,
) -> None:
    dev = world.devices.attach(VOLUME)
    for history in (MKFS_DONE, RAW):  # a record of an earlier version: no disk UUID in it
        await world.store.save(VolumeRecord(VOLUME, VOLUME, history, "ext4"))
        with pytest.raises(FailedPreconditionError, match="this node recorded"):
            await world.stage(origin=Origin.BLANK, disk_id=NEW_DISK)
    await world.store.save(VolumeRecord(VOLUME, VOLUME, MKFS_STARTED, "ext4"))
    world.fs.disk(dev.path).zeros = False
    with pytest.raises(FailedPreconditionError, match="not blank"):
        await world.stage(origin=Origin.BLANK, disk_id=DISK)
    assert world.fs.formatted == []


async def test_a_device_held_by_a_running_mkfs_is_left_alone(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).held = True
    with pytest.raises(FailedPreconditionError, match="held by something else"):
        await _staged_with(world, Origin.BLANK)
    assert world.fs.formatted == []


# ---- finding 5: one serial, one volume ----


async def test_a_second_volume_with_the_same_serial_is_refused(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)  # TWIN resolves to this very device
    await world.stage(VOLUME, "a")
    for call in (
        world.stage(TWIN, "b"),
        world.ops.publish(
            TWIN,
            world.staging("a"),
            world.target("b"),
            block=False,
            read_only=False,
            mount_flags=[],
            single_writer=False,
        ),
    ):
        with pytest.raises(FailedPreconditionError, match=f"volume {VOLUME} already uses"):
            await call
    assert not world.mounted(world.staging("b"))
    with pytest.raises(FailedPreconditionError, match="left mounted"):
        await world.ops.unstage(TWIN, world.staging("a"))
    assert world.mounted(world.staging("a"))
    await world.ops.unstage(VOLUME, world.staging("a"))
    await world.stage(TWIN, "b")  # free now
    assert world.fs.formatted == [("/dev/nvme1n1", "ext4")]  # formatted once, by VOLUME


async def test_a_record_from_an_earlier_boot_does_not_hold_the_serial(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage(VOLUME, "a", block=True)
    world.reboot()
    await world.stage(TWIN, "b", block=True)


# ---- finding 6: serials are text ----


async def test_messages_show_serials_as_text(world: FakeWorld) -> None:
    world.devices.attach(VOLUME)
    await world.stage(VOLUME, "a")
    with pytest.raises(FailedPreconditionError) as caught:
        await world.stage(TWIN, "b")
    assert "serial 'csi-0123456789abcdef'" in str(caught.value)
    world.devices.detach(VOLUME)
    stats = await world.ops.stats(VOLUME, world.staging("a"))
    assert stats.abnormal is not None
    assert "b'" not in stats.abnormal and "'csi-0123456789abcdef'" in stats.abnormal


# ---- the guard and the volume ID live in NodeOps ----


async def test_nodeops_refuses_a_second_operation_on_a_serial_in_flight(world: FakeWorld) -> None:
    """The per-volume guard is NodeOps' own: while VOLUME's stage formats the device, every
    other operation on that device, under either ID of its serial, is refused at once (ABORTED),
    while a volume on another device goes on; once the stage is done, the twin is refused for
    the serial in use, not merely busy."""
    dev = world.devices.attach(VOLUME)
    other = world.devices.attach(OTHER)
    world.fs.disk(other.path).signature = Signature(fstype="ext4")  # mounted without mkfs
    world.fs.mkfs_gate = asyncio.Event()
    first = asyncio.ensure_future(world.stage(VOLUME, "a"))
    await _until(lambda: world.fs.mkfs_running == 1)
    refused = [
        world.stage(TWIN, "b"),
        world.stage(VOLUME, "a"),
        world.ops.unstage(VOLUME, world.staging("a")),
        world.publish(TWIN, "b"),
        world.ops.unpublish(VOLUME, world.target("a")),
        world.ops.expand(TWIN, world.staging("a")),
    ]
    for call in refused:
        with pytest.raises(
            AbortedError, match="already in progress for serial:csi-0123456789abcdef"
        ):
            await asyncio.wait_for(call, GUARD)
    await asyncio.wait_for(world.stage(OTHER, "c"), GUARD)  # another serial: not held up
    assert not first.done()
    world.fs.mkfs_gate.set()
    await asyncio.wait_for(first, GUARD)
    with pytest.raises(FailedPreconditionError, match=f"volume {VOLUME} already uses"):
        await world.stage(TWIN, "b")
    assert world.fs.formatted == [(dev.path, "ext4")]


async def test_a_cancelled_stage_keeps_its_serial_until_its_work_ends(world: FakeWorld) -> None:
    """A caller that gives up (kubelet's deadline) does not end the mkfs under it, and the serial
    stays held until the mkfs is done: a retry never races the half-finished stage."""
    dev = world.devices.attach(VOLUME)
    world.fs.mkfs_gate = asyncio.Event()
    caller = asyncio.ensure_future(world.stage(VOLUME, "a"))
    await _until(lambda: world.fs.mkfs_running == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    with pytest.raises(AbortedError):
        await asyncio.wait_for(world.stage(VOLUME, "a"), GUARD)
    world.fs.mkfs_gate.set()
    await _until(lambda: world.mounted(world.staging("a")))  # the abandoned stage's end
    await asyncio.wait_for(_retry_while_aborted(lambda: world.stage(VOLUME, "a")), GUARD)
    assert world.fs.formatted == [(dev.path, "ext4")]  # the retry found it done
    assert (await world.store.load(VOLUME)).history == MKFS_DONE


async def _retry_while_aborted(call: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await call()
            return
        except AbortedError:
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("bad", ["../../etc", "UPPER", "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"])
async def test_nodeops_refuses_an_id_that_is_not_a_disk_name(world: FakeWorld, bad: str) -> None:
    """Every NodeOps operation checks the volume ID itself (the servicer leaves it here):
    NotFoundError before the guard, a record or a mount is touched."""
    path = world.staging()
    calls = [
        world.stage(bad),
        world.ops.unstage(bad, path),
        world.publish(bad),
        world.ops.unpublish(bad, world.target()),
        world.ops.stats(bad, path),
        world.ops.expand(bad, path),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match="volume IDs are Oxide names"):
            await call
    assert not list((world.root / "state").glob("*.json"))
    assert world.mounter.calls == []
