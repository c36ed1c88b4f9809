"""NodeOps with a read-only disk on a real read-only loop device (``losetup --read-only``, as the
simulator's loop backing attaches an Oxide read-only disk): staged read-only without a journal
replay, its data readable, writes refused by the kernel, healthy stats, no growth."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide.errors import FailedPreconditionError
from csi_oxide.harness import unmount_below
from csi_oxide.node import mountinfo
from csi_oxide.node.ops import NodeOps
from csi_oxide.publish_context import Birth, Origin
from csi_oxide.wiring import build_node_ops
from tests.loops import Loops, attach, detach_if_ours, needs_loop_devices

pytestmark = [
    pytest.mark.root,
    needs_loop_devices,
]

VOLUME = "csi-0123456789abcdef"
DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"
READ_ONLY = Birth(Origin.SNAPSHOT, DISK, read_only=True)
SIZES = {"ext4": 64 * 1024**2, "ext3": 64 * 1024**2, "xfs": 320 * 1024**2}  # mkfs.xfs: 300 MB


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    made = Loops()
    try:
        yield made
    finally:
        unmount_below(tmp_path)
        made.detach()


def _golden_disk(tmp_path: Path, fstype: str, loops: Loops) -> Path:
    """A backing file in the device folder holding ``fstype`` with one file on it, attached as
    a read-only loop device."""
    devices = tmp_path / "devices"
    devices.mkdir()
    backing = devices / VOLUME
    with backing.open("wb") as f:
        f.truncate(SIZES[fstype])
    _sh(f"mkfs.{fstype}", "-q", str(backing))
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    dev = attach(backing)
    try:
        _sh("mount", dev, str(by_hand))
        (by_hand / "data").write_bytes(b"golden")
        _sh("umount", str(by_hand))
    finally:
        detach_if_ours(dev, backing)
    loops.attach(backing, "--read-only")
    return devices


def _ops(tmp_path: Path, devices: Path) -> NodeOps:
    return build_node_ops(sim_device_dir=devices, device_timeout=3.0, state_dir=tmp_path / "st")


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "xfs"])
async def test_read_only_disk_is_staged_read_only(
    tmp_path: Path, loops: Loops, fstype: str
) -> None:
    ops = _ops(tmp_path, _golden_disk(tmp_path, fstype, loops))
    staging = tmp_path / "kubelet" / "globalmount"
    await ops.stage(
        VOLUME, str(staging), fstype=fstype, mount_flags=[], block=False, birth=READ_ONLY
    )
    assert (staging / "data").read_bytes() == b"golden"
    (top,) = [m for m in mountinfo.read() if m.mount_point == os.path.realpath(staging)]
    assert top.fstype == fstype  # an ext3 is mounted as ext3 (by the kernel's ext4 driver)
    with pytest.raises(OSError, match="Read-only file system") as info:
        (staging / "new").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    stats = await ops.stats(VOLUME, str(staging))
    assert stats.abnormal is None and stats.total_bytes > 0
    with pytest.raises(FailedPreconditionError, match="mounted read-only"):
        await ops.expand(VOLUME, str(staging))
    await ops.unstage(VOLUME, str(staging))


async def test_a_blank_read_only_disk_is_not_formatted(tmp_path: Path, loops: Loops) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    with (devices / VOLUME).open("wb") as f:
        f.truncate(SIZES["ext4"])
    loops.attach(devices / VOLUME, "--read-only")
    ops = _ops(tmp_path, devices)
    staging = tmp_path / "kubelet" / "globalmount"
    with pytest.raises(FailedPreconditionError, match="never formatted"):
        await ops.stage(
            VOLUME, str(staging), fstype="ext4", mount_flags=[], block=False, birth=READ_ONLY
        )
    assert (devices / VOLUME).read_bytes().strip(b"\0") == b""
