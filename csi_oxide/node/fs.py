"""Filesystems on a device: signature probe, mkfs, online growth, sizes.

``Filesystems`` is the seam the node's decisions go through; ``LinuxFilesystems`` is the real one
(blkid, e2fsprogs, xfsprogs, and the zero check of ``zerocheck.py``, which reads the device
itself). ext3 and ext4 (``EXT_FAMILY``) are made, checked, sized and grown by the same e2fsprogs
tools and served by the kernel's ext4 driver. The decision itself (format or refuse) lives in
``history.py``; ``ops.py`` gathers what it decides on and acts on it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_oxide.contract.volumes import DEFAULT_FILESYSTEM, FILESYSTEMS
from csi_oxide.errors import InvalidArgumentError
from csi_oxide.node import zerocheck
from csi_oxide.node.exec import run
from csi_oxide.node.threads import in_own_thread

MIB = 1024 * 1024
# The e2fsprogs filesystems: sized by dumpe2fs, grown by resize2fs (after e2fsck when unmounted),
# mounted by the kernel's ext4 driver (whose online growth needs CAP_SYS_RESOURCE for both).
EXT_FAMILY = frozenset({"ext3", "ext4"})
# ext4: the DESIGN flags: no discard pass over the device (a new Oxide disk already reads as zeros,
# and discarding a 1 TiB network disk takes long), inode tables and journal zeroed lazily by the
# kernel after mount instead of by mkfs; flex groups of 256 block groups (default 16) so the
# metadata mkfs writes stays small on a 1023 GiB disk (measured by `make bench`). The 5% root
# reserve is kept (no ``-m 0``): it is the ext4 default users know, it guards against
# fragmentation near full, and statfs reports it honestly as not available. ``-F``: never stop to
# ask (blankness was proven just before).
MKFS = {
    "ext4": (
        "mkfs.ext4",
        "-F",
        "-q",
        "-G",
        "256",
        "-E",
        "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
    ),
    # ext3: of ext4's flags only -F, -q and nodiscard apply. No flex_bg (mkfs.ext3 refuses -G) and
    # no uninit_bg, so mke2fs writes every inode table in full (lazy_itable_init would be ignored;
    # blkid calls an ext3 with uninit_bg ext4, and the kernel refuses to mount it as ext3), and it
    # zeroes the journal of a block-mapped journal inode whatever lazy_journal_init says: about
    # 48 MiB written on a 1 GiB disk, some 17 GiB on a 1023 GiB one. Same 5% root reserve.
    "ext3": ("mkfs.ext3", "-F", "-q", "-E", "nodiscard"),
    # xfs: -K skips the discard pass.
    "xfs": ("mkfs.xfs", "-q", "-K"),
}
# Clones and restored snapshots share the source's xfs UUID; nouuid lets both mount on one node.
MOUNT_OPTIONS = {"ext4": (), "ext3": (), "xfs": ("nouuid",)}
# A read-only disk (an Oxide read_only disk) is mounted read-only without replaying the journal
# or log: the device refuses the writes a replay needs, and a snapshot of a mounted filesystem
# (crash-consistent) has one pending. Without the replay it shows the last committed state.
READ_ONLY_MOUNT_OPTIONS = {
    "ext4": ("ro", "noload"),
    "ext3": ("ro", "noload"),
    "xfs": ("ro", "norecovery"),
}
NO_RECOVERY = "norecovery"  # how mountinfo's superblock options show either of them


@dataclass(frozen=True, slots=True)
class Signature:
    """What ``blkid -p`` found: a filesystem type, a partition table type, or nothing."""

    fstype: str = ""
    pttype: str = ""
    usage: str = ""

    @property
    def found(self) -> bool:
        """True when anything at all was recognised."""
        return bool(self.fstype or self.pttype or self.usage)


def parse_blkid_export(text: str) -> Signature:
    """``blkid -p -o export`` output (KEY=value lines) as a Signature."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return Signature(
        fstype=values.get("TYPE", ""),
        pttype=values.get("PTTYPE", ""),
        usage=values.get("USAGE", ""),
    )


def check_fstype(fstype: str) -> str:
    """The filesystem to use for a requested ``fstype`` ("" means ext4)."""
    chosen = fstype or DEFAULT_FILESYSTEM
    if chosen not in FILESYSTEMS:
        raise InvalidArgumentError(
            f"filesystem {chosen!r} is not supported: use one of {', '.join(FILESYSTEMS)}"
        )
    return chosen


async def probe(device: str) -> Signature:
    """The device's signature; exit code 2 means none. Other failures raise (never "blank")."""
    result = await run(["blkid", "-p", "-o", "export", device], accept=(0, 2))
    if result.returncode == 2:
        return Signature()
    return parse_blkid_export(result.stdout)


def held_exclusively(device: str) -> bool:
    """True when something holds the device: a mount, a running mkfs (which opens it O_EXCL), a
    device mapper or md stack. The kernel answers an O_EXCL open of a block device with EBUSY."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


async def mkfs(device: str, fstype: str) -> None:
    """Create a filesystem (callers prove the device blank and its identity first)."""
    await run([*MKFS[fstype], device])


def parse_dumpe2fs(text: str) -> int:
    """Filesystem size in bytes from ``dumpe2fs -h`` output."""
    values = {
        k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())
    }
    return int(values["Block count"]) * int(values["Block size"])


def parse_xfs_db(text: str) -> int:
    """Filesystem size in bytes from ``xfs_db -c 'p dblocks blocksize'`` output."""
    values = {
        k.strip(): v.strip() for k, _, v in (line.partition("=") for line in text.splitlines())
    }
    return int(values["dblocks"]) * int(values["blocksize"])


async def filesystem_size(device: str, fstype: str) -> int:
    """The size the filesystem on ``device`` spans, read from its on-disk superblock.

    On a mounted filesystem the on-disk copy may lag behind the kernel's only by being smaller
    (a growth not yet written back), so the worst case is a growth call that has nothing to do.
    """
    if fstype in EXT_FAMILY:
        return parse_dumpe2fs((await run(["dumpe2fs", "-h", device])).stdout)
    out = await run(["xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", device])
    return parse_xfs_db(out.stdout)


async def needs_growth(device: str, fstype: str) -> bool:
    """True when the device is larger than its filesystem (by more than 1 MiB of slack)."""
    return await filesystem_size(device, fstype) < await device_size(device) - MIB


CAP_SYS_RESOURCE = 24
PROC_STATUS = Path("/proc/self/status")


def has_capability(status: str, bit: int) -> bool:
    """Whether the ``CapEff`` line of a /proc/<pid>/status text has capability ``bit``."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return bool(int(value.strip(), 16) >> bit & 1)
    return False


def can_grow_ext4_online() -> bool:
    """Online ext4 (and ext3) growth (the ext4 driver's resize ioctl) needs CAP_SYS_RESOURCE,
    which a container that is root but not privileged may lack; xfs growth needs only
    CAP_SYS_ADMIN, as mounting does."""
    try:
        return has_capability(PROC_STATUS.read_text(), CAP_SYS_RESOURCE)
    except OSError:
        return False


async def grow_unmounted_ext4(device: str) -> None:
    """Grow an unmounted ext4 or ext3 filesystem to its device, after the full check resize2fs
    demands (e2fsck exit 1 means it corrected something, which is fine; anything higher is not)."""
    await run(["e2fsck", "-f", "-p", device], accept=(0, 1))
    await run(["resize2fs", device])


async def grow_mounted(device: str, fstype: str, mount_point: str) -> None:
    """Grow a mounted filesystem to its device (a no-op when it already fills it)."""
    if fstype in EXT_FAMILY:
        await run(["resize2fs", device])
    else:
        await run(["xfs_growfs", mount_point])


async def device_size(device: str) -> int:
    """The size of a block device in bytes."""
    return await asyncio.to_thread(zerocheck.byte_size, device)


async def statvfs(path: str) -> os.statvfs_result:
    """``os.statvfs`` off the event loop."""
    return await asyncio.to_thread(os.statvfs, path)


class Filesystems(Protocol):
    """Inspecting, formatting and growing filesystems on block devices."""

    async def probe(self, device: str) -> Signature:
        """What ``blkid -p`` finds on the device (never "blank" on a failure: that raises)."""
        ...

    async def reads_as_zeros(self, device: str) -> bool:
        """Whether the device reads as zeros at samples spread over all of it (cancelling the
        call stops the reads)."""
        ...

    async def held_exclusively(self, device: str) -> bool:
        """Whether something (a mount, a running mkfs) holds the device."""
        ...

    async def mkfs(self, device: str, fstype: str) -> None:
        """Create a filesystem (the caller has proven it may)."""
        ...

    async def needs_growth(self, device: str, fstype: str) -> bool:
        """True when the device is larger than its filesystem."""
        ...

    async def grow_mounted(self, device: str, fstype: str, mount_point: str) -> None:
        """Grow a mounted filesystem to its device."""
        ...

    async def grow_unmounted_ext4(self, device: str) -> None:
        """Grow an unmounted ext4 or ext3 to its device."""
        ...

    async def device_size(self, device: str) -> int:
        """The device's size in bytes."""
        ...


class LinuxFilesystems:
    """The real tools: blkid, mkfs, resize2fs, xfs_growfs, reads of the device."""

    async def probe(self, device: str) -> Signature:
        """See ``probe``."""
        return await probe(device)

    async def reads_as_zeros(self, device: str) -> bool:
        """See ``zerocheck.reads_as_zeros``; cancelled, it stops at its next completion or read."""
        stop = threading.Event()
        try:
            return await in_own_thread(lambda: zerocheck.reads_as_zeros(device, stop), "zero-check")
        except asyncio.CancelledError:
            stop.set()
            raise

    async def held_exclusively(self, device: str) -> bool:
        """See ``held_exclusively``."""
        return await asyncio.to_thread(held_exclusively, device)

    async def mkfs(self, device: str, fstype: str) -> None:
        """See ``mkfs``."""
        await mkfs(device, fstype)

    async def needs_growth(self, device: str, fstype: str) -> bool:
        """See ``needs_growth``."""
        return await needs_growth(device, fstype)

    async def grow_mounted(self, device: str, fstype: str, mount_point: str) -> None:
        """See ``grow_mounted``."""
        await grow_mounted(device, fstype, mount_point)

    async def grow_unmounted_ext4(self, device: str) -> None:
        """See ``grow_unmounted_ext4``."""
        await grow_unmounted_ext4(device)

    async def device_size(self, device: str) -> int:
        """See ``device_size``."""
        return await device_size(device)
