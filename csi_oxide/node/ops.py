"""Node operations at the domain level, each idempotent: stage, publish, stats, expand.

The node acts only on proof, and keeps the proof itself (``state.py``: a record per volume on the
host, written and fsynced BEFORE anything is mounted or formatted, removed after unmounting):

- **Unmount and delete.** A mount is unmounted only when the volume's record names its path
  (compared after realpath), was made in the current boot, and the mount's identity in mountinfo
  (device major:minor, root, filesystem type) is the one recorded. A publish target file or
  directory is deleted only when the record says this plugin created it, and it is still that
  inode (if the plugin died between recording its intent to create the target and creating it,
  the record has no inode: then only an empty directory or empty file of the recorded kind
  qualifies). Anything else at the path is left alone with FAILED_PRECONDITION; nothing mounted
  and nothing recorded is OK. The volume's device being present or not changes nothing.
- **Format.** Never over any signature ``blkid -p`` finds. Without one, only when (a) the device
  reads as zeros at samples spread over all of it (``zerocheck.zero_check_ranges``), or (b) the
  controller says the disk was created blank (``publish_context`` origin ``blank``) AND this
  node's record shows that this plugin itself started mkfs on that very disk (the same Oxide
  disk UUID, from ``publish_context``) after proving it blank, and that mkfs never completed. A
  record of a completed mkfs, or of raw block use, means the disk holds data: never blank again.
  The history belongs to the disk, not to its name: a new disk under a reused name starts with
  none (``VolumeRecord.for_disk``). Nothing is decided while something else holds the device
  open exclusively (a mount elsewhere, a mkfs still running). The rules decide in
  ``history.py``; here the evidence is gathered, and each history saved before the step it
  stands for: ``mkfs-started`` before mkfs writes a byte, ``mkfs-done`` (with the staging
  mount's record, in one write) before the mount lets anything be written into the filesystem.
- **One serial, one volume.** The device is found by NVMe serial (the first 20 bytes of the volume
  ID); a volume whose serial another volume already uses on this node (recorded staged or
  published in this boot) is refused.

**IDs and the guard live here**, as they do in ``ControllerOps``: every public operation that names
a volume first checks the ID with ``volumes.require_id`` (NotFoundError for anything that is not an
Oxide disk name, before anything is touched), and each one that changes something (stage, unstage,
publish, unpublish, expand) runs under the node's per-volume guard, an ``InFlight`` built in
``csi_oxide.wiring`` and keyed by the NVMe serial the ID resolves to: a second operation on the same
device while one is in flight is refused at once (AbortedError, ABORTED), also for another ID
sharing that serial. The gRPC servicer only parses the request and makes one call.

Stage (filesystem volumes) mounts what is on the device, formatting first only as above; a disk
re-created larger by offline expansion has its filesystem grown at the next stage: after mounting
(online), except ext4 and ext3 when this process lacks CAP_SYS_RESOURCE, which are then grown
just before mounting. Raw block volumes need no staging beyond the device being there (and a
record); publish bind-mounts the device node onto a file, or, for a read-only publish, a read-only
view of the device (``node.views``: a read-only bind of a device node still lets the device be
written).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import stat
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from csi_oxide.contract.publish_context import UNKNOWN_BIRTH, Birth
from csi_oxide.contract.volumes import require_id
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from csi_oxide.node import fs
from csi_oxide.node.devices import BlockDevice, DeviceFinder, serial_text
from csi_oxide.node.fs import Filesystems
from csi_oxide.node.history import (
    MKFS_DONE,
    MKFS_STARTED,
    check_formattable,
    handed_out_raw,
    mkfs_finished,
    vouched_blank,
)
from csi_oxide.node.mount import Mounter
from csi_oxide.node.mountinfo import Mount
from csi_oxide.node.state import Made, MountIdentity, MountRecord, RecordStore, VolumeRecord
from csi_oxide.node.views import ReadOnlyViews

MKFS_CONCURRENCY = 2
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VolumeStats:
    """Usage of a staged or published volume; ``abnormal`` says what is wrong, if anything."""

    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    available_inodes: int
    used_inodes: int
    block: bool
    abnormal: str | None


class NodeOps:
    """The node's data path over its seams: devices, filesystems, mounts and records."""

    def __init__(
        self,
        devices: DeviceFinder,
        mounter: Mounter,
        filesystems: Filesystems,
        records: RecordStore,
        *,
        views: ReadOnlyViews,
        inflight: InFlight,
        online_ext4_growth: bool | None = None,
    ) -> None:
        """``views``: the read-only views a read-only raw block publish binds. ``inflight``: the
        per-volume guard (built in ``csi_oxide.wiring``; the node's never cuts an operation: a
        mkfs cut in the middle is not something a retry can tell from a filesystem).
        ``online_ext4_growth``: whether resize2fs may grow a mounted ext4 or ext3 (None: find
        out from this process's capabilities). Without it, stage grows them before mounting."""
        self._devices = devices
        self._mounter = mounter
        self._fs = filesystems
        self._records = records
        self._views = views
        self._online_ext4 = (
            fs.can_grow_ext4_online() if online_ext4_growth is None else online_ext4_growth
        )
        self._format_slots = asyncio.Semaphore(MKFS_CONCURRENCY)
        self._inflight = inflight

    async def max_volumes(self) -> int:
        """Volumes this node can still take: 12 minus non-CSI NVMe disks (never negative)."""
        return await self._devices.max_volumes()

    # ---- the guard and the records ----

    async def _guarded(self, rpc: str, volume_id: str, work: Awaitable[T]) -> T:
        """``work`` under the guard of the device ``volume_id`` resolves to (its NVMe serial):
        AbortedError while another operation on that device is in flight. ``volume_id`` has
        been checked (``require_id``) before ``work`` was made. The work runs on when its caller
        is cancelled, and the serial stays held until it ends (see ``InFlight.run``)."""
        return await self._inflight.run(
            [f"serial:{serial_text(volume_id)}"], f"{rpc} of {volume_id}", work
        )

    async def _claim_serial(self, volume_id: str) -> None:
        """FailedPreconditionError when another volume with the same serial is in use here.

        The check and the record that follows it (stage, publish) are one step for the serial:
        every operation that writes or removes a stage or publish record runs under the guard
        keyed by the serial (``_guarded``), which ``InFlight.run`` marks busy with no await
        between its check and its mark, and keeps busy until the work ends even when the caller
        is cancelled; one node plugin process holds the record directory (``FileRecordStore``'s
        lock). So no other ID of this serial can record itself between this check and the
        record, in this process or another."""
        serial = serial_text(volume_id)
        boot = self._records.boot
        for other in await self._records.sharing_serial(serial):
            if other.volume_id != volume_id and other.serial == serial and other.in_use(boot):
                raise FailedPreconditionError(
                    f"volume {volume_id} resolves to NVMe serial {serial!r}, which volume "
                    f"{other.volume_id} already uses on this node (staged or published); two "
                    "volumes can never share one device: unstage the other first"
                )

    def _ours(self, record: MountRecord | None, top: Mount) -> bool:
        """True when ``top`` provably is the mount ``record`` describes."""
        return (
            record is not None
            and record.identity is not None
            and record.boot == self._records.boot
            and record.identity.matches(top)
        )

    async def _unmount_ours(self, volume_id: str, path: str, record: MountRecord | None) -> None:
        """Unmount the mounts at ``path`` while each provably is ``record``'s; refuse the rest."""
        while mounted := await self._mounter.mounts_at(path):
            top = mounted[-1]
            if not self._ours(record, top):
                raise FailedPreconditionError(
                    f"{path} has {top.source} ({top.fstype}, {top.major_minor}) mounted, which is "
                    f"not volume {volume_id}'s as far as this plugin can prove (no record of "
                    "mounting it there in this boot); it was left mounted"
                )
            await self._mounter.unmount(path)

    # ---- stage ----

    async def stage(
        self,
        volume_id: str,
        staging: str,
        *,
        fstype: str,
        mount_flags: Sequence[str],
        block: bool,
        birth: Birth = UNKNOWN_BIRTH,
    ) -> None:
        """Make the volume ready on this node (mount its filesystem at ``staging``).

        ``birth``: which disk the controller says is behind the volume and how it was born
        (from ``publish_context``; unknown parts prove nothing).
        """
        require_id(volume_id)
        await self._guarded(
            "NodeStageVolume",
            volume_id,
            self._stage(volume_id, staging, fstype, mount_flags, block, birth),
        )

    async def _stage(
        self,
        volume_id: str,
        staging: str,
        fstype: str,
        mount_flags: Sequence[str],
        block: bool,
        birth: Birth,
    ) -> None:
        fstype = "" if block else fs.check_fstype(fstype)
        # The claim, the device and the record only read: looked up at once (the device scan
        # and the record reads overlap), their answers taken in the order they are checked, so
        # the failure reported is the one a look after the other would have reported (a claim
        # refused does not wait for a device that is not there: that wait is cancelled).
        find = asyncio.ensure_future(self._devices.find(volume_id))  # first: the longest path
        claim = asyncio.ensure_future(self._claim_serial(volume_id))
        load = asyncio.ensure_future(self._records.load(volume_id))
        # A filesystem volume that may be formatted (not a read-only disk) needs the zero check
        # of a fresh disk, its longest step by far: it starts as soon as the device is found,
        # its reads under way while the rest is looked up and checked. It only reads, and is
        # stopped as soon as it is not needed (a refusal, the volume already mounted, a
        # signature found).
        proving = not (block or birth.read_only)
        zero_check: asyncio.Future[bool] | None = None
        try:
            await asyncio.wait([claim, find], return_when=asyncio.FIRST_COMPLETED)
            if proving and _succeeded(find):
                zero_check = asyncio.ensure_future(self._fs.reads_as_zeros(find.result().path))
            await claim
            device = await find
            loaded = await load
            if proving and zero_check is None:
                zero_check = asyncio.ensure_future(self._fs.reads_as_zeros(device.path))
            await self._stage_on(
                device, loaded, staging, fstype, mount_flags, block, birth, zero_check
            )
        finally:
            await _settle(claim, find, load, *([zero_check] if zero_check else []))

    async def _stage_on(
        self,
        device: BlockDevice,
        loaded: VolumeRecord,
        staging: str,
        fstype: str,
        mount_flags: Sequence[str],
        block: bool,
        birth: Birth,
        zero_check: asyncio.Future[bool] | None,
    ) -> None:
        """``_stage`` once the volume's serial is claimed, its device found and its record
        ``loaded``; ``zero_check``: the device's zero check, under way (None: not needed)."""
        volume_id = loaded.volume_id
        real = await asyncio.to_thread(_staging_path, staging, block)
        record = loaded.for_disk(birth.disk_id)
        if record.stage is not None and record.stage.path != real:
            if await self._still_mounted(record.stage):
                raise FailedPreconditionError(
                    f"volume {volume_id} is already staged at {record.stage.path}, not {real}"
                )
            record = replace(record, stage=None)
        boot = self._records.boot
        if block:
            history = handed_out_raw(record.history)
            stage = MountRecord(real, boot, True, None)
            await self._records.save(replace(record, history=history, stage=stage))
            return
        mounted = await self._mounter.mounts_at(real)
        if mounted:
            if zero_check is not None:
                await _settle(zero_check)  # staged already: nothing to prove, reads stopped
            top = mounted[-1]
            if not self._ours(record.stage, top):
                raise AlreadyExistsError(
                    f"{staging} already has something mounted ({top.source}, {top.major_minor}) "
                    f"that this plugin did not mount there for volume {volume_id}"
                )
            if top.fstype != fstype:
                raise AlreadyExistsError(
                    f"volume {volume_id} is already staged at {staging} as {top.fstype}, "
                    f"not {fstype}"
                )
            if top.major_minor != device.major_minor:
                raise FailedPreconditionError(
                    f"volume {volume_id} is staged at {staging} from a device that is gone "
                    f"({top.major_minor}); unstage it first"
                )
        elif birth.read_only:  # never formatted, never grown
            await self._check_read_only_fs(volume_id, device, fstype)
            await self._mount_staged(record, device, fstype, real, mount_flags, read_only=True)
            return
        else:
            record, fresh = await self._prepare(record, device, fstype, birth, zero_check)
            if not fresh and fstype in fs.EXT_FAMILY and not self._online_ext4:
                async with self._format_slots:
                    await self._grow_offline(volume_id, device, fstype)
            await self._mount_staged(record, device, fstype, real, mount_flags, read_only=False)
            if fresh:
                return
        if birth.read_only:
            return
        # Offline expansion re-created a larger disk: grow now, online (also on a retry that
        # finds the volume mounted by an earlier call which failed while growing).
        await self._grow(volume_id, device, fstype, real)

    async def _mount_staged(
        self,
        record: VolumeRecord,
        device: BlockDevice,
        fstype: str,
        real: str,
        mount_flags: Sequence[str],
        *,
        read_only: bool,
    ) -> None:
        """Record the staging mount, then mount the device there (read-only: without a
        journal or log replay, see ``fs.READ_ONLY_MOUNT_OPTIONS``)."""
        identity = MountIdentity(device.major_minor, "/", fstype)
        stage = MountRecord(real, self._records.boot, False, identity)
        await self._records.save(replace(record, stage=stage))
        options = [*fs.MOUNT_OPTIONS[fstype], *mount_flags]
        if read_only:
            options += fs.READ_ONLY_MOUNT_OPTIONS[fstype]
        await self._mounter.mount(device.path, real, fstype, options)

    async def _check_read_only_fs(self, volume_id: str, device: BlockDevice, fstype: str) -> None:
        """A read-only disk must already hold ``fstype``: it is never formatted."""
        found = await self._fs.probe(device.path)
        if found.fstype != fstype:
            what = found.fstype or found.pttype or found.usage or "no filesystem"
            raise FailedPreconditionError(
                f"volume {volume_id} ({device.path}) is a read-only disk holding {what!r}, not "
                f"{fstype}; a read-only disk is never formatted (restore it from a snapshot of "
                f"a {fstype} volume, or use the matching fsType)"
            )

    async def _still_mounted(self, record: MountRecord) -> bool:
        mounted = await self._mounter.mounts_at(record.path)
        return bool(mounted) and self._ours(record, mounted[-1])

    async def _grow(self, volume_id: str, device: BlockDevice, fstype: str, mounted: str) -> None:
        """Grow the filesystem mounted at ``mounted`` when its device is larger."""
        if not await self._fs.needs_growth(device.path, fstype):
            return
        if fstype in fs.EXT_FAMILY and not self._online_ext4:
            raise FailedPreconditionError(
                f"the {fstype} filesystem of volume {volume_id} is smaller than its disk but "
                "cannot grow while mounted: the node plugin lacks CAP_SYS_RESOURCE (run it "
                "privileged); it grows at its next NodeStageVolume instead"
            )
        await self._devices.verify(device, volume_id)
        await self._fs.grow_mounted(device.path, fstype, mounted)

    async def _grow_offline(self, volume_id: str, device: BlockDevice, fstype: str) -> None:
        """Grow an unmounted ext4 or ext3 when its device is larger (no online growth here)."""
        if await self._fs.needs_growth(device.path, fstype):
            await self._devices.verify(device, volume_id)
            await self._fs.grow_unmounted_ext4(device.path)

    async def _prepare(
        self,
        record: VolumeRecord,
        device: BlockDevice,
        fstype: str,
        birth: Birth,
        zero_check: asyncio.Future[bool] | None,
    ) -> tuple[VolumeRecord, bool]:
        """Format the device if (and only if) that is proven safe; the updated record and
        whether it was formatted; ``check_formattable`` (``history.py``) decides, by the rule
        of the module docstring.

        The checks only read, and run for every volume at once (on a network disk the zero
        check waits on thousands of reads); mkfs, which writes, takes one of the node's
        ``MKFS_CONCURRENCY`` slots, and the device must still be free, still blank to blkid and
        still the volume's when it has one. ``mkfs-started`` is saved (fsynced) before mkfs
        writes a byte. After a mkfs the record returned says ``mkfs-done`` but is NOT saved
        yet: the caller saves it together with the staging mount's record, in the one durable
        write that precedes the mount (``_mount_staged``), so the disk is recorded as holding a
        complete filesystem before anything can be written into it. (A crash between mkfs and
        that write leaves ``mkfs-started`` and an unmounted filesystem: the next stage finds
        the filesystem and completes the history, ``mkfs_finished``.)

        ``zero_check``: the device's zero check, already under way (None: it starts here)."""
        volume_id = record.volume_id
        where = f"volume {volume_id} ({device.path})"
        if zero_check is None:
            zero_check = asyncio.ensure_future(self._fs.reads_as_zeros(device.path))
        found, zeros = await self._probe_and_zero_check(where, device, zero_check)
        if found.fstype == fstype:
            if mkfs_finished(record.history):  # that mkfs did finish: its superblock is there
                record = replace(record, history=MKFS_DONE, history_fstype=fstype)
                await self._records.save(record)
            return record, False
        vouched = vouched_blank(birth, record.history, record.disk_id)
        check_formattable(where, record.history, found, fstype, zeros=zeros, vouched=vouched)
        async with self._format_slots:
            # Again, as the wait for a slot may be long: still free, still blank to blkid, still
            # the volume's device. The three only read: they run at once, and all three must
            # pass (in that order of refusal) before anything is written.
            held, appeared, same = await asyncio.gather(
                self._fs.held_exclusively(device.path),
                self._fs.probe(device.path),
                self._devices.verify(device, volume_id),
                return_exceptions=True,
            )
            _refuse_if_held(where, _answer(held))
            what = _answer(appeared)
            if what.found:
                raise FailedPreconditionError(
                    f"{where}: {what.fstype or what.pttype or what.usage} appeared on it while "
                    "it waited to be formatted; it was left untouched"
                )
            _answer(same)  # still the volume's device (a FailedPreconditionError otherwise)
            record = replace(record, history=MKFS_STARTED, history_fstype=fstype)
            await self._records.save(record)  # fsynced before mkfs writes a byte
            await self._fs.mkfs(device.path, fstype)
        return replace(record, history=MKFS_DONE), True  # saved with the stage, before mounting

    async def _probe_and_zero_check(
        self, where: str, device: BlockDevice, zero_check: asyncio.Future[bool]
    ) -> tuple[fs.Signature, bool]:
        """What ``blkid -p`` finds on the device, and whether it reads as zeros (``zero_check``,
        under way), once nothing holds the device (FailedPreconditionError otherwise). All three
        only read: the zero check (thousands of reads, the longest) started first, and it is
        abandoned once the device is held or the probe finds a signature, whose answer does not
        depend on it (a re-stage of a formatted disk then costs almost no reads); ``zeros`` is
        then False."""
        try:
            _refuse_if_held(where, await self._fs.held_exclusively(device.path))
            found = await self._fs.probe(device.path)
            zeros = False if found.found else await zero_check
        finally:
            await _settle(zero_check)  # an answer not needed: stopped
        return found, zeros

    async def unstage(self, volume_id: str, staging: str) -> None:
        """Unmount what this plugin mounted at ``staging`` for the volume (see the module
        docstring); done when nothing is mounted there."""
        require_id(volume_id)
        await self._guarded("NodeUnstageVolume", volume_id, self._unstage(volume_id, staging))

    async def _unstage(self, volume_id: str, staging: str) -> None:
        real = await asyncio.to_thread(os.path.realpath, staging)
        record = await self._records.load(volume_id)
        stage = record.stage if record.stage is not None and record.stage.path == real else None
        await self._unmount_ours(volume_id, real, stage)
        if stage is not None:
            await self._records.save(replace(record, stage=None))

    # ---- publish ----

    async def publish(
        self,
        volume_id: str,
        staging: str,
        target: str,
        *,
        block: bool,
        read_only: bool,
        mount_flags: Sequence[str],
        single_writer: bool,
    ) -> None:
        """Bind the staged filesystem (or the device) at ``target``."""
        require_id(volume_id)
        await self._guarded(
            "NodePublishVolume",
            volume_id,
            self._publish(volume_id, staging, target, block, read_only, mount_flags, single_writer),
        )

    async def _publish(
        self,
        volume_id: str,
        staging: str,
        target: str,
        block: bool,
        read_only: bool,
        mount_flags: Sequence[str],
        single_writer: bool,
    ) -> None:
        await self._claim_serial(volume_id)
        device = await self._devices.find_now(volume_id)
        if device is None:
            raise FailedPreconditionError(f"volume {volume_id} is not attached to this node")
        real_target, real_staging = await asyncio.to_thread(
            lambda: (os.path.realpath(target), os.path.realpath(staging))
        )
        record = await self._records.load(volume_id)
        if block:
            source = device.path
            identity = bound_identity(await self._mounter.mounts(), device.path)
        else:
            source = real_staging
            identity = await self._staged_identity(record, device, real_staging)
        entry = record.publish.get(real_target)
        existing = await self._mounter.mounts_at(real_target)
        if existing:
            top = existing[-1]
            if entry is None or not self._ours(entry, top):
                raise AlreadyExistsError(
                    f"{target} already has something mounted ({top.source}, {top.major_minor}) "
                    f"that this plugin did not publish there for volume {volume_id}"
                )
            if entry.block != block or (entry.view is None and entry.identity != identity):
                raise AlreadyExistsError(f"{target} already holds another publish of the volume")
            if entry.read_only != read_only:
                raise AlreadyExistsError(
                    f"volume is already published at {target} "
                    f"{'read-only' if entry.read_only else 'read-write'}; the request differs"
                )
            if read_only and not top.read_only:
                await self._mounter.make_read_only(real_target, mount_flags)  # a bind half done
            return
        if single_writer:
            await self._refuse_second_writer(device, real_staging, real_target)
        view = self._views.anchor(volume_id, real_target) if block and read_only else None
        if entry is not None and entry.view is not None and entry.view != view:
            await self._views.close(entry.view)  # made for an earlier request that differed
        pending = None if view else identity  # a view's bind: known once the view exists
        made = await self._ensure_target(record, entry, real_target, block, pending, read_only)
        entry = MountRecord(real_target, self._records.boot, block, identity, read_only, made)
        if view is not None:
            source, entry = await self._open_view(volume_id, entry, view, device)
        record = await self._records.load(volume_id)
        await self._records.save(record.with_publish(real_target, entry))
        await self._mounter.bind(source, real_target, read_only=read_only, options=mount_flags)

    async def _open_view(
        self, volume_id: str, entry: MountRecord, view: str, device: BlockDevice
    ) -> tuple[str, MountRecord]:
        """The read-only view of ``device`` anchored at ``view`` (``node.views``), to bind at
        ``entry.path``, and ``entry`` with the identity that bind will have. The anchor is
        recorded before the view is made: a crash at any point leaves a record that finds it."""
        entry = replace(entry, identity=None, view=view)
        record = await self._records.load(volume_id)
        await self._records.save(record.with_publish(entry.path, entry))
        loop = await self._views.open(view, device)
        return loop, replace(entry, identity=bound_identity(await self._mounter.mounts(), loop))

    async def _staged_identity(
        self, record: VolumeRecord, device: BlockDevice, staging: str
    ) -> MountIdentity:
        stage = record.stage
        mounted = await self._mounter.mounts_at(staging)
        if (
            stage is None
            or stage.path != staging
            or stage.identity is None
            or not mounted
            or not self._ours(stage, mounted[-1])
        ):
            raise FailedPreconditionError(
                f"volume {record.volume_id} is not staged at {staging}: NodeStageVolume first"
            )
        if mounted[-1].major_minor != device.major_minor:
            raise FailedPreconditionError(
                f"volume {record.volume_id} is staged at {staging} from a device that is gone"
            )
        return stage.identity

    async def _ensure_target(
        self,
        record: VolumeRecord,
        entry: MountRecord | None,
        target: str,
        block: bool,
        identity: MountIdentity | None,
        read_only: bool,
    ) -> Made | None:
        """The target exists afterwards; what this plugin made of it (None: it was there)."""
        kind = "file" if block else "dir"
        known = entry.made if entry is not None else None
        st = await asyncio.to_thread(_lstat, target)
        if st is not None:
            if known is None:
                return None  # the CO made it: never ours to delete
            if known.ino is None:  # a crash right after recording the intent
                return (
                    _made_from(kind, st)
                    if await asyncio.to_thread(_is_fresh, target, st, kind)
                    else None
                )
            same_boot = entry is not None and entry.boot == self._records.boot
            return known if _same_inode(known, st, same_boot=same_boot) else None
        # Record the intent first, so that a crash right after creating it still leaves proof.
        pending = MountRecord(target, self._records.boot, block, identity, read_only, Made(kind))
        await self._records.save(record.with_publish(target, pending))
        st = await asyncio.to_thread(_make_target, target, block)
        return _made_from(kind, st)

    async def _refuse_second_writer(self, device: BlockDevice, staging: str, target: str) -> None:
        mounts = await self._mounter.mounts_of(device.major_minor, device.path)
        others = [m for m in mounts if m.mount_point not in (staging, target)]
        if others:
            raise FailedPreconditionError(
                f"the volume is SINGLE_NODE_SINGLE_WRITER and already published at "
                f"{others[0].mount_point}"
            )

    async def unpublish(self, volume_id: str, target: str) -> None:
        """Unmount what this plugin bound at ``target`` for the volume and remove the target if
        this plugin created it; nothing mounted and nothing recorded is already unpublished."""
        require_id(volume_id)
        await self._guarded("NodeUnpublishVolume", volume_id, self._unpublish(volume_id, target))

    async def _unpublish(self, volume_id: str, target: str) -> None:
        real = await asyncio.to_thread(os.path.realpath, target)
        record = await self._records.load(volume_id)
        entry = record.publish.get(real)
        await self._unmount_ours(volume_id, real, entry)
        if entry is None:
            return
        if entry.view is not None:
            await self._views.close(entry.view)
        if entry.made is not None:
            same_boot = entry.boot == self._records.boot
            await asyncio.to_thread(_remove_target, real, entry.made, same_boot)
        await self._records.save(record.with_publish(real, None))

    # ---- stats and growth ----

    async def stats(self, volume_id: str, path: str) -> VolumeStats:
        """Usage of the volume mounted (or bound) at ``path`` (only reads: no guard)."""
        top, device = await self._mount_of(require_id(volume_id), path)
        gone = None
        if device is None:
            gone = f"the device of volume {volume_id} (serial {serial_text(volume_id)!r}) is gone"
        if await asyncio.to_thread(_is_block_file, path):
            size = await self._fs.device_size(path)
            return VolumeStats(size, 0, 0, 0, 0, 0, True, gone)
        st = await fs.statvfs(path)
        # A filesystem that went read-only (errors=remount-ro) is abnormal; a read-only volume's,
        # mounted read-only without recovery (``fs.READ_ONLY_MOUNT_OPTIONS``, which mountinfo
        # shows as ``norecovery`` for ext4, ext3 and xfs alike), is not.
        supers = top.super_options
        went_read_only = "ro" in supers and fs.NO_RECOVERY not in supers
        abnormal = gone or ("the filesystem is read-only" if went_read_only else None)
        return VolumeStats(
            total_bytes=st.f_blocks * st.f_frsize,
            available_bytes=st.f_bavail * st.f_frsize,
            used_bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
            total_inodes=st.f_files,
            available_inodes=st.f_favail,
            used_inodes=st.f_files - st.f_ffree,
            block=False,
            abnormal=abnormal,
        )

    async def expand(self, volume_id: str, path: str) -> int:
        """Grow the filesystem at ``path`` to its device; returns the device size."""
        require_id(volume_id)
        return await self._guarded("NodeExpandVolume", volume_id, self._expand(volume_id, path))

    async def _expand(self, volume_id: str, path: str) -> int:
        top, device = await self._mount_of(volume_id, path)
        if device is None:
            raise FailedPreconditionError(f"volume {volume_id} is not attached to this node")
        if await asyncio.to_thread(_is_block_file, path):
            return await self._fs.device_size(device.path)
        if "ro" in top.super_options:
            raise FailedPreconditionError(
                f"the filesystem of volume {volume_id} at {path} is mounted read-only (a "
                "read-only disk, or a filesystem that found errors); it is not grown"
            )
        await self._grow(volume_id, device, fs.check_fstype(top.fstype), path)
        return await self._fs.device_size(device.path)

    async def _mount_of(self, volume_id: str, path: str) -> tuple[Mount, BlockDevice | None]:
        """The volume's mount at ``path`` and its device (None: a device that vanished under
        the mount). NotFoundError unless the mount provably is the volume's: its device (or its
        filesystem), or a mount recorded as the volume's, a read-only view of it included."""
        if not os.path.isabs(path) or not await asyncio.to_thread(os.path.exists, path):
            raise NotFoundError(f"path {path!r} does not exist")
        mounted = await self._mounter.mounts_at(path)
        if not mounted:
            raise NotFoundError(f"volume {volume_id} is not staged or published at {path}")
        top = mounted[-1]
        device = await self._devices.find_now(volume_id)
        if device is not None and _mount_is_device(top, device, path):
            return top, device
        real = await asyncio.to_thread(os.path.realpath, path)
        record = await self._records.load(volume_id)
        for m in record.mounts():
            if m.path == real and self._ours(m, top) and (device is None or m.view is not None):
                return top, device
        raise NotFoundError(f"{path} does not hold volume {volume_id}")


def _refuse_if_held(where: str, held: bool) -> None:
    if held:
        raise FailedPreconditionError(
            f"{where} is held by something else (mounted elsewhere, or a tool such as mkfs "
            "still running on it); nothing was done: retry once it is released"
        )


def _succeeded(step: asyncio.Future[Any]) -> bool:
    """Whether ``step`` is done, with a result."""
    return step.done() and not step.cancelled() and step.exception() is None


def _answer(result: T | BaseException) -> T:
    """A result of ``asyncio.gather(..., return_exceptions=True)``: the value, or its error
    raised."""
    if isinstance(result, BaseException):
        raise result
    return result


async def _settle(*steps: asyncio.Future[Any]) -> None:
    """Stop the ``steps`` still running (cancelled, and waited for) and retrieve the failures
    of the others: what the caller no longer needs (it raised, or has its answer) ends here,
    and no failure is left unretrieved."""
    running = [s for s in steps if not s.done()]
    for step in running:
        step.cancel()
    if running:
        await asyncio.wait(running)
    for step in steps:
        if not step.cancelled():
            step.exception()


def _staging_path(staging: str, block: bool) -> str:
    """The staging path after realpath; for a filesystem volume the directory is made first."""
    if not block:
        os.makedirs(staging, exist_ok=True)
    return os.path.realpath(staging)


def bound_identity(table: Sequence[Mount], device_path: str) -> MountIdentity:
    """The identity a bind mount of the device node ``device_path`` shows in mountinfo: the
    filesystem holding the node (devtmpfs), with the node's path inside it as root."""
    real = os.path.realpath(device_path)
    best: Mount | None = None
    for m in table:  # later lines are mounted over earlier ones: the last match is visible
        point = m.mount_point.rstrip("/") or "/"
        inside = real == point or real.startswith(point if point == "/" else point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    if best is None:
        raise FailedPreconditionError(f"no mount holds the device node {device_path}")
    point = best.mount_point.rstrip("/") or "/"
    rel = real[len(point) :] if point != "/" else real
    root = posixpath.normpath(posixpath.join(best.root, rel.lstrip("/")))
    return MountIdentity(best.major_minor, root, best.fstype)


def _mount_is_device(top: Mount, device: BlockDevice, path: str) -> bool:
    if top.major_minor == device.major_minor:
        return True
    with contextlib.suppress(OSError):
        return _rdev(path) == device.major_minor  # a device node bound onto a file
    return False


def _rdev(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _is_block_file(path: str) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _made_from(kind: str, st: os.stat_result) -> Made:
    return Made(kind, st.st_dev, st.st_ino)


def _same_inode(made: Made, st: os.stat_result, *, same_boot: bool) -> bool:
    """``st`` is the inode recorded in ``made`` (device numbers may change across a reboot)."""
    return st.st_ino == made.ino and (not same_boot or st.st_dev == made.dev)


def _is_fresh(path: str, st: os.stat_result, kind: str) -> bool:
    """An empty directory or empty regular file of ``kind``, as publish creates them."""
    if kind == "dir":
        return stat.S_ISDIR(st.st_mode) and not os.listdir(path)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _make_target(target: str, block: bool) -> os.stat_result:
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    if block:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    else:
        path.mkdir(mode=0o750)
    return os.lstat(path)


def _remove_target(target: str, made: Made, same_boot: bool) -> None:
    """Remove the target this plugin created: only that very inode (a crash between recording
    the intent and creating it leaves no inode on record: then only an empty file or directory
    of the recorded kind qualifies), and only while it is empty."""
    st = _lstat(target)
    if st is None:
        return
    mine = (
        _is_fresh(target, st, made.kind)
        if made.ino is None
        else _same_inode(made, st, same_boot=same_boot)
    )
    if not mine:
        raise FailedPreconditionError(
            f"target {target} is not the {made.kind} this plugin created; it was left in place"
        )
    if made.kind == "dir":
        try:
            os.rmdir(target)
        except OSError as exc:
            raise FailedPreconditionError(
                f"target {target} is not empty after unmounting; it was left in place"
            ) from exc
    elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
        os.unlink(target)
    else:
        raise FailedPreconditionError(
            f"target {target} is no longer the empty file this plugin created; it was left in place"
        )
