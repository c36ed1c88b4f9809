"""The zero check's sample layout (pure) and its reads on a real loop device (root)."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from pathlib import Path

import pytest

from csi_oxide.node import fs

MIB = fs.MIB
GIB = 1024 * MIB


@pytest.mark.parametrize("size", [GIB, 64 * GIB, 1024 * GIB, 1023 * GIB + 512 * 7])
def test_samples_cover_the_edges_and_are_spread_over_the_whole_device(size: int) -> None:
    ranges = fs.zero_check_ranges(size)
    assert ranges[0] == (0, fs.HEAD_BYTES)
    last_offset, last_len = ranges[-1]
    assert last_offset + last_len == size and last_len >= fs.TAIL_BYTES
    assert all(o % fs.ALIGN == 0 for o, _ in ranges)
    assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ranges[1:-1])]
    assert max(gaps) <= size // fs.ZERO_SAMPLES + fs.ALIGN  # no stretch left unsampled
    total = sum(n for _, n in ranges)
    assert total <= fs.HEAD_BYTES + 2 * fs.TAIL_BYTES + fs.ZERO_SAMPLES * fs.ZERO_SAMPLE_BYTES


def test_a_small_device_is_read_in_full() -> None:
    assert fs.zero_check_ranges(16 * MIB) == [(0, 16 * MIB)]
    assert fs.zero_check_ranges(0) == []


@pytest.mark.root
@pytest.mark.parametrize("offset", [0, 5 * MIB, 300 * MIB + 4096, GIB - 4096])
def test_one_non_zero_4k_block_at_a_sample_is_seen(tmp_path: Path, offset: int) -> None:
    backing = tmp_path / "disk"
    with backing.open("wb") as f:
        f.truncate(GIB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        assert fs.reads_as_zeros(dev)
        sampled = [o for o, n in fs.zero_check_ranges(GIB) if o <= offset < o + n]
        at = offset if sampled else next(o for o, _ in fs.zero_check_ranges(GIB) if o > offset)
        with open(dev, "r+b") as f:
            f.seek(at)
            f.write(b"\x01" * 4096)
            f.flush()
        assert not fs.reads_as_zeros(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.root
def test_a_stopped_zero_check_proves_nothing(tmp_path: Path) -> None:
    """The caller stops the check once its answer is not needed: a stopped check never says
    "zeros", even of a device that is all zeros."""
    backing = tmp_path / "disk"
    with backing.open("wb") as f:
        f.truncate(GIB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        stop = threading.Event()
        assert fs.reads_as_zeros(dev, stop)
        stop.set()
        assert not fs.reads_as_zeros(dev, stop)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.root
def test_the_cost_of_the_zero_check_on_a_1_tib_disk(tmp_path: Path, sanity_report) -> None:
    """Prints the figure (no timing is asserted): the check on a 1 TiB sparse loop device."""
    backing = tmp_path / "disk"
    with backing.open("wb") as f:
        f.truncate(1024 * GIB)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert fs.reads_as_zeros(dev)
            times.append(time.perf_counter() - started)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    ranges = fs.zero_check_ranges(1024 * GIB)
    read = sum(n for _, n in ranges) / MIB
    sanity_report(
        f"zero check, 1 TiB sparse loop device: {len(ranges)} reads, {read:.0f} MiB, "
        f"{min(times):.2f}-{max(times):.2f}s over 3 runs"
    )
