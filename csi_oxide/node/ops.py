"""Node operations at the domain level, each idempotent: stage, publish, stats, expand.

Stage (filesystem volumes): find the device by serial, then mount what is on it. A device with a
filesystem of the requested type is mounted (and grown to the device's size); a provably blank one
is formatted first, after a last identity check; anything else (another filesystem, a partition
table, raw data) is refused untouched. A disk re-created larger by offline expansion has its
filesystem grown at the next stage: after mounting (online), except ext4 when this process lacks
CAP_SYS_RESOURCE, which is then grown just before mounting. Raw block volumes need no staging
beyond the device being there; publish bind-mounts the device node onto a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from csi_oxide.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from csi_oxide.node import fs
from csi_oxide.node.devices import BlockDevice, DeviceFinder, UdevDeviceFinder, serial_of
from csi_oxide.node.mount import LinuxMounter, Mounter
from csi_oxide.node.mountinfo import Mount

MKFS_CONCURRENCY = 2


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
    """The node's data path over a device finder and a mounter."""

    def __init__(
        self, devices: DeviceFinder, mounter: Mounter, *, online_ext4_growth: bool | None = None
    ) -> None:
        """``online_ext4_growth``: whether resize2fs may grow a mounted ext4 (None: find out from
        this process's capabilities). Without it, stage grows ext4 before mounting."""
        self._devices = devices
        self._mounter = mounter
        self._online_ext4 = (
            fs.can_grow_ext4_online() if online_ext4_growth is None else online_ext4_growth
        )
        self._format_slots = asyncio.Semaphore(MKFS_CONCURRENCY)

    async def max_volumes(self) -> int:
        """Volumes this node can still take: 12 minus non-CSI NVMe disks (never negative)."""
        return await self._devices.max_volumes()

    # ---- stage ----

    async def stage(
        self,
        volume_id: str,
        staging: str,
        *,
        fs_type: str,
        mount_flags: Sequence[str],
        block: bool,
    ) -> None:
        """Make the volume ready on this node (mount its filesystem at ``staging``)."""
        fstype = "" if block else fs.check_fstype(fs_type)
        device = await self._devices.find(volume_id)
        if block:
            return
        await asyncio.to_thread(os.makedirs, staging, exist_ok=True)
        mounted = await self._mounter.mounts_at(staging)
        if mounted:
            _require_same_device(mounted[-1], device, staging)
            if mounted[-1].fstype != fstype:
                raise AlreadyExistsError(
                    f"volume {volume_id} is already staged at {staging} as "
                    f"{mounted[-1].fstype}, not {fstype}"
                )
        else:
            async with self._format_slots:
                fresh = await self._prepare(volume_id, device, fstype)
                if not fresh and fstype == "ext4" and not self._online_ext4:
                    await self._grow_offline(volume_id, device)
            options = [*fs.MOUNT_OPTIONS[fstype], *mount_flags]
            await self._mounter.mount(device.path, staging, fstype, options)
            if fresh:
                return
        # Offline expansion re-created a larger disk: grow now, online (also on a retry that
        # finds the volume mounted by an earlier call which failed while growing).
        await self._grow(volume_id, device, fstype, staging)

    async def _grow(self, volume_id: str, device: BlockDevice, fstype: str, mounted: str) -> None:
        """Grow the filesystem mounted at ``mounted`` when its device is larger."""
        if not await fs.needs_growth(device.path, fstype):
            return
        if fstype == "ext4" and not self._online_ext4:
            raise FailedPreconditionError(
                f"the ext4 filesystem of volume {volume_id} is smaller than its disk but cannot "
                "grow while mounted: the node plugin lacks CAP_SYS_RESOURCE (run it privileged); "
                "it grows at its next NodeStageVolume instead"
            )
        await self._devices.verify(device, volume_id)
        await fs.grow_mounted(fstype, device.path, mounted)

    async def _grow_offline(self, volume_id: str, device: BlockDevice) -> None:
        """Grow an unmounted ext4 when its device is larger (no online growth here)."""
        if await fs.needs_growth(device.path, "ext4"):
            await self._devices.verify(device, volume_id)
            await fs.grow_unmounted_ext4(device.path)

    async def _prepare(self, volume_id: str, device: BlockDevice, fstype: str) -> bool:
        """Format the device if (and only if) it is blank; True when it was formatted."""
        found, blank = await fs.examine(device.path)
        if found.fstype == fstype:
            return False
        if found.found:
            what = found.fstype or found.pttype or found.usage
            raise FailedPreconditionError(
                f"volume {volume_id} ({device.path}) holds {what!r}, not {fstype}; it was left "
                "untouched (a volume is never re-formatted)"
            )
        if not blank:
            raise FailedPreconditionError(
                f"volume {volume_id} ({device.path}) has no filesystem but is not blank (it holds "
                "data, perhaps written in raw block mode); it was left untouched"
            )
        await self._devices.verify(device, volume_id)
        await fs.mkfs(device.path, fstype)
        return True

    async def unstage(self, volume_id: str, staging: str) -> None:
        """Unmount the staging path (all stacked mounts); done when nothing is mounted there."""
        await self._release(volume_id, staging)

    async def _release(self, volume_id: str, path: str) -> None:
        """Unmount every mount at ``path``, each only if it provably is this volume's."""
        device = await self._devices.find_now(volume_id)
        while mounted := await self._mounter.mounts_at(path):
            top = mounted[-1]
            if not _unmountable(top, device, path):
                raise FailedPreconditionError(
                    f"{path} has {top.source} ({top.fstype}) mounted, which is not volume "
                    f"{volume_id}; it was left mounted"
                )
            await self._mounter.unmount(path)

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
        device = await self._devices.find_now(volume_id)
        if device is None:
            raise FailedPreconditionError(f"volume {volume_id} is not attached to this node")
        source = device.path if block else await self._staged_source(volume_id, staging, device)
        existing = await self._mounter.mounts_at(target)
        if existing:
            await self._check_republish(existing[-1], device, target, block, read_only)
            return
        if single_writer:
            await self._refuse_second_writer(device, staging, target)
        await asyncio.to_thread(_make_target, target, block)
        await self._mounter.bind(source, target, read_only=read_only, options=mount_flags)

    async def _staged_source(self, volume_id: str, staging: str, device: BlockDevice) -> str:
        mounted = await self._mounter.mounts_at(staging)
        if not mounted:
            raise FailedPreconditionError(
                f"volume {volume_id} is not staged at {staging}: NodeStageVolume first"
            )
        _require_same_device(mounted[-1], device, staging)
        return staging

    async def _check_republish(
        self, top: Mount, device: BlockDevice, target: str, block: bool, read_only: bool
    ) -> None:
        if block:
            rdev = await asyncio.to_thread(_rdev, target)
            if rdev != device.major_minor:
                raise AlreadyExistsError(f"{target} is already a different block device")
        else:
            _require_same_device(top, device, target)
        if top.read_only != read_only:
            raise AlreadyExistsError(
                f"volume is already published at {target} "
                f"{'read-only' if top.read_only else 'read-write'}; the request differs"
            )

    async def _refuse_second_writer(self, device: BlockDevice, staging: str, target: str) -> None:
        real = await asyncio.to_thread(lambda: {os.path.realpath(p) for p in (staging, target)})
        mounts = await self._mounter.mounts_of(device.major_minor, device.path)
        others = [m for m in mounts if m.mount_point not in real]
        if others:
            raise FailedPreconditionError(
                f"the volume is SINGLE_NODE_SINGLE_WRITER and already published at "
                f"{others[0].mount_point}"
            )

    async def unpublish(self, volume_id: str, target: str) -> None:
        """Unmount and remove ``target``; a target that is not there is already unpublished."""
        await self._release(volume_id, target)
        await asyncio.to_thread(_remove_target, target)

    # ---- stats and growth ----

    async def stats(self, volume_id: str, path: str) -> VolumeStats:
        """Usage of the volume mounted (or bound) at ``path``."""
        top, device = await self._mount_of(volume_id, path)
        gone = None
        if device is None:
            gone = f"the device of volume {volume_id} (serial {serial_of(volume_id)!r}) is gone"
        if await asyncio.to_thread(_is_block_file, path):
            size = await fs.device_size(path)
            return VolumeStats(size, 0, 0, 0, 0, 0, True, gone)
        st = await fs.statvfs(path)
        abnormal = gone or ("the filesystem is read-only" if "ro" in top.super_options else None)
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
        top, device = await self._mount_of(volume_id, path)
        if device is None:
            raise FailedPreconditionError(f"volume {volume_id} is not attached to this node")
        if await asyncio.to_thread(_is_block_file, path):
            return await fs.device_size(device.path)
        await self._grow(volume_id, device, fs.check_fstype(top.fstype), path)
        return await fs.device_size(device.path)

    async def _mount_of(self, volume_id: str, path: str) -> tuple[Mount, BlockDevice | None]:
        """The volume's mount at ``path`` and its device (None: a device that vanished under
        the mount). NotFoundError unless the mount provably is the volume's."""
        if not os.path.isabs(path) or not await asyncio.to_thread(os.path.exists, path):
            raise NotFoundError(f"path {path!r} does not exist")
        mounted = await self._mounter.mounts_at(path)
        if not mounted:
            raise NotFoundError(f"volume {volume_id} is not staged or published at {path}")
        top = mounted[-1]
        device = await self._devices.find_now(volume_id)
        if device is not None and _mount_is_device(top, device, path):
            return top, device
        if device is None and await asyncio.to_thread(_vanished_under, top):
            return top, None
        raise NotFoundError(f"{path} does not hold volume {volume_id}")


def _vanished_under(top: Mount) -> bool:
    """True for a filesystem mount of a block device the kernel no longer has."""
    if top.fstype not in fs.FILESYSTEMS or not top.source.startswith("/dev/"):
        return False
    return not os.path.exists(f"/sys/dev/block/{top.major_minor}")


def _mount_is_device(top: Mount, device: BlockDevice, path: str) -> bool:
    if top.major_minor == device.major_minor:
        return True
    with contextlib.suppress(OSError):
        return _rdev(path) == device.major_minor  # a device node bound onto a file
    return False


def _unmountable(top: Mount, device: BlockDevice | None, path: str) -> bool:
    """True when the mount at ``path`` is the volume's: its filesystem or a bind of its device.

    With the device gone (detached under a mount), only a block-device filesystem of a type this
    driver makes, or a bind of a /dev node, qualifies: never proc, sysfs, tmpfs, overlay...
    """
    if device is not None:
        return _mount_is_device(top, device, path)
    if top.fstype == "devtmpfs":
        return top.root != "/"
    return top.fstype in fs.FILESYSTEMS and top.source.startswith("/dev/")


def _require_same_device(top: Mount, device: BlockDevice, path: str) -> None:
    if top.major_minor != device.major_minor:
        raise AlreadyExistsError(
            f"{path} already has something else mounted ({top.source}, {top.major_minor}), "
            f"not {device.path}"
        )


def _rdev(path: str) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def _is_block_file(path: str) -> bool:
    return stat.S_ISBLK(os.stat(path).st_mode)


def _make_target(target: str, block: bool) -> None:
    if block:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).touch(exist_ok=True)
    else:
        Path(target).mkdir(parents=True, exist_ok=True)


def _remove_target(target: str) -> None:
    """Remove what publish made: an empty directory or an empty file (never anything holding
    data: that would not be a target this plugin created)."""
    path = Path(target)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            path.rmdir()
        except OSError as exc:
            raise FailedPreconditionError(
                f"target {target} is not empty after unmounting; it was left in place"
            ) from exc
    elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
        path.unlink()
    elif not stat.S_ISLNK(st.st_mode):
        raise FailedPreconditionError(
            f"target {target} is not an empty file or directory; it was left in place"
        )


def build_node_ops(*, sim_device_dir: Path | None, device_timeout: float = 60.0) -> NodeOps:
    """The production node: udev device discovery, util-linux mounts."""
    finder = UdevDeviceFinder(sim_device_dir=sim_device_dir, timeout=device_timeout)
    return NodeOps(finder, LinuxMounter())
