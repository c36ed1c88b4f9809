"""The short version of ``make chaos``: lifecycles under 503s while the plugins are killed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_a_short_storm_converges_without_leaks(tmp_path: Path, sanity_report) -> None:
    chaos = _chaos()
    report = await chaos.run_storm(tmp_path, volumes=3, kills=6, fail_rate=0.2)
    for line in report.lines():
        sanity_report(f"chaos (short): {line}")
    assert sum(report.kills.values()) >= 6
    assert report.lifecycles >= 3
    assert report.converged == report.lifecycles
    assert report.bad_answers == []
    assert report.lost == []
    assert report.leaks == []
    assert report.codes["OK"] > 0


async def test_a_short_storm_against_a_slow_api_converges(tmp_path: Path, sanity_report) -> None:
    """A share of answers trickle out (the operation done, the answer lost to the driver's 2 s
    request deadline): every lifecycle still converges and nothing is left behind."""
    chaos = _chaos()
    report = await chaos.run_storm(
        tmp_path, volumes=3, kills=2, fail_rate=0.05, slow_rate=0.1, oxide_timeout=2.0
    )
    for line in report.lines():
        sanity_report(f"chaos (short, slow API): {line}")
    assert report.lifecycles >= 3
    assert report.converged == report.lifecycles
    assert report.bad_answers == []
    assert report.lost == []
    assert report.leaks == []
