"""Filesystems on a device: signature probe, the zero check, mkfs, online growth, sizes.

``Filesystems`` is the seam the node's decisions go through; ``LinuxFilesystems`` is the real one
(blkid, e2fsprogs, xfsprogs, reads of the device). ext3 and ext4 (``EXT_FAMILY``) are made,
checked, sized and grown by the same e2fsprogs tools and served by the kernel's ext4 driver. The
decision itself (format or refuse) lives in ``ops.py``.

The zero check reads the device with O_DIRECT (what the disk holds, not a stale page cache) at
samples spread over the WHOLE device: the first 4 MiB and the last MiB in full, plus
``ZERO_SAMPLES`` reads of ``ZERO_SAMPLE_BYTES`` at evenly spaced offsets in between (on a 1 GiB
disk one every 128 KiB, on a 1 TiB disk one every 128 MiB: 37 MiB read in all, whatever the
size). Sampling is not proof of emptiness for data smaller than the spacing; it is one of two
conditions (with "no signature at all") and the controller's record of the disk's birth is the
stronger proof (see ``ops.py``).

The reads (``zero_check_reads``: the head and tail in pieces of 1 MiB, so 8197 reads) go to
the device through Linux native AIO (io_setup/io_submit/io_getevents called through libc's
``syscall``), ``AIO_DEPTH`` in flight, each compared with zeros by ``memcmp`` in place; the
check stops at the first non-zero byte or when its caller stops it. Where native AIO is not
available (an architecture without the syscall table here, a seccomp profile that refuses
io_setup, no O_DIRECT) or a read does not come back in full, the same reads run on
``ZERO_CHECK_THREADS`` threads sharing one descriptor, which give the same answer and raise
the read's error. ``make bench`` measures the check against fio issuing the same reads at the
same queue depth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import platform
import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from csi_oxide.errors import InvalidArgumentError
from csi_oxide.node.exec import run
from csi_oxide.node.threads import in_own_thread
from csi_oxide.volumes import DEFAULT_FILESYSTEM, FILESYSTEMS

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


HEAD_BYTES = 4 * MIB
TAIL_BYTES = MIB
ZERO_SAMPLES = 8192
ZERO_SAMPLE_BYTES = 4096
ALIGN = 4096
# The largest single read: the head and the tail are read in pieces of this size.
READ_BYTES = MIB
# Reads in flight at once with native AIO (the whole set streams through a queue this deep).
AIO_DEPTH = 64
# Completions collected per wait: fewer wake-ups of the reading thread, the queue stays deep.
AIO_REAP = 16
# Threads of the fallback reader (no native AIO here).
ZERO_CHECK_THREADS = 8


def zero_check_ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of every read of the zero check on a device of ``size`` bytes: the head
    and tail in full and evenly spaced samples between them, all 4 KiB aligned, in order."""
    return list(_ranges(size))


def _ranges(size: int) -> Iterator[tuple[int, int]]:
    if size <= HEAD_BYTES + TAIL_BYTES + ZERO_SAMPLES * ZERO_SAMPLE_BYTES:
        if size:
            yield 0, size
        return
    tail = (size - TAIL_BYTES) // ALIGN * ALIGN
    span = tail - HEAD_BYTES
    yield 0, HEAD_BYTES
    # Aligned and ascending, each sample starts at or after the end of the one before (a
    # sample is at most ALIGN long) unless both round to the same offset: that one is read once.
    previous = -1
    for i in range(ZERO_SAMPLES):
        offset = (HEAD_BYTES + span * i // ZERO_SAMPLES) // ALIGN * ALIGN
        if offset != previous:
            yield offset, ZERO_SAMPLE_BYTES
            previous = offset
    yield tail, size - tail


def zero_check_reads(size: int) -> Iterator[tuple[int, int]]:
    """The reads of the zero check on a device of ``size`` bytes, in order: the ranges of
    ``zero_check_ranges`` cut into pieces of at most ``READ_BYTES``. Both readers issue exactly
    these; they are computed as they are issued, so the first reads start at once."""
    for offset, length in _ranges(size):
        if length <= READ_BYTES:
            yield offset, length
        else:
            for done in range(0, length, READ_BYTES):
                yield offset + done, min(READ_BYTES, length - done)


def reads_as_zeros(
    device: str, stop: threading.Event | None = None, *, native: bool = True
) -> bool:
    """True when every range of ``zero_check_ranges`` reads as zeros (blocking), read with
    O_DIRECT. It stops at the first non-zero byte, or once ``stop`` is set by the caller (then
    the answer is False: nothing was proven).

    The reads go to the device all at once, ``AIO_DEPTH`` in flight, through Linux native AIO
    (a network disk answers many small reads at once far faster than one after the other).
    Where native AIO is not available (another architecture, a seccomp profile that forbids
    io_setup, no O_DIRECT, ``native=False``), or where it returns anything but a full read, the
    same reads run on ``ZERO_CHECK_THREADS`` threads instead, which also decide every error."""
    size = _device_size(device)
    found = stop if stop is not None else threading.Event()
    if native:
        answer = native_reads_as_zeros(device, zero_check_reads(size), found)
        if answer is not None:
            return answer
    return threads_reads_as_zeros(device, zero_check_reads(size), found)


def native_aio_available() -> bool:
    """Whether this machine and process allow Linux native AIO (an io_setup that succeeds)."""
    kernel = _kernel()
    if kernel is None:
        return False
    try:
        kernel.destroy(kernel.setup(1))
    except OSError:
        return False
    return True


def threads_reads_as_zeros(
    device: str, reads: Iterable[tuple[int, int]], found: threading.Event
) -> bool:
    """Whether ``reads`` all read as zeros, read on ``ZERO_CHECK_THREADS`` threads sharing one
    descriptor (O_DIRECT where the device allows it); False once ``found`` is set (it is set at
    the first non-zero byte). Errors of the reads raise."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)  # no O_DIRECT here: buffered reads
    try:  # one descriptor, shared: preadv carries its own offset
        with concurrent.futures.ThreadPoolExecutor(ZERO_CHECK_THREADS) as pool:
            every = list(reads)
            shares = [every[i::ZERO_CHECK_THREADS] for i in range(ZERO_CHECK_THREADS)]
            results = list(pool.map(lambda share: _zeros(fd, share, found), shares))
        return all(results)
    finally:
        os.close(fd)


def _zeros(fd: int, reads: list[tuple[int, int]], found: threading.Event) -> bool:
    buf = mmap.mmap(-1, READ_BYTES)  # page aligned, as O_DIRECT wants
    view = memoryview(buf)
    zeros = bytes(READ_BYTES)
    try:
        for offset, length in reads:
            done = 0
            while done < length:
                if found.is_set():
                    return False
                got = os.preadv(fd, [view[: length - done]], offset + done)
                if got <= 0:
                    break
                # one copy, compared with memcmp (a count of zero bytes costs five times more)
                if view[:got].tobytes() != (zeros if got == READ_BYTES else zeros[:got]):
                    found.set()
                    return False
                done += got
        return True
    finally:
        view.release()
        buf.close()


# struct iocb of <linux/aio_abi.h> on a little-endian machine, 64 bytes, the fields a read uses:
# aio_data (the slot), aio_lio_opcode, aio_fildes, aio_buf, aio_nbytes, aio_offset; the rest
# (aio_key, aio_rw_flags, aio_reqprio, aio_reserved2, aio_flags, aio_resfd) packed as zeros.
# struct io_event is 32 bytes: data, obj, res, res2. The numbers of io_setup, io_destroy,
# io_getevents and io_submit per architecture.
_IOCB = struct.Struct("<Q8xH2xIQQq16x")
_EVENT_BYTES = 32
_IOCB_CMD_PREAD = 0
_AIO_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}


class _Aio:
    """Linux native AIO through libc's ``syscall`` (no library needed: libaio is not in the
    image), and libc's ``memcmp`` to compare a read with zeros without copying it."""

    def __init__(self, libc: ctypes.CDLL, numbers: tuple[int, int, int, int]) -> None:
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self.memcmp = libc.memcmp
        self.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.memcmp.restype = ctypes.c_int
        self._setup, self._destroy, self._getevents, self._submit = numbers

    def _call(self, number: int, *args: int) -> int:
        while True:
            result = int(self._syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
            if result >= 0:
                return result
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))

    def setup(self, depth: int) -> int:
        """A new AIO context for ``depth`` requests in flight."""
        context = ctypes.c_ulong(0)
        self._call(self._setup, depth, ctypes.addressof(context))
        return context.value

    def submit(self, context: int, count: int, iocbs: int) -> int:
        """Queue ``count`` requests (an array of pointers at ``iocbs``); how many were taken."""
        return self._call(self._submit, context, count, iocbs)

    def getevents(self, context: int, least: int, most: int, events: int) -> int:
        """Wait for at least ``least`` completions, collect at most ``most`` at ``events``."""
        return self._call(self._getevents, context, least, most, events, 0)

    def destroy(self, context: int) -> None:
        """Release a context (this waits for an RCU grace period: tens of milliseconds)."""
        self._call(self._destroy, context)

    def release(self, context: int) -> None:
        """``destroy``, for a context that is no longer needed whatever happens."""
        with contextlib.suppress(OSError):
            self.destroy(context)


@functools.cache
def _kernel() -> _Aio | None:
    """The kernel's AIO calls, or None on a machine this code does not know."""
    numbers = _AIO_SYSCALLS.get(platform.machine())
    if numbers is None or sys.byteorder != "little":
        return None
    try:
        return _Aio(ctypes.CDLL(None, use_errno=True), numbers)
    except (OSError, AttributeError):
        return None


def native_reads_as_zeros(
    device: str, reads: Iterable[tuple[int, int]], found: threading.Event
) -> bool | None:
    """Whether ``reads`` (from ``zero_check_reads``) all read as zeros, read through native AIO
    with ``AIO_DEPTH`` in flight; False once ``found`` is set (it is set at the first non-zero
    byte). None when it cannot answer here (no native AIO, no O_DIRECT, a read that failed or
    came back short): ``reads_as_zeros`` then runs the same reads on threads, which decide."""
    kernel = _kernel()
    if kernel is None:
        return None
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return None  # no O_DIRECT: the threads read through the page cache
    try:
        context = kernel.setup(AIO_DEPTH)
    except OSError:
        os.close(fd)
        return None  # ENOSYS, EPERM (seccomp), EAGAIN (aio-max-nr): the threads read
    try:
        ring = _Ring(kernel, context, fd)
    except BaseException:
        kernel.release(context)
        os.close(fd)
        raise
    try:
        return ring.run(iter(reads), found)
    finally:
        ring.close()


class _Ring:
    """One zero check's requests in flight: ``AIO_DEPTH`` slots, each with a buffer of
    ``READ_BYTES`` (only what is read is ever touched, so a few MiB are resident at most), and
    room for as many iocbs (the kernel copies them at io_submit, so they are staged there for
    each submission) and completions."""

    def __init__(self, kernel: _Aio, context: int, fd: int) -> None:
        self.kernel, self.context, self.fd = kernel, context, fd
        self.buffers = mmap.mmap(-1, AIO_DEPTH * READ_BYTES)  # page aligned, as O_DIRECT wants
        self.reference = mmap.mmap(-1, READ_BYTES)  # zeros, compared with memcmp: no copies
        self.control = ctypes.create_string_buffer(AIO_DEPTH * (_IOCB.size + 8 + _EVENT_BYTES))
        self.slots = ctypes.addressof(ctypes.c_char.from_buffer(self.buffers))
        self.zeros = ctypes.addressof(ctypes.c_char.from_buffer(self.reference))
        iocbs = ctypes.addressof(self.control)
        self.pointers = iocbs + AIO_DEPTH * _IOCB.size  # to the staged iocbs, in order
        for k in range(AIO_DEPTH):
            at = AIO_DEPTH * _IOCB.size + 8 * k
            struct.pack_into("<Q", self.control, at, iocbs + _IOCB.size * k)
        self.events = self.pointers + AIO_DEPTH * 8
        self.words = memoryview(self.control).cast("B").cast("q")  # events as 64-bit words
        self.first_event = (self.events - iocbs) // 8
        self.in_flight = 0

    def run(self, reads: Iterator[tuple[int, int]], found: threading.Event) -> bool | None:
        """Stream ``reads`` through the slots; False at the first non-zero byte or once
        ``found`` is set, None when a read failed or came back short (threads decide)."""
        free = list(range(AIO_DEPTH))
        length_of = [0] * AIO_DEPTH  # of the read in each slot
        words, first, memcmp = self.words, self.first_event, self.kernel.memcmp
        more = True
        while more or self.in_flight:
            if found.is_set():
                return False
            staged = 0
            while free and more:
                read = next(reads, None)
                if read is None:
                    more = False
                    break
                slot = free.pop()
                offset, length = read
                buffer = self.slots + slot * READ_BYTES
                _IOCB.pack_into(
                    self.control,
                    _IOCB.size * staged,
                    slot,
                    _IOCB_CMD_PREAD,
                    self.fd,
                    buffer,
                    length,
                    offset,
                )
                length_of[slot] = length
                staged += 1
            if staged and not self._submit(staged):
                return None  # the kernel refused some (EAGAIN, a seccomp rule): threads read
            try:
                least = min(AIO_REAP, self.in_flight)
                got = self.kernel.getevents(self.context, least, AIO_DEPTH, self.events)
            except OSError:
                return None
            self.in_flight -= got
            answer: bool | None = True
            for k in range(first, first + 4 * got, 4):  # each event: data, obj, res, res2
                slot = words[k]
                free.append(slot)
                if words[k + 2] != length_of[slot]:
                    answer = None  # a short read or an error: the threads decide it
                elif answer and memcmp(self.slots + slot * READ_BYTES, self.zeros, length_of[slot]):
                    found.set()
                    answer = False
            if not answer:
                return answer
        return True

    def _submit(self, count: int) -> bool:
        """Submit the first ``count`` staged iocbs; whether the kernel took them all."""
        try:
            taken = self.kernel.submit(self.context, count, self.pointers)
        except OSError:
            taken = 0
        self.in_flight += taken
        return taken == count

    def close(self) -> None:
        """Collect what is still in flight (nothing is freed while the kernel may write into
        it), then release everything; the context's slow release (an RCU grace period, tens of
        milliseconds) runs in a thread of its own once nothing is in flight."""
        try:
            while self.in_flight:
                least = self.in_flight
                self.in_flight -= self.kernel.getevents(self.context, least, AIO_DEPTH, self.events)
        except OSError:
            self.kernel.release(self.context)  # waits for every request still in flight
        else:
            threading.Thread(
                target=self.kernel.release, args=(self.context,), name="zero-check-aio", daemon=True
            ).start()
        os.close(self.fd)
        self.words.release()
        self.buffers.close()
        self.reference.close()


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
        """See ``reads_as_zeros``; cancelled, it stops at its next completion or read."""
        stop = threading.Event()
        try:
            return await in_own_thread(lambda: reads_as_zeros(device, stop), "zero-check")
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
