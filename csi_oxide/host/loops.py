"""Detaching a loop device only while it is still the one made over a given file.

A loop device is known by its number only, and the kernel hands a freed number to the next
``losetup --find``: a device detached meanwhile (by the code under test, the simulator, an
autoclear at its last close) may already be someone else's, another test run's or a cluster's.
``losetup -d /dev/loopN`` from a name remembered at creation would detach *that* device (or, for
a mounted one, set autoclear: it vanishes at its unmount). So every teardown of a loop device
this project made goes through ``detach_if_ours`` with the file the device was made over.

The check holds the device open while it looks: a held loop device cannot be freed, so it cannot
change hands between the look and the detach. Another process's ``LOOP_CLR_FD`` meanwhile only
sets autoclear (the device stays over the same file until the last close), and a device unbound
when opened may be bound by someone else meanwhile, which the look then sees. Its backing file is
read from sysfs by the device numbers of the held descriptor (``/sys/dev/block/M:N/loop/
backing_file``: the full path the device opened, with " (deleted)" appended once that file is
unlinked); the detach is ``LOOP_CLR_FD`` on that descriptor, which is what ``losetup -d`` does.

A caller that recorded the attachment's disk sequence number (``attachment``, right after making
the device) is told by it instead: the kernel numbers every attachment anew (``BLKGETDISKSEQ``,
Linux 5.15), never twice in a boot, and keeps the number while the device lives (resized,
formatted, its file renamed or unlinked), so it names that very attachment, whatever its file
is called now, and no other device that took the same file's path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct

LOOP_CLR_FD = 0x4C01  # linux/loop.h
BLKGETDISKSEQ = 0x80081280  # linux/fs.h: _IOR(0x12, 128, __u64)
DELETED = " (deleted)"  # how the kernel shows a backing path that has since been unlinked

_log = logging.getLogger(__name__)


def backing_of_fd(fd: int) -> str | None:
    """The backing path the kernel shows for the loop device open at ``fd`` (None when it is not
    a loop device, or has no backing file: unbound)."""
    st = os.fstat(fd)
    if not stat.S_ISBLK(st.st_mode):
        return None
    sys_file = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/loop/backing_file"
    try:
        with open(sys_file, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().removesuffix("\n")
    except OSError:
        return None


def backing_of(device: str) -> str | None:
    """The backing path the kernel shows for loop device ``device`` (/dev/loopN) now; None when
    there is no such device or it is unbound."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return backing_of_fd(fd)
    finally:
        os.close(fd)


def _diskseq(fd: int) -> int | None:
    """The disk sequence number of the block device open at ``fd`` (None: the kernel has none)."""
    try:
        answer = fcntl.ioctl(fd, BLKGETDISKSEQ, bytes(8))
    except OSError:
        return None
    seq: int = struct.unpack("=Q", answer)[0]
    return seq


def attachment(device: str, backing: str | os.PathLike[str]) -> int | None:
    """The disk sequence number of loop device ``device``'s attachment over ``backing``, to be
    read right after making it and given to ``detach_if_ours`` (None when the device is not over
    ``backing``, or the kernel numbers no attachments)."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        shown = backing_of_fd(fd)
        return _diskseq(fd) if shown is not None and is_over(shown, backing) else None
    finally:
        os.close(fd)


def is_over(shown: str, backing: str | os.PathLike[str]) -> bool:
    """Whether a backing path as the kernel shows it (``shown``) is ``backing``: the same path
    (symbolic links resolved, as the kernel shows it), or that path since unlinked."""
    want = os.path.realpath(backing)
    return shown in (want, want + DELETED)


def detach_if_ours(
    device: str, backing: str | os.PathLike[str], attached: int | None = None
) -> bool:
    """Detach loop device ``device`` if it is still over ``backing`` (the file it was made over:
    absolute, or relative to the current directory, then as at its creation); with ``attached``
    (``attachment``), if it still is that very attachment instead, whatever its file is called
    now (by the path where the kernel numbers no attachments). True when detached. A device
    that is gone, unbound or anything else's is left alone (a debug note). A device still in use
    (mounted) is detached at its last close (autoclear), as with ``losetup -d``. OSError when
    the kernel refuses the detach."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        _log.debug("loop device %s not detached: it cannot be opened (%s)", device, exc)
        return False
    try:
        shown = backing_of_fd(fd)
        seq = None if attached is None else _diskseq(fd)
        ours = shown is not None and (is_over(shown, backing) if seq is None else seq == attached)
        if not ours:
            _log.debug(
                "loop device %s not detached: it is over %s (attachment %s) now, not %s (%s)",
                device,
                "nothing" if shown is None else repr(shown),
                seq,
                os.fspath(backing),
                attached,
            )
            return False
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            _log.debug("loop device %s not detached: it was unbound already", device)
            return False
        _log.debug("loop device %s over %r detached", device, shown)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
