"""The Makefile's set-up: ``make demo`` sets up only what the demo uses, ``make test`` all of it,
and a missing prerequisite is explained in one line. Run on a copy of the Makefile in a scratch
folder, dry (``make -n``) or stopped by the very check under test, so nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make") or "make"
pytestmark = pytest.mark.tools("make")


def _make(
    folder: Path, *args: str, path: str = "/usr/bin:/bin"
) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` on a copy of the Makefile in ``folder`` (a fresh checkout: no venv yet)."""
    if not (folder / "Makefile").exists():
        shutil.copy(REPO / "Makefile", folder / "Makefile")
        (folder / "pyproject.toml").write_text("")
    env = {"PATH": path, "HOME": str(folder)}
    return subprocess.run(
        [MAKE, "--no-print-directory", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_demo_sets_up_only_what_it_uses(tmp_path: Path) -> None:
    demo = _make(tmp_path, "-n", "demo").stdout
    assert "pip install" in demo and "csi-oxide demo" in demo
    assert "util-linux e2fsprogs xfsprogs mount" in demo  # the node's tools, as root
    for unused in ("go install", "build_tools.py", "qemu-system-x86", "linux-image-amd64"):
        assert unused not in demo, unused
    setup = _make(tmp_path, "-n", "setup").stdout  # what make test still sets up
    for used in ("go install", "build_tools.py --only helm", "qemu-system-x86", "xfsprogs"):
        assert used in setup, used


def test_packages_are_named_with_their_purpose_before_they_are_installed(tmp_path: Path) -> None:
    text = _make(tmp_path, "-n", "setup").stdout
    assert "installing with apt-get: util-linux e2fsprogs xfsprogs mount" in text
    assert "installing with apt-get: qemu-system-x86 linux-image-amd64 busybox-static" in text
    assert "/boot" in text


def test_a_missing_go_is_explained_in_one_line(tmp_path: Path) -> None:
    done = _make(tmp_path, str(tmp_path / ".tools" / "bin" / "csi-sanity"), path="/nowhere")
    assert done.returncode != 0
    assert "Go, which is not installed: install Go" in done.stdout
    assert "make demo does not need Go" in done.stdout


def test_an_old_python_is_explained_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.9.2" && exit 0\nexit 1\n')
    old.chmod(0o755)
    done = _make(tmp_path, f"PYTHON={old}", ".venv/.installed-stamp")
    assert done.returncode != 0
    assert "needs Python 3.11 or newer" in done.stdout and "Python 3.9.2" in done.stdout
    assert not (tmp_path / ".venv").exists()  # stopped before anything was made
