"""The guest backing without booting a guest: what it refuses, and that it leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from csi_oxide_lab.sim.backings import make_backing
from csi_oxide_lab.sim.guest_backing import GuestBacking


def test_make_backing_knows_guest(tmp_path: Path) -> None:
    backing = make_backing("guest", tmp_path / "rack")
    assert isinstance(backing, GuestBacking)
    assert backing.guest_dir == tmp_path / "rack" / "guest"
    assert backing.device("anything") is None  # the device is named by the guest's udev only
    backing.close()


def test_sim_without_a_kernel_says_why_and_leaves_no_file(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CSI_OXIDE_GUEST_KERNEL": str(tmp_path / "no-such-vmlinuz"),
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "csi_oxide", "sim", "--backing", "guest", "--hotplug"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "no kernel in /boot" in done.stderr or "not installed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # the temporary rack folder is gone


def test_attach_before_boot_is_an_error(tmp_path: Path) -> None:
    backing = GuestBacking(tmp_path / "rack")
    backing.create_disk("disk-1", 1024 * 1024, 512)
    try:
        with pytest.raises(RuntimeError, match="not been booted"):
            backing.attach_local("disk-1", 512)
    finally:
        backing.close()
