"""The zero check's sample layout (pure), its readers on sparse regular files compared with a
plain reference reader (no root), and its reads on a real loop device (root): the native AIO
reader, the thread-pool fallback, and that both give the same answer on the same device."""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide.node import zerocheck
from csi_oxide.node.zerocheck import (
    ALIGN,
    HEAD_BYTES,
    READ_BYTES,
    TAIL_BYTES,
    ZERO_SAMPLE_BYTES,
    ZERO_SAMPLES,
)
from tests.loops import attach, detach_if_ours
from tests.units import GIB, MIB


@pytest.mark.parametrize("size", [GIB, 64 * GIB, 1024 * GIB, 1023 * GIB + 512 * 7])
def test_samples_cover_the_edges_and_are_spread_over_the_whole_device(size: int) -> None:
    ranges = zerocheck.zero_check_ranges(size)
    assert ranges[0] == (0, HEAD_BYTES)
    last_offset, last_len = ranges[-1]
    assert last_offset + last_len == size and last_len >= TAIL_BYTES
    assert all(o % ALIGN == 0 for o, _ in ranges)
    assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ranges[1:-1])]
    assert max(gaps) <= size // ZERO_SAMPLES + ALIGN  # no stretch left unsampled
    total = sum(n for _, n in ranges)
    assert total <= HEAD_BYTES + 2 * TAIL_BYTES + ZERO_SAMPLES * ZERO_SAMPLE_BYTES


def test_the_layout_is_the_one_issue_12_fixed() -> None:
    """The same ranges as the first implementation (one list, filtered for overlaps), at
    sizes where samples are far apart and where they nearly touch."""

    def first(size: int) -> list[tuple[int, int]]:
        if size <= HEAD_BYTES + TAIL_BYTES + ZERO_SAMPLES * ZERO_SAMPLE_BYTES:
            return [(0, size)] if size else []
        ranges = [(0, HEAD_BYTES)]
        tail = (size - TAIL_BYTES) // ALIGN * ALIGN
        span = tail - HEAD_BYTES
        for i in range(ZERO_SAMPLES):
            offset = (HEAD_BYTES + span * i // ZERO_SAMPLES) // ALIGN * ALIGN
            if offset > ranges[-1][0] + ranges[-1][1] - 1:
                ranges.append((offset, min(ZERO_SAMPLE_BYTES, tail - offset)))
        ranges.append((tail, size - tail))
        return [(o, n) for o, n in ranges if n > 0]

    smallest = HEAD_BYTES + TAIL_BYTES + ZERO_SAMPLES * ZERO_SAMPLE_BYTES
    for size in [smallest - 512, smallest, smallest + 512, smallest + 4096, 2 * smallest, GIB]:
        assert zerocheck.zero_check_ranges(size) == first(size), size
    for size in [100 * GIB, 1023 * GIB + 512 * 7]:
        assert zerocheck.zero_check_ranges(size) == first(size), size


def test_a_small_device_is_read_in_full() -> None:
    assert zerocheck.zero_check_ranges(16 * MIB) == [(0, 16 * MIB)]
    assert zerocheck.zero_check_ranges(0) == []


@pytest.mark.parametrize("size", [16 * MIB + 512, GIB, 1024 * GIB])
def test_the_reads_cover_the_ranges_exactly_in_pieces_of_at_most_a_mib(size: int) -> None:
    ranges = zerocheck.zero_check_ranges(size)
    reads = list(zerocheck.zero_check_reads(size))
    assert all(0 < n <= READ_BYTES for _, n in reads)
    assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(reads))
    covered = {o for o, n in ranges for o in range(o, o + n, 512)}
    assert {o for o, n in reads for o in range(o, o + n, 512)} == covered
    assert sum(n for _, n in reads) == sum(n for _, n in ranges)


def _loop(backing: Path, size: int) -> str:
    with backing.open("wb") as f:
        f.truncate(size)
    return attach(backing)


@pytest.fixture
def blank(tmp_path: Path) -> Iterator[str]:
    """A fresh 1 GiB loop device over a sparse file: it reads as zeros everywhere."""
    dev = _loop(tmp_path / "disk", GIB)
    try:
        yield dev
    finally:
        detach_if_ours(dev, tmp_path / "disk")


def _poke(dev: str, offset: int, data: bytes = b"\x01") -> None:
    """Write ``data`` at ``offset`` of the device (through its page cache; O_DIRECT reads see it,
    the kernel writes the range back before reading it directly)."""
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


SAMPLE = zerocheck.zero_check_ranges(GIB)[1234]  # a sample between the head and the tail
BETWEEN = SAMPLE[0] + SAMPLE[1] + 64 * 1024  # not read by any sample (they are 128 KiB apart)
# (where one non-zero byte is, what the check must answer): edges and samples are read; a byte
# between samples is not (sampling is not proof, see zerocheck.py).
BYTES = {
    "head, first byte": (0, False),
    "head, last byte": (HEAD_BYTES - 1, False),
    "head, in its third MiB": (2 * MIB + 4097, False),
    "tail, first byte": (GIB - TAIL_BYTES, False),
    "tail, last byte of the device": (GIB - 1, False),
    "a sample, first byte": (SAMPLE[0], False),
    "a sample, in the middle": (SAMPLE[0] + 2047, False),
    "a sample, last byte": (SAMPLE[0] + SAMPLE[1] - 1, False),
    "between two samples": (BETWEEN, True),
}


def _reference_reads_as_zeros(path: Path) -> bool:
    """The zero check's answer read the plainest way: each range of ``zero_check_ranges`` in one
    buffered read, compared with zeros."""
    size = path.stat().st_size
    with path.open("rb") as f:
        for offset, length in zerocheck.zero_check_ranges(size):
            f.seek(offset)
            data = f.read(length)
            assert len(data) == length, (offset, length)
            if data != bytes(length):
                return False
    return True


def _sparse_file(path: Path, size: int, pokes: tuple[tuple[int, bytes], ...]) -> Path:
    """A sparse file of ``size`` bytes (holes read as zeros, as a fresh disk does) holding
    ``pokes``' bytes at their offsets, written back to the disk."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in pokes:
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


TAIL = GIB - TAIL_BYTES  # where the tail starts, on a 4 KiB block boundary
# (bytes written at offsets, what the reference answers); the readers must answer the same.
SPARSE = {
    "holes only": ((), True),
    "the last byte": (((GIB - 1, b"\x01"),), False),
    "inside the last 4 KiB block": (((GIB - 4096 + 1234, b"\x7f"),), False),
    "the first byte of the last block": (((GIB - 4096, b"\x01"),), False),
    "across the 1 MiB boundary of two head reads": (((MIB - 1, b"\x01\x02"),), False),
    "the tail's first byte": (((TAIL, b"\x01"),), False),
    "the byte before the tail's block": (((TAIL - 1, b"\x01"),), True),
    "the byte before a sample's block": (((SAMPLE[0] - 1, b"\x01"),), True),
    "a sample's first byte": (((SAMPLE[0], b"\x01"),), False),
    "a sample's last byte": (((SAMPLE[0] + SAMPLE[1] - 1, b"\x01"),), False),
    "the byte after a sample's block": (((SAMPLE[0] + SAMPLE[1], b"\x01"),), True),
    "between samples, and in the tail": (((BETWEEN, b"\x01"), (GIB - 2, b"\xff")), False),
}


@pytest.mark.parametrize("case", list(SPARSE))
def test_the_readers_answer_as_the_reference_on_a_sparse_file(tmp_path: Path, case: str) -> None:
    """The native AIO reader (and the threads) on a regular file, without root: the same
    answer as the reference reader, and the AIO reader answers it itself (O_DIRECT reads of the
    file; no hand-over to the threads)."""
    pokes, expected = SPARSE[case]
    path = _sparse_file(tmp_path / "disk", GIB, pokes)
    assert _reference_reads_as_zeros(path) is expected  # the case tests what it says
    reads = list(zerocheck.zero_check_reads(GIB))
    found = threading.Event()
    native = zerocheck.native_reads_as_zeros(str(path), reads, found)
    assert native is not None, f"native AIO did not answer on {tmp_path} (O_DIRECT, io_setup)"
    assert native is expected
    assert found.is_set() is not expected  # set at the first non-zero byte, only then
    assert zerocheck.threads_reads_as_zeros(str(path), reads, threading.Event()) is expected
    assert zerocheck.reads_as_zeros(str(path)) is expected


@pytest.mark.root
def test_native_aio_is_what_answers_here(blank: str) -> None:
    """The fast path is really taken on this machine (root, x86_64 or aarch64): the native
    reader answers itself instead of handing over to the threads."""
    assert zerocheck.native_aio_available()
    reads = list(zerocheck.zero_check_reads(GIB))
    assert zerocheck.native_reads_as_zeros(blank, reads, threading.Event()) is True
    _poke(blank, SAMPLE[0] + 100)
    found = threading.Event()
    assert zerocheck.native_reads_as_zeros(blank, reads, found) is False
    assert found.is_set()  # what stops the caller's other readers


@pytest.mark.root
@pytest.mark.parametrize("native", [True, False], ids=["native AIO", "threads"])
def test_a_blank_device_reads_as_zeros(blank: str, native: bool) -> None:
    assert zerocheck.reads_as_zeros(blank, native=native)


def _bytes_read(dev: str) -> int:
    """What the block layer has counted as read from ``dev`` (sectors of 512 bytes)."""
    return int(Path(f"/sys/block/{Path(dev).name}/stat").read_text().split()[2]) * 512


@pytest.mark.root
@pytest.mark.parametrize("native", [True, False], ids=["native AIO", "threads"])
def test_each_path_reads_exactly_the_checks_bytes(blank: str, native: bool) -> None:
    """No sample left out, none read twice: the device counts exactly the bytes of
    ``zero_check_ranges`` (O_DIRECT: every byte the check compares came from the device)."""
    before = _bytes_read(blank)
    assert zerocheck.reads_as_zeros(blank, native=native)
    assert _bytes_read(blank) - before == sum(n for _, n in zerocheck.zero_check_ranges(GIB))


@pytest.mark.root
@pytest.mark.parametrize("where", list(BYTES))
def test_one_non_zero_byte_gives_the_same_answer_on_both_paths(blank: str, where: str) -> None:
    offset, zeros = BYTES[where]
    _poke(blank, offset)
    assert zerocheck.reads_as_zeros(blank, native=True) is zeros
    assert zerocheck.reads_as_zeros(blank, native=False) is zeros


@pytest.mark.root
def test_without_native_aio_the_threads_read(blank: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node where io_setup is refused (a seccomp profile: EPERM; an old kernel: ENOSYS): the
    check falls back to the thread pool and still sees every byte it reads."""
    kernel = zerocheck._kernel()
    assert kernel is not None

    def refused(depth: int) -> int:
        raise OSError(errno.EPERM, "io_setup refused")

    monkeypatch.setattr(kernel, "setup", refused)
    reads = list(zerocheck.zero_check_reads(GIB))
    assert zerocheck.native_reads_as_zeros(blank, reads, threading.Event()) is None
    assert not zerocheck.native_aio_available()
    assert zerocheck.reads_as_zeros(blank)
    _poke(blank, GIB - 1)
    assert not zerocheck.reads_as_zeros(blank)


@pytest.mark.root
def test_a_read_that_is_not_full_is_left_to_the_threads(blank: str) -> None:
    """The native reader answers only from full reads: a read past the end (short) or one the
    device refuses (O_DIRECT at an offset off the sector grid: EINVAL) hands over; the threads
    then raise that error themselves (never an answer of "zeros")."""
    off_the_grid = [(0, 4096), (100, 4096)]
    assert zerocheck.native_reads_as_zeros(blank, [(GIB, 4096)], threading.Event()) is None
    assert zerocheck.native_reads_as_zeros(blank, off_the_grid, threading.Event()) is None
    with pytest.raises(OSError, match="Invalid argument") as refused:
        zerocheck.threads_reads_as_zeros(blank, off_the_grid, threading.Event())
    assert refused.value.errno == errno.EINVAL


@pytest.mark.root
@pytest.mark.parametrize("offset", [0, 5 * MIB, 300 * MIB + 4096, GIB - 4096])
def test_one_non_zero_4k_block_at_a_sample_is_seen(tmp_path: Path, offset: int) -> None:
    backing = tmp_path / "disk"
    dev = _loop(backing, GIB)
    try:
        assert zerocheck.reads_as_zeros(dev)
        ranges = zerocheck.zero_check_ranges(GIB)
        sampled = [o for o, n in ranges if o <= offset < o + n]
        at = offset if sampled else next(o for o, _ in ranges if o > offset)
        with open(dev, "r+b") as f:
            f.seek(at)
            f.write(b"\x01" * 4096)
            f.flush()
        assert not zerocheck.reads_as_zeros(dev)
    finally:
        detach_if_ours(dev, backing)


@pytest.mark.root
@pytest.mark.parametrize("native", [True, False], ids=["native AIO", "threads"])
def test_a_stopped_zero_check_proves_nothing(blank: str, native: bool) -> None:
    """The caller stops the check once its answer is not needed: a stopped check never says
    "zeros", even of a device that is all zeros."""
    stop = threading.Event()
    assert zerocheck.reads_as_zeros(blank, stop, native=native)
    stop.set()
    assert not zerocheck.reads_as_zeros(blank, stop, native=native)


@pytest.mark.root
def test_a_check_stopped_while_reading_stops(blank: str) -> None:
    """Set from another thread in the middle of the reads (as a cancelled NodeStage does), the
    check ends without an answer of "zeros"."""
    reading = threading.Event()

    class Stop(threading.Event):
        """The stop flag. The third time the reads look at it they wait until the other thread
        has set it: the stop comes in the middle of the reads, never before or after them."""

        looks = 0

        def is_set(self) -> bool:
            self.looks += 1
            if self.looks == 3:
                reading.set()
                assert self.wait(10), "the other thread never stopped the check"
            return super().is_set()

    stop = Stop()
    reads = list(zerocheck.zero_check_reads(GIB)) * 50

    def stopper() -> None:
        if reading.wait(10):
            stop.set()

    other = threading.Thread(target=stopper)
    other.start()
    assert zerocheck.native_reads_as_zeros(blank, reads, stop) is False
    other.join()
    assert stop.looks == 3  # it stopped at the first look after the stop


@pytest.mark.root
def test_the_cost_of_the_zero_check_on_a_1_tib_disk(tmp_path: Path, sanity_report) -> None:
    """Prints the figure (no timing is asserted): the check on a 1 TiB sparse loop device."""
    backing = tmp_path / "disk"
    dev = _loop(backing, 1024 * GIB)
    try:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert zerocheck.reads_as_zeros(dev)
            times.append(time.perf_counter() - started)
    finally:
        detach_if_ours(dev, backing)
    ranges = zerocheck.zero_check_ranges(1024 * GIB)
    read = sum(n for _, n in ranges) / MIB
    sanity_report(
        f"zero check, 1 TiB sparse loop device: {len(ranges)} reads, {read:.0f} MiB, "
        f"{min(times):.2f}-{max(times):.2f}s over 3 runs"
    )
