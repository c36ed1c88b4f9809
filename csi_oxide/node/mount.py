"""Mounting with util-linux ``mount``/``umount`` and reading what is mounted where."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Protocol

from csi_oxide.node import mountinfo
from csi_oxide.node.exec import run
from csi_oxide.node.mountinfo import Mount


class Mounter(Protocol):
    """Mounts, binds and unmounts, and answers what is mounted where (symlinks resolved)."""

    async def mount(self, source: str, target: str, fstype: str, options: Sequence[str]) -> None:
        """Mount the ``fstype`` filesystem on device ``source`` at directory ``target``."""
        ...

    async def bind(
        self, source: str, target: str, *, read_only: bool, options: Sequence[str] = ()
    ) -> None:
        """Bind ``source`` at ``target`` (a directory, or a device node onto a file); read-only
        when asked, and never left writable when making it read-only fails."""
        ...

    async def make_read_only(self, target: str, options: Sequence[str] = ()) -> None:
        """Remount the bind mount at ``target`` read-only (finishing a half-done ``bind``)."""
        ...

    async def unmount(self, target: str) -> None:
        """Unmount the topmost mount at ``target``."""
        ...

    async def mounts(self) -> list[Mount]:
        """Every mount this process sees, in mountinfo order."""
        ...

    async def mounts_at(self, path: str) -> list[Mount]:
        """The mounts stacked at ``path`` (after resolving symlinks), bottom first."""
        ...

    async def mounts_of(self, major_minor: str, device_path: str) -> list[Mount]:
        """Every mount of the block device: its filesystem's and binds of its device node."""
        ...


class LinuxMounter:
    """Mount operations; every path is compared after resolving symlinks."""

    async def mount(self, source: str, target: str, fstype: str, options: Sequence[str]) -> None:
        """Mount the filesystem on ``source`` at ``target``."""
        argv = ["mount", "-t", fstype]
        if options:
            argv += ["-o", ",".join(options)]
        await run([*argv, source, target])

    async def bind(
        self, source: str, target: str, *, read_only: bool, options: Sequence[str] = ()
    ) -> None:
        """Bind-mount ``source`` (a directory, or a device onto a file) at ``target``."""
        await run(["mount", "--bind", source, target])
        extra = [*options, "ro"] if read_only else list(options)
        if extra:
            try:
                await run(["mount", "-o", ",".join(["remount", "bind", *extra]), target])
            except Exception:
                await run(["umount", target])  # never leave a writable bind behind
                raise

    async def make_read_only(self, target: str, options: Sequence[str] = ()) -> None:
        """Remount the bind at ``target`` read-only."""
        await run(["mount", "-o", ",".join(["remount", "bind", *options, "ro"]), target])

    async def unmount(self, target: str) -> None:
        """Unmount the top mount at ``target``."""
        await run(["umount", target])

    async def mounts_at(self, path: str) -> list[Mount]:
        """The mounts whose mount point is ``path`` (after resolving symlinks), bottom first."""
        return await asyncio.to_thread(_mounts_at, path)

    async def mounts(self) -> list[Mount]:
        """Every mount, in mountinfo order."""
        return await asyncio.to_thread(mountinfo.read)

    async def mounts_of(self, major_minor: str, device_path: str) -> list[Mount]:
        """Every mount of the block device: its filesystem's, and binds of its /dev node."""
        table = await asyncio.to_thread(mountinfo.read)
        node = "/" + str(PurePosixPath(device_path).relative_to("/dev"))
        return [
            m
            for m in table
            if m.major_minor == major_minor or (m.fstype == "devtmpfs" and m.root == node)
        ]


def _mounts_at(path: str) -> list[Mount]:
    real = os.path.realpath(path)
    return [m for m in mountinfo.read() if m.mount_point == real]
