"""A copy of a disk's file that is one instant of the disk, even while its loop device writes it.

An Oxide snapshot of an attached disk is crash-consistent: the disk as it was at one instant,
every write acknowledged before it in, none issued after it. The loop backing's disk is a file
written by a loop device; ``cp`` of that file while the device writes it copies each block at a
different moment, and a filesystem on the disk can come back with, say, a file size from a later
journal commit than the file's data.

How the writers are held, and what was ruled out:

- device-mapper (``dmsetup suspend`` holds a device's I/O): the kernels the simulator runs on
  need not have it (the test machine's has none), and the node identifies a simulated disk by its
  loop device's backing file (named after the disk, in the device folder: the stand-in for the
  NVMe serial), so all I/O must still go through that loop device; a dm target under it would
  mean a second loop device per disk and a device node in place of the disk's file.
- The loop driver has no pause: its queue is frozen only for the length of its own ioctls, and
  a read-only flag (``blockdev --setro``) fails writes (the filesystem on it aborts) instead of
  holding them. ``fsfreeze`` holds a mounted filesystem, not a raw block volume, nor a filesystem
  the simulator cannot name; copying through the block device holds no writer either.

What every write to the file takes is the file's inode lock (``i_rwsem``) for writing: the loop
driver's writes (direct or buffered), its discards and write-zeroes (``fallocate``). ``WriteHold``
holds that lock: a buffered ``pwrite`` of one byte to the file from a page that is missing and
registered with userfaultfd. The kernel takes the lock, then faults on the source page and waits
for this process to serve the fault. It is never served: to let go, the page is made
inaccessible and the fault woken, so the write fails (EFAULT) having written nothing (were the
process killed meanwhile, the fault would end the same way). Meanwhile the loop device's writes
wait in its queue, as on a disk that pauses a moment. Nothing else changes but the file's ctime
and mtime (the write updates them before it blocks) and, where the file's first block is a hole,
that block may become allocated zeros.

While the lock is held the copy reads the file with buffered reads, which take no ``i_rwsem`` on
ext4 and tmpfs (``_HOLDABLE``; xfs takes it and would wait for the hold forever). ``lseek``'s
SEEK_DATA, FIEMAP and direct reads take it, so the map of the file's data (to copy only that,
sparse as ``cp --sparse=always`` makes it) is read before the hold, and the hold must prove that
the map is still true and no write is under way. The file's ctime cannot tell (the hold's own
write changes it too); the loop device's counters can (``Writes``: writes and discards finished
and in flight, and the sectors they landed; the hold's write never reaches the device). They
must show no write in flight before the map, none begun from then until the hold was taken, and
no sector landed by the end of the copy (a write the hold stopped cannot land; one begun before
the hold would, should the counters have missed it on its way from in flight to finished; a
flush lands nothing and needs no lock, so it may go on). A device that keeps writing
makes the copy try again (``ATTEMPTS`` times, a few milliseconds apart), and then read the
whole file under the hold, map or not: slower (about half a second per GiB, mostly the page
cache the holes take), still one instant; writes under way when the hold began may land in it
or not, as a crash's in-flight writes may. Where the filesystem shares extents (FICLONE: xfs,
btrfs), the clone is the copy: the kernel makes it one instant itself (both inodes locked,
direct I/O drained).

The guest backing needs none of this: it pauses the guest around a plain copy (QMP ``stop``
drains and flushes its disks; ``csi_oxide_lab.sim.guest_backing``).

Cost when nothing writes: a few sysfs reads, a data map, a thread and a fault more than ``cp``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import platform
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType

_log = logging.getLogger(__name__)

ATTEMPTS = 20  # quiet windows sought before the whole file is read under the hold
RETRY_PAUSE = 0.003  # seconds between attempts
FAULT_TIMEOUT = 30.0  # seconds to wait for the lock (another writer may hold it a while)
_CHUNK = 1 << 20
_BLOCK = 4096  # the granularity of holes in the copy, as cp's
_ZERO_CHUNK = bytes(_CHUNK)
_ZERO_BLOCK = bytes(_BLOCK)
_PAGE = mmap.PAGESIZE
_PROT_NONE = 0
_MAP_FAILED = ctypes.c_void_p(-1).value

_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
_UFFD_API = 0xAA
_UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
_UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register)
_UFFDIO_WAKE = 0x8010AA02  # _IOR(0xAA, 0x02, struct uffdio_range)
_UFFDIO_REGISTER_MODE_MISSING = 1
_UFFD_EVENT_PAGEFAULT = 0x12
_FICLONE = 0x40049409  # _IOW(0x94, 9, int)

# Filesystems whose buffered reads take no i_rwsem (statfs f_type): ext2/3/4, tmpfs.
_HOLDABLE = {0xEF53: "ext4", 0x01021994: "tmpfs"}


class FreezeError(RuntimeError):
    """The file's writers could not be held, so no copy of one instant was made."""


@dataclass(frozen=True, slots=True)
class Writes:
    """A device's write activity: the writes and discards it ``finished`` ever, those
    ``in_flight`` now (read before the rest, so that one finishing meanwhile counts twice, never
    not at all), and the sectors they ``landed`` ever. A flush (``fdatasync``) counts among the
    writes too, but lands nothing."""

    finished: int
    in_flight: int
    landed: int

    @property
    def started(self) -> int:
        """Every write and discard ever begun: it never goes down."""
        return self.finished + self.in_flight


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    return libc


def _failed(what: str) -> FreezeError:
    return FreezeError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _uffd_ioctl(uffd: int, request: int, arg: ctypes.Array[ctypes.c_char], what: str) -> None:
    if _libc().ioctl(uffd, request, arg) != 0:
        raise _failed(what)


class WriteHold:
    """Holds the inode lock of the file at ``path`` for writing, from ``acquire`` (or the start
    of a ``with``) to ``release``: every write to the file waits meanwhile, whoever makes it;
    buffered reads go on. See the module docstring for how, and why it writes nothing."""

    def __init__(self, path: Path, *, timeout: float = FAULT_TIMEOUT) -> None:
        self._path = path
        self._timeout = timeout
        self._uffd = -1
        self._addr = 0
        self._thread: threading.Thread | None = None
        self._result: int | OSError | None = None
        self._released = False

    def __enter__(self) -> WriteHold:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Return once the lock is held; FreezeError when it cannot be."""
        libc = _libc()
        number = _SYS_USERFAULTFD.get(platform.machine())
        if number is None:
            raise FreezeError(f"no userfaultfd system call known on {platform.machine()}")
        uffd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK)
        if uffd < 0:
            raise _failed("userfaultfd (serving a kernel fault needs root)")
        self._uffd = uffd
        try:
            api = ctypes.create_string_buffer(struct.pack("QQQ", _UFFD_API, 0, 0), 24)
            _uffd_ioctl(uffd, _UFFDIO_API, api, "UFFDIO_API")
            protection = mmap.PROT_READ | mmap.PROT_WRITE
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            addr = libc.mmap(None, _PAGE, protection, flags, -1, 0)
            if addr is None or addr == _MAP_FAILED:
                raise _failed("mmap")
            self._addr = addr
            mode = _UFFDIO_REGISTER_MODE_MISSING
            register = ctypes.create_string_buffer(struct.pack("QQQQ", addr, _PAGE, mode, 0), 32)
            try:
                _uffd_ioctl(uffd, _UFFDIO_REGISTER, register, "UFFDIO_REGISTER")
                fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
            except BaseException:
                libc.munmap(addr, _PAGE)
                raise
            # From here the writer thread owns the page and ``fd``: it unmaps the page only once
            # its write has returned, so that no other mapping can take that address while the
            # write may still read from it.
            self._thread = threading.Thread(
                target=self._write, args=(fd, addr), name=f"hold-{self._path.name}", daemon=True
            )
            self._thread.start()
            self._wait_for_fault()
        except BaseException:
            self.release()
            raise

    def _write(self, fd: int, addr: int) -> None:
        source = (ctypes.c_char * 1).from_address(addr)
        try:
            self._result = os.pwrite(fd, source, 0)
        except OSError as exc:
            self._result = exc
        finally:
            os.close(fd)
            _libc().munmap(addr, _PAGE)

    def _wait_for_fault(self) -> None:
        thread = self._thread
        assert thread is not None
        poller = select.poll()
        poller.register(self._uffd, select.POLLIN)
        deadline = time.monotonic() + self._timeout
        while True:
            if poller.poll(100):
                with contextlib.suppress(BlockingIOError):
                    message = os.read(self._uffd, 32)
                    (event,) = struct.unpack_from("B", message, 0)
                    (address,) = struct.unpack_from("Q", message, 16)
                    if event == _UFFD_EVENT_PAGEFAULT and address & ~(_PAGE - 1) == self._addr:
                        return  # the write holds the lock and waits for its page
            if not thread.is_alive():
                raise FreezeError(
                    f"the write that was to hold {self._path} ended at once: {self._result!r}"
                )
            if time.monotonic() > deadline:
                raise FreezeError(f"{self._path} stayed locked by others for {self._timeout}s")

    def release(self) -> None:
        """Let the held write fail (EFAULT, nothing written), which drops the lock."""
        if self._released:
            return
        self._released = True
        libc = _libc()
        if self._thread is not None:
            # The page becomes inaccessible before the fault is woken, so the retried fault
            # fails, whether UFFDIO_WAKE or the closing of the descriptor wakes it.
            if libc.mprotect(self._addr, _PAGE, _PROT_NONE) != 0:
                raise _failed(f"mprotect: {self._path} stays held")
            wake = ctypes.create_string_buffer(struct.pack("QQ", self._addr, _PAGE), 16)
            libc.ioctl(self._uffd, _UFFDIO_WAKE, wake)
        if self._uffd >= 0:
            os.close(self._uffd)
            self._uffd = -1
        if self._thread is not None:
            self._thread.join(self._timeout)
            if isinstance(self._result, int):  # the kernel served the fault: never expected
                raise FreezeError(
                    f"the hold's write went through: {self._result} byte(s) at the start of "
                    f"{self._path}"
                )


def copy_at_one_instant(source: Path, target: Path, writes: Callable[[], Writes]) -> None:
    """Copy ``source`` to a new file ``target`` (replacing any), sparse, as one instant of
    ``source`` while the device whose activity ``writes`` reads may write it; FreezeError (and
    no ``target``) when its writers cannot be held."""
    target.unlink(missing_ok=True)
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            if not _clone(src, dst):
                _check_holdable(source)
                _copy_held(source, src, dst, writes)
        except BaseException:
            os.close(dst)
            target.unlink(missing_ok=True)
            raise
        os.close(dst)
    finally:
        with contextlib.suppress(OSError):  # drop the page cache the copy filled
            os.posix_fadvise(src, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(src)


def _clone(src: int, dst: int) -> bool:
    """Share ``src``'s extents with ``dst`` (FICLONE) where the filesystem can; False where not."""
    try:
        fcntl.ioctl(dst, _FICLONE, src)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


def _check_holdable(path: Path) -> None:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type (a long) comes first
    if _libc().statfs(os.fsencode(path), buf) != 0:
        raise _failed(f"statfs {path}")
    kind = struct.unpack_from("l", buf.raw, 0)[0] & 0xFFFFFFFF
    if kind not in _HOLDABLE:
        raise FreezeError(
            f"{path} is on a filesystem (type {kind:#x}) that cannot clone files and whose reads "
            f"may wait for a held write: no copy of one instant can be made there (use ext4, "
            f"tmpfs, or xfs or btrfs with reflink)"
        )


def _copy_held(source: Path, src: int, dst: int, writes: Callable[[], Writes]) -> None:
    for _ in range(ATTEMPTS):
        before = writes()
        if before.in_flight == 0 and writes() == before:  # none under way, none begun since
            extents = _data_extents(src, os.fstat(src).st_size)
            with WriteHold(source):
                # None began between the map and the hold (one begun before the hold is in
                # flight or finished); and none landed by the end of the copy either (one the
                # hold stopped cannot), should one have been on its way from in flight to
                # finished when counted.
                if writes().started == before.started:
                    _copy_extents(src, dst, extents, os.fstat(src).st_size)
                    if writes().landed == before.landed:
                        return
                    os.ftruncate(dst, 0)
        time.sleep(RETRY_PAUSE)
    _log.info("%s: its device kept writing; copying all of it under the hold", source)
    with WriteHold(source):
        size = os.fstat(src).st_size
        _copy_extents(src, dst, [(0, size)], size)


def _data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ranges of ``fd`` that hold data (SEEK_DATA/SEEK_HOLE); all of it where the
    filesystem cannot say."""
    extents = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole from here on
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end > start:
                extents.append((start, end))
            offset = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return [(0, size)]
        raise
    return extents


def _copy_extents(src: int, dst: int, extents: list[tuple[int, int]], size: int) -> None:
    """Copy ``extents`` of ``src`` to the same places of ``dst`` (``size`` bytes long), leaving
    holes where a block reads as zeros."""
    os.ftruncate(dst, size)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for start, end in extents:
        offset = start
        while offset < end:
            n = os.preadv(src, [view[: min(_CHUNK, end - offset)]], offset)
            if n <= 0:
                break
            if not (n == _CHUNK and buf == _ZERO_CHUNK):
                _write_blocks(dst, buf, n, offset)
            offset += n


def _write_blocks(dst: int, buf: bytearray, n: int, offset: int) -> None:
    """Write the first ``n`` bytes of ``buf`` at ``offset``, skipping blocks of zeros."""
    view = memoryview(buf)
    run = -1  # start of the current run of blocks to write
    for at in range(0, n, _BLOCK):
        zero = buf[at : at + _BLOCK] == _ZERO_BLOCK[: min(_BLOCK, n - at)]
        if zero and run >= 0:
            os.pwrite(dst, view[run:at], offset + run)
            run = -1
        elif not zero and run < 0:
            run = at
    if run >= 0:
        os.pwrite(dst, view[run:n], offset + run)
