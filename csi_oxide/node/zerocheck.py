"""The zero check: whether a device reads as zeros, as the disk holds it, all over.

What it proves. Before the node formats a device on which ``blkid -p`` finds no signature, it
asks whether the device reads as zeros (``history.py`` holds the rule, ``docs/node-safety.md``
why): every byte of ``zero_check_ranges`` is read from the disk itself with O_DIRECT (never a
stale page cache) and compared with zeros. A True answer means those bytes are zero now; a False
answer means one of them is not, or the check was stopped before it knew (nothing was proven).

Why these reads. They cover the WHOLE device: the first 4 MiB and the last MiB in full (the
metadata of partition tables and storage stacks sits at both ends: a GPT's backup header and some
md superblocks are at the end), plus ``ZERO_SAMPLES`` reads of ``ZERO_SAMPLE_BYTES`` at evenly
spaced offsets in between (on a 1 GiB disk one every 128 KiB, on a 1 TiB disk one every 128 MiB:
37 MiB read in all, whatever the size). Sampling is not proof of emptiness for data smaller than
the spacing; it is one of two conditions (with "no signature at all"), and the controller's
record of the disk's birth is the stronger proof.

How they are read. ``zero_check_reads`` cuts the ranges into reads of at most ``READ_BYTES`` (the
head and the tail in pieces of 1 MiB: 8197 reads), which go to the device through Linux native
AIO (io_setup, io_submit and io_getevents called through libc's ``syscall``: libaio is not in the
image), ``AIO_DEPTH`` in flight, each compared with zeros by ``memcmp`` (a 4 KiB sample as a
copy, a longer read in place): a network disk answers many small reads at once far faster than
one after the other. The reads that come back are compared after the reads that replace them are
submitted (there are buffers for twice the reads in flight), so that the device is never kept
waiting while 37 MiB are compared. The check stops at the first non-zero byte, or when its
caller stops it (a cancelled NodeStageVolume).

The fallback. Where native AIO is not available (an architecture without the syscall numbers
here, a seccomp profile that refuses io_setup, no O_DIRECT) or a read does not come back in
full, the same reads run on ``ZERO_CHECK_THREADS`` threads sharing one descriptor, which give
the same answer and raise the read's error. ``make bench`` measures the check against fio
issuing the same reads at the same queue depth.

Everything here blocks: ``fs.LinuxFilesystems`` runs the check in a thread of its own.
"""

from __future__ import annotations

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

MIB = 1024 * 1024
# The ranges: the head and the tail in full, evenly spaced samples between, on a 4 KiB grid.
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
# Buffers of the native reader: one per read in flight, and as many for the reads that came back
# and wait to be compared while their replacements are already under way.
AIO_SLOTS = 2 * AIO_DEPTH
# Threads of the fallback reader (no native AIO here).
ZERO_CHECK_THREADS = 8


def zero_check_ranges(size: int) -> list[tuple[int, int]]:
    """(offset, length) of every read of the zero check on a device of ``size`` bytes: the head
    and tail in full and evenly spaced samples between them, all 4 KiB aligned, in order."""
    return list(_ranges(size))


def _tail(size: int) -> int | None:
    """Where the tail of a device of ``size`` bytes starts (aligned), or None when the device is
    small enough to be read whole."""
    if size <= HEAD_BYTES + TAIL_BYTES + ZERO_SAMPLES * ZERO_SAMPLE_BYTES:
        return None
    return (size - TAIL_BYTES) // ALIGN * ALIGN


def _ranges(size: int) -> Iterator[tuple[int, int]]:
    tail = _tail(size)
    if tail is None:
        if size:
            yield 0, size
        return
    yield 0, HEAD_BYTES
    yield from _samples(tail - HEAD_BYTES)
    yield tail, size - tail


# Samples computed at a time (``_samples``): the first reads need not wait for all of them.
_SAMPLES_AT_ONCE = 512


def _samples(span: int) -> Iterator[tuple[int, int]]:
    """The samples between the head and the tail (``span`` bytes from ``HEAD_BYTES``): aligned
    and ascending, each starting at or after the end of the one before (a sample is at most
    ALIGN long) unless both round to the same offset: that one is read once. Computed a few
    hundred at a time by comprehensions, and handed on by ``yield from`` (the zero check takes
    thousands of them: a Python step per sample here would be a good part of its CPU time)."""
    previous = -1
    for start in range(0, ZERO_SAMPLES, _SAMPLES_AT_ONCE):
        offsets = [
            (HEAD_BYTES + span * i // ZERO_SAMPLES) // ALIGN * ALIGN
            for i in range(start, min(start + _SAMPLES_AT_ONCE, ZERO_SAMPLES))
        ]
        if span < ZERO_SAMPLES * ALIGN:  # closer than ALIGN apart: some round to one offset
            offsets = [o for o in dict.fromkeys(offsets) if o != previous]
        if offsets:
            previous = offsets[-1]
            yield from [(offset, ZERO_SAMPLE_BYTES) for offset in offsets]


def zero_check_reads(size: int) -> Iterator[tuple[int, int]]:
    """The reads of the zero check on a device of ``size`` bytes, in order: the ranges of
    ``zero_check_ranges`` cut into pieces of at most ``READ_BYTES``. Both readers issue exactly
    these; they are computed as they are issued (the samples a few hundred at a time), so the
    first reads start at once."""
    tail = _tail(size)
    if tail is None:
        yield from _pieces(0, size)
        return
    yield from _pieces(0, HEAD_BYTES)
    yield from _samples(tail - HEAD_BYTES)  # each at most READ_BYTES
    yield from _pieces(tail, size - tail)


def _pieces(offset: int, length: int) -> list[tuple[int, int]]:
    """``length`` bytes from ``offset`` in reads of at most ``READ_BYTES``."""
    return [
        (offset + done, min(READ_BYTES, length - done)) for done in range(0, length, READ_BYTES)
    ]


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
    size = byte_size(device)
    found = stop if stop is not None else threading.Event()
    if native:
        answer = native_reads_as_zeros(device, zero_check_reads(size), found)
        if answer is not None:
            return answer
    return threads_reads_as_zeros(device, zero_check_reads(size), found)


def byte_size(device: str) -> int:
    """The size of the device (or file) in bytes: where a seek to its end lands."""
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


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
    """One zero check's requests in flight: ``AIO_SLOTS`` slots, each with a buffer of
    ``READ_BYTES`` (only what is read is ever touched, so a few MiB are resident at most), at
    most ``AIO_DEPTH`` of them in flight, and room for as many iocbs (the kernel copies them at
    io_submit, so they are staged there for each submission) and completions. A slot is free,
    in flight, or back and waiting to be compared; only a free one is ever read into, and a
    slot is free again only once its read was compared."""

    def __init__(self, kernel: _Aio, context: int, fd: int) -> None:
        self.kernel, self.context, self.fd = kernel, context, fd
        self.buffers = mmap.mmap(-1, AIO_SLOTS * READ_BYTES)  # page aligned, as O_DIRECT wants
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
        ``found`` is set, None when a read failed or came back short (threads decide).

        Each round submits reads into free slots up to ``AIO_DEPTH`` in flight, then compares
        the reads that came back in the round before (their replacements now keep the device
        busy), then collects what came back since."""
        free = list(range(AIO_SLOTS))
        back: list[int] = []  # slots whose read came back, not compared yet
        length_of = [0] * AIO_SLOTS  # of the read in each slot
        words, first, memcmp = self.words, self.first_event, self.kernel.memcmp
        # A sample (most reads) is compared as a copy with bytes' own memcmp, cheaper per read
        # than a call into libc through ctypes; a longer read, in place.
        buffers, sample = self.buffers, bytes(ZERO_SAMPLE_BYTES)
        more = True
        while more or self.in_flight or back:
            if found.is_set():
                return False
            staged = 0
            while more and self.in_flight + staged < AIO_DEPTH:
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
            for slot in back:
                at, length = slot * READ_BYTES, length_of[slot]
                if length == ZERO_SAMPLE_BYTES:
                    nonzero = buffers[at : at + length] != sample
                else:
                    nonzero = memcmp(self.slots + at, self.zeros, length) != 0
                if nonzero:
                    found.set()
                    return False
                free.append(slot)
            back.clear()
            if not self.in_flight:
                continue
            try:
                least = min(AIO_REAP, self.in_flight)
                got = self.kernel.getevents(self.context, least, AIO_DEPTH, self.events)
            except OSError:
                return None
            self.in_flight -= got
            for k in range(first, first + 4 * got, 4):  # each event: data, obj, res, res2
                slot = words[k]
                if words[k + 2] != length_of[slot]:
                    return None  # a short read or an error: the threads decide it
                back.append(slot)
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
        it), then release everything. Once nothing is in flight, the slow part of the release
        runs in a thread of its own, so that the answer does not wait for it: unmapping the
        buffers (a millisecond or two) and the context's release (an RCU grace period, tens of
        milliseconds)."""
        try:
            while self.in_flight:
                least = self.in_flight
                self.in_flight -= self.kernel.getevents(self.context, least, AIO_DEPTH, self.events)
        except OSError:
            self.kernel.release(self.context)  # waits for every request still in flight
            collected = False
        else:
            collected = True
        os.close(self.fd)
        self.words.release()
        if collected:
            threading.Thread(target=self._release, name="zero-check-aio", daemon=True).start()
        else:
            self._unmap()

    def _release(self) -> None:
        """The buffers unmapped, then the context released (nothing in flight any more)."""
        self._unmap()
        self.kernel.release(self.context)

    def _unmap(self) -> None:
        self.buffers.close()
        self.reference.close()
