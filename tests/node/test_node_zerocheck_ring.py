"""The native reader's ring (``zerocheck._Ring``) against a made-up kernel that completes reads
out of order and in uneven batches: at most ``AIO_DEPTH`` reads in flight, every read issued
once, every buffer compared after its read came back and before it is read into again (the
comparing overlaps the next reads, never the buffer's own), and the answer the bytes give. No
root, no device: the kernel here is a fake; test_node_zerocheck.py reads real ones."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import threading
from collections import Counter
from pathlib import Path

import pytest

from csi_oxide.node import zerocheck
from csi_oxide.node.zerocheck import AIO_DEPTH, READ_BYTES
from tests.units import GIB

_IOCB = zerocheck._IOCB
_EVENT = 32


class OutOfOrderKernel:
    """What ``_Ring`` asks of ``zerocheck._Aio``: submissions read back from the iocbs the
    ring staged, completions handed out in a shuffled order and in batches of any size the
    wait allows, each filling its buffer with zeros or, at ``dirty``, with one non-zero byte."""

    def __init__(self, seed: int, dirty: int | None = None) -> None:
        self.random = random.Random(seed)  # noqa: S311 - a reproducible order, not a secret
        self.dirty = dirty
        self.in_flight: dict[int, tuple[int, int, int]] = {}  # buffer -> (slot, length, offset)
        self.back: set[int] = set()  # buffers whose read came back, not compared since
        self.issued: Counter[tuple[int, int]] = Counter()
        self.most_in_flight = 0
        self.violations: list[str] = []
        libc = ctypes.CDLL(None)
        self._memcmp = libc.memcmp
        self._memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self._memcmp.restype = ctypes.c_int

    def compared(self, buffer: int) -> None:
        if buffer not in self.back:
            self.violations.append(f"compared {buffer:#x}, whose read is not back")
        self.back.discard(buffer)

    def memcmp(self, buffer: int, zeros: int, length: int) -> int:
        self.compared(buffer)
        return int(self._memcmp(buffer, zeros, length))

    def setup(self, depth: int) -> int:
        return 1

    def submit(self, context: int, count: int, pointers: int) -> int:
        for k in range(count):
            iocb = ctypes.c_uint64.from_address(pointers + 8 * k).value
            slot, _, _, buffer, length, offset = _IOCB.unpack(ctypes.string_at(iocb, _IOCB.size))
            if buffer in self.back:
                self.violations.append(f"read into {buffer:#x} before it was compared")
            if buffer in self.in_flight:
                self.violations.append(f"two reads in flight into {buffer:#x}")
            self.in_flight[buffer] = (slot, length, offset)
            self.issued[offset, length] += 1
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        return count

    def getevents(self, context: int, least: int, most: int, events: int) -> int:
        ready = list(self.in_flight)
        self.random.shuffle(ready)
        got = ready[: self.random.randint(max(least, 1), max(least, min(most, len(ready))))]
        for k, buffer in enumerate(got):
            slot, length, offset = self.in_flight.pop(buffer)
            ctypes.memset(buffer, 0, length)
            if self.dirty is not None and offset <= self.dirty < offset + length:
                ctypes.memset(buffer + self.dirty - offset, 1, 1)
            ctypes.memmove(events + _EVENT * k, _event(slot, length), _EVENT)
            self.back.add(buffer)
        return len(got)

    def destroy(self, context: int) -> None:
        pass

    def release(self, context: int) -> None:
        pass


class WatchedBuffers:
    """The ring's buffers, telling the kernel which one is compared as a copy (a sample)."""

    def __init__(self, buffers: mmap.mmap, base: int, kernel: OutOfOrderKernel) -> None:
        self.buffers, self.base, self.kernel = buffers, base, kernel

    def __getitem__(self, part: slice) -> bytes:
        self.kernel.compared(self.base + part.start)
        return self.buffers[part]

    def close(self) -> None:
        self.buffers.close()


def _event(slot: int, result: int) -> bytes:
    """A ``struct io_event``: data (the slot), obj, res (bytes read), res2."""
    return bytes((ctypes.c_int64 * 4)(slot, 0, result, 0))


def _run(tmp_path: Path, kernel: OutOfOrderKernel, found: threading.Event) -> bool | None:
    reads = list(zerocheck.zero_check_reads(GIB))
    (tmp_path / "device").write_bytes(b"")
    fd = os.open(tmp_path / "device", os.O_RDONLY)
    ring = zerocheck._Ring(kernel, 1, fd)  # type: ignore[arg-type]
    ring.buffers = WatchedBuffers(ring.buffers, ring.slots, kernel)  # type: ignore[assignment]
    try:
        return ring.run(iter(reads), found)
    finally:
        ring.close()


@pytest.mark.parametrize("seed", range(5))
def test_every_read_is_issued_once_and_compared_before_its_buffer_is_reused(
    tmp_path: Path, seed: int
) -> None:
    kernel = OutOfOrderKernel(seed)
    found = threading.Event()
    assert _run(tmp_path, kernel, found) is True
    assert kernel.violations == []
    assert kernel.most_in_flight <= AIO_DEPTH
    assert kernel.most_in_flight == AIO_DEPTH  # the queue is kept full
    assert kernel.issued == Counter(zerocheck.zero_check_reads(GIB))
    assert not kernel.back and not kernel.in_flight  # all compared, nothing left in flight
    assert not found.is_set()


@pytest.mark.parametrize(
    "dirty",
    [0, READ_BYTES - 1, 3 * READ_BYTES + 17, zerocheck.zero_check_ranges(GIB)[5000][0], GIB - 1],
    ids=["first byte", "end of the first read", "in the head", "a sample", "last byte"],
)
def test_one_non_zero_byte_out_of_order_is_seen(tmp_path: Path, dirty: int) -> None:
    kernel = OutOfOrderKernel(7, dirty)
    found = threading.Event()
    assert _run(tmp_path, kernel, found) is False
    assert found.is_set()
    assert kernel.violations == []
