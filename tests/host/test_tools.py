"""Tools are found where Debian puts them, also off a user's PATH (``make test`` as non-root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from csi_oxide.host import tools
from csi_oxide.node import exec as node_exec
from csi_oxide_lab import harness
from tests import skips

NO_SBIN = "/usr/local/bin:/usr/bin:/bin"  # a Debian user's PATH


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho found\n")
    path.chmod(0o755)
    return path


def test_path_first_then_the_sbin_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = _executable(tmp_path / "sbin" / "mkfs.fake")
    monkeypatch.setattr(tools, "SBIN_DIRS", (str(tmp_path / "sbin"),))
    assert tools.find("mkfs.fake", path=str(tmp_path / "bin")) == str(sbin)
    on_path = _executable(tmp_path / "bin" / "mkfs.fake")
    assert tools.find("mkfs.fake", path=str(tmp_path / "bin")) == str(on_path)
    assert tools.find("mkfs.missing", path=str(tmp_path / "bin")) is None


@pytest.mark.parametrize("tool", ["losetup", "blkid", "mkfs.ext4"])
def test_util_linux_and_e2fsprogs_are_found_off_path(
    tool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not any(Path(d, tool).exists() for d in tools.SBIN_DIRS):
        skips.unavailable(f"{tool} is not installed in {', '.join(tools.SBIN_DIRS)} here")
    monkeypatch.setenv("PATH", NO_SBIN)
    found = tools.find(tool)
    assert found is not None
    assert os.path.dirname(found) in tools.SBIN_DIRS


@pytest.mark.tools("blkid")
async def test_the_node_runs_a_tool_that_is_off_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", NO_SBIN)
    done = await node_exec.run(["blkid", "--version"])
    assert "blkid" in done.stdout


def test_harness_leftovers_work_off_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", NO_SBIN)
    assert harness.leftovers(tmp_path) == []


def test_harness_leftovers_without_losetup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tools, "SBIN_DIRS", ())
    assert harness.leftovers(tmp_path) == []  # nothing could have made a loop device
