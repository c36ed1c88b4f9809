"""``csi-oxide demo``: the embedded default walks its whole story and cleans up after itself.

As root with loop devices the full lifecycle runs on real block devices (mkfs, mount, expansion,
restore); elsewhere the demo says so and walks the controller's part of the same lifecycle on the
simulator's memory backing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from csi_oxide_lab import demo, harness
from tests.units import GIB


def test_the_demo_runs_its_story_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the demo's work directory lands here
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert " FAILED (" not in out and "demo FAILED" not in out
    assert "ControllerPublishVolume is refused" in out  # today's racks: hot-plug off
    steps = re.search(r"demo finished: (\d+) steps", out)
    assert steps is not None, out
    if os.geteuid() == 0 and Path("/dev/loop-control").exists():
        assert "ControllerExpandVolume to 2 GiB" in out
        assert "restored data intact" in out
        assert int(steps.group(1)) == 19
    else:
        assert "the controller's part of the lifecycle" in out
    assert harness.leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the work directory is removed


def test_without_root_the_controller_walks_the_whole_lifecycle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(demo, "_can_use_loop_devices", lambda: False)  # as a user without root
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert " FAILED (" not in out and "demo FAILED" not in out
    for step in (
        "CreateVolume 'demo-data'",
        "ControllerPublishVolume (attach to this node)",
        "CreateSnapshot 'demo-snap'",
        "ControllerUnpublishVolume (detach)",
        "ControllerExpandVolume to 2 GiB",
        "CreateVolume 'demo-restore' from the snapshot",
        "DeleteSnapshot",
        "ControllerPublishVolume is refused",
    ):
        assert step in out, step
    assert f"capacity {GIB} -> {2 * GIB} bytes" in out
    steps = re.search(r"demo finished: (\d+) steps", out)
    assert steps is not None and int(steps.group(1)) == 14, out
    assert list(tmp_path.iterdir()) == []
