"""Filesystems on a device: signature probe, the blank check, mkfs, online growth, sizes.

"Blank" is strict: ``blkid -p`` (a low-level probe that ignores the blkid cache) finds no
signature at all AND the first and last MiB of the device read as zeros. Data written in raw block
mode has no signature; the zero check keeps it from being formatted over.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from csi_oxide.errors import InvalidArgumentError
from csi_oxide.node.exec import run

MIB = 1024 * 1024
FILESYSTEMS = ("ext4", "xfs")
DEFAULT_FS = "ext4"
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
    # xfs: -K skips the discard pass.
    "xfs": ("mkfs.xfs", "-q", "-K"),
}
# Clones and restored snapshots share the source's xfs UUID; nouuid lets both mount on one node.
MOUNT_OPTIONS = {"ext4": (), "xfs": ("nouuid",)}


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
    """The filesystem to use for a requested ``fs_type`` ("" means ext4)."""
    chosen = fstype or DEFAULT_FS
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


def _edges_are_zero(device: str) -> bool:
    fd = os.open(device, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        for offset in {0, max(0, size - MIB)}:
            data = os.pread(fd, min(MIB, size), offset)
            if data.count(0) != len(data):
                return False
        return True
    finally:
        os.close(fd)


async def examine(device: str) -> tuple[Signature, bool]:
    """The device's signature, and whether it is blank: no signature at all and the first and
    last MiB reading as zeros. The probe and the reads run side by side."""
    signature, zero_edges = await asyncio.gather(
        probe(device), asyncio.to_thread(_edges_are_zero, device)
    )
    return signature, zero_edges and not signature.found


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
    if fstype == "ext4":
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
    """Online ext4 growth (the resize ioctl) needs CAP_SYS_RESOURCE, which a container that is
    root but not privileged may lack; xfs growth needs only CAP_SYS_ADMIN, as mounting does."""
    try:
        return has_capability(PROC_STATUS.read_text(), CAP_SYS_RESOURCE)
    except OSError:
        return False


async def grow_unmounted_ext4(device: str) -> None:
    """Grow an unmounted ext4 filesystem to its device, after the full check resize2fs demands
    (e2fsck exit 1 means it corrected something, which is fine; anything higher is not)."""
    await run(["e2fsck", "-f", "-p", device], accept=(0, 1))
    await run(["resize2fs", device])


async def grow_mounted(fstype: str, device: str, mount_point: str) -> None:
    """Grow a mounted filesystem to its device (a no-op when it already fills it)."""
    if fstype == "ext4":
        await run(["resize2fs", device])
    else:
        await run(["xfs_growfs", mount_point])


def _device_size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


async def device_size(device: str) -> int:
    """The size of a block device in bytes."""
    return await asyncio.to_thread(_device_size, device)


async def statvfs(path: str) -> os.statvfs_result:
    """``os.statvfs`` off the event loop."""
    return await asyncio.to_thread(os.statvfs, path)
