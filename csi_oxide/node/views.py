"""Read-only views of a block device: what a read-only raw block publish binds at its target.

A read-only bind mount does not make a device node read-only: the kernel applies a mount's
read-only flag to files and directories, not to device nodes, so a workload that opens a
read-only bound device node for writing writes to the disk. A read-only raw block publish binds
a read-only loop device over the volume's device instead. The loop device holds the device open
for reading only and the kernel refuses every write to it (EPERM), however it is opened
(O_DIRECT, after ``blockdev --setrw`` on the loop device). Other publishes of the same volume,
read-write ones included, bind the device itself and are not affected (``blockdev --setro`` on
the device would have made every one of them read-only).

Each view hangs from an anchor: a block device node with the device's numbers, in this plugin's
own directory, named after the volume and the publish target (``anchor``). The loop device is
attached to the anchor, not to /dev/X, and the kernel shows every loop device's backing path
(``/sys/block/loopN/loop/backing_file``), so the loop devices of a view are found from its anchor
alone. A publish records the anchor before the view exists; whatever happens after (a crash
between attaching the loop device and recording it, say), the record finds the view again, and
unpublish detaches it.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Protocol

from csi_oxide.errors import FailedPreconditionError, InternalError
from csi_oxide.host.loops import detach_if_ours
from csi_oxide.node.devices import BlockDevice
from csi_oxide.node.exec import run

SYS_BLOCK = Path("/sys/block")
_DELETED = " (deleted)"  # how the kernel shows a backing path that has since been unlinked


class ReadOnlyViews(Protocol):
    """Read-only loop devices over volumes' devices, one per read-only raw block publish."""

    def anchor(self, volume_id: str, target: str) -> str:
        """Where the view of ``volume_id`` published at ``target`` hangs from (a path of this
        plugin's, the same for the same pair; known before the view exists)."""
        ...

    async def open(self, anchor: str, device: BlockDevice) -> str:
        """The /dev path of a read-only loop device over ``device`` hanging from ``anchor``:
        the one already there, else a new one."""
        ...

    async def close(self, anchor: str) -> None:
        """Detach every loop device hanging from ``anchor`` and remove the anchor (nothing
        there: nothing to do)."""
        ...


class LoopViews:
    """Views as read-only loop devices over anchors in ``directory``."""

    def __init__(self, directory: Path, *, sys_block: Path = SYS_BLOCK) -> None:
        self._dir = directory
        self._sys = sys_block

    def anchor(self, volume_id: str, target: str) -> str:
        """``<directory>/<volume ID>.<16 hex characters of SHA-256 of the target>``."""
        import hashlib  # here: only a read-only raw block publish needs it (and its libcrypto)

        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        return str(self._dir / f"{volume_id}.{digest}")

    async def open(self, anchor: str, device: BlockDevice) -> str:
        """A read-only loop device over ``device``, hanging from ``anchor``."""
        if not await asyncio.to_thread(_is_anchor_of, anchor, device.major_minor):
            await self.close(anchor)  # an anchor of other device numbers (an earlier boot)
            await asyncio.to_thread(self._make_anchor, anchor, device.major_minor)
        loops = await self.loops(anchor, usable=True)
        if not loops:
            await run(["losetup", "--read-only", "--find", "--show", anchor])
            loops = await self.loops(anchor, usable=True)
        if not loops:
            raise InternalError(f"losetup made no read-only loop device over {anchor}")
        return loops[0]

    async def close(self, anchor: str) -> None:
        """Detach the loop devices over ``anchor`` and remove it. Each is checked again right
        before its detach, held open so that it cannot change hands in between: one freed since
        it was listed may already be another's (``csi_oxide.host.loops``). A loop device still held
        open (a workload that kept the device open) detaches itself at its last close."""
        for loop in await self.loops(anchor):
            await asyncio.to_thread(_detach, loop, anchor)
        await asyncio.to_thread(_remove_anchor, anchor)

    async def loops(self, anchor: str, *, usable: bool = False) -> list[str]:
        """The /dev paths of the loop devices attached to ``anchor`` (or to an earlier anchor
        at that path, since removed); ``usable``: only those attached to the anchor there now,
        read-only, and not on their way out (detached while open: gone at their last close)."""
        return await asyncio.to_thread(self._loops_sync, anchor, usable)

    def _loops_sync(self, anchor: str, usable: bool) -> list[str]:
        found = []
        for backing in sorted(self._sys.glob("loop*/loop/backing_file")):
            block = backing.parent.parent
            try:
                if _attached(block, backing.read_text().rstrip("\n"), anchor, usable=usable):
                    found.append("/dev/" + block.name)
            except OSError:
                continue  # detached while we looked
        return found

    def _make_anchor(self, anchor: str, major_minor: str) -> None:
        major, minor = (int(n) for n in major_minor.split(":"))
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.mknod(anchor, stat.S_IFBLK | 0o600, os.makedev(major, minor))


def _attached(block: Path, backing: str, anchor: str, *, usable: bool) -> bool:
    """Whether the loop device at ``block`` (in /sys/block), backed by ``backing``, hangs from
    ``anchor`` (``usable``: from the anchor there now, read-only, and not detached already and
    only waiting for its last close)."""
    if not usable:
        return backing in (anchor, anchor + _DELETED)
    read_only = (block / "ro").read_text().strip() == "1"
    leaving = (block / "loop" / "autoclear").read_text().strip() == "1"
    return backing == anchor and read_only and not leaving


def _detach(loop: str, anchor: str) -> None:
    """Detach ``loop`` if it still hangs from ``anchor`` (gone, or another's: left alone)."""
    try:
        detach_if_ours(loop, anchor)
    except OSError as exc:
        raise InternalError(
            f"the kernel refused to detach {loop}, the read-only view over {anchor}: {exc}"
        ) from exc


def _is_anchor_of(anchor: str, major_minor: str) -> bool:
    try:
        st = os.lstat(anchor)
    except FileNotFoundError:
        return False
    rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return stat.S_ISBLK(st.st_mode) and rdev == major_minor


def _remove_anchor(anchor: str) -> None:
    try:
        st = os.lstat(anchor)
    except FileNotFoundError:
        return
    if not stat.S_ISBLK(st.st_mode):
        raise FailedPreconditionError(
            f"{anchor} is not the block device node this plugin made there; it was left in place"
        )
    os.unlink(anchor)
