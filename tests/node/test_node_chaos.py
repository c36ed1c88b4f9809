"""The short version of ``make node-chaos``: kill -9 the node plugin inside its RPCs, retry,
converge with the data intact and ``fsck -n`` clean (root: loop devices, mkfs, mount)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parent.parent.parent


def _node_chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_chaos", ROOT / "scripts" / "node_chaos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["node_chaos"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_kills_inside_node_rpcs_converge_with_data_intact(
    tmp_path: Path, sanity_report
) -> None:
    report = await _node_chaos().run_storm(tmp_path, kills=6, seed=12, kept=1)
    for line in report.lines():
        sanity_report(f"node chaos (short): {line}")
    assert sum(report.kills.values()) == 6
    assert report.lifecycles >= 3
    assert report.converged == report.lifecycles
    assert report.kills["mkfs"] >= 1
    assert report.data_checks >= 1 and report.data_ok == report.data_checks
    assert report.fsck_runs == report.lifecycles and report.fsck_clean == report.fsck_runs
    assert report.problems == []
    assert set(report.codes) <= {"OK", "UNAVAILABLE"}
