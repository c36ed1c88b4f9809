"""scripts/bench_verdict.py: a bench figure's spread, its outlier rule and its plausibility
floor, as pure functions; and the bench's rows printing the verdict they are given."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    path = ROOT / "scripts" / "bench_verdict.py"
    spec = importlib.util.spec_from_file_location("bench_verdict", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_verdict"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bv = _load()

# The run that prompted the rules: NodeStage of a 1023 GiB disk 115 ms, of a 10 GiB disk 20.7 s
# (a stall), printed as "stage 1023 GiB / 10 GiB: 0.01 (goal <= 2: met)"; the next run 88 ms.
STALLED_RATIO = 0.115 / 20.7


def test_a_series_has_its_median_extremes_and_relative_spread() -> None:
    s = bv.Spread.of("stage", [0.2, 0.1, 0.4])
    assert (s.low, s.median, s.high) == (0.1, 0.2, 0.4)
    assert s.relative == pytest.approx(1.5)
    assert bv.Spread.of("same", [0.3, 0.3, 0.3]).relative == 0.0


def test_a_series_needs_a_run() -> None:
    with pytest.raises(ValueError, match="no runs"):
        bv.Spread.of("empty", [])


def test_the_spread_is_printed_with_its_runs() -> None:
    text = bv.Spread.of("stage", [0.088, 20.7, 0.09]).describe()
    assert text == "median 90.0 ms of 3 (min 88.0 ms, max 20.7 s, spread 22902%)"
    assert bv.Spread.of("one", [0.5]).describe() == "500 ms, one run"
    assert bv.Spread.of("zero", [0.0, 0.0, 0.01]).describe().endswith("spread infinite)")


def test_a_stalled_run_among_three_is_an_outlier() -> None:
    assert bv.Spread.of("10 GiB", [20.7, 0.088, 0.09]).outliers() == (0,)
    assert bv.Spread.of("1023 GiB", [0.115, 0.12, 0.11]).outliers() == ()


def test_an_outlier_is_more_than_the_factor_off_the_median_either_way() -> None:
    factor = bv.OUTLIER_FACTOR
    assert bv.Spread.of("up", [1.0, 1.0, factor]).outliers() == ()
    assert bv.Spread.of("up", [1.0, 1.0, factor * 1.01]).outliers() == (2,)
    assert bv.Spread.of("down", [1.0, 1.0, 1 / factor]).outliers() == ()
    assert bv.Spread.of("down", [1.0, 1.0, 0.99 / factor]).outliers() == (2,)


def test_fewer_runs_than_the_rule_needs_have_no_outliers() -> None:
    # Two runs: the median is their mean, which the stalled one drags; no rule can tell.
    assert bv.MIN_RUNS == 3
    assert bv.Spread.of("pair", [0.09, 20.7]).outliers() == ()
    assert bv.Spread.of("one", [20.7]).outliers() == ()


def test_runs_within_the_resolution_of_the_median_are_no_outliers() -> None:
    ticks = [0.0, 0.01, 0.01, 0.02, 0.01]  # CPU seconds read in 10 ms ticks
    assert bv.Spread.of("cpu", ticks).outliers() == (0,)
    assert bv.Spread.of("cpu", ticks, resolution=0.02).outliers() == ()
    assert bv.Spread.of("cpu", [*ticks, 0.2], resolution=0.02).outliers() == (5,)


def test_a_zero_median_makes_every_nonzero_run_an_outlier() -> None:
    assert bv.Spread.of("zeros", [0.0, 0.0, 0.0, 0.5]).outliers() == (3,)
    assert bv.Spread.of("zeros", [0.0, 0.0, 0.0]).outliers() == ()


def test_the_reported_stall_is_an_invalid_measurement_not_met() -> None:
    verdict = bv.judge(STALLED_RATIO, STALLED_RATIO <= 2, floor=bv.SAME_WORK_FLOOR)
    assert verdict.met is None
    assert verdict.text.startswith("INVALID: 0.01 is below 0.5")
    assert "met" not in verdict.text


def test_an_outlier_makes_a_plausible_figure_invalid() -> None:
    big = bv.Spread.of("NodeStage 1023 GiB", [0.115, 0.12, 0.11])
    small = bv.Spread.of("NodeStage 10 GiB", [20.7, 0.088, 0.09])
    ratio = big.median / small.median  # the medians hide the stall: 1.28
    verdict = bv.judge(ratio, ratio <= 2, floor=bv.SAME_WORK_FLOOR, series=[big, small])
    assert verdict.met is None
    assert verdict.text == (
        "INVALID: NodeStage 10 GiB: run 1 of 3 took 20.7 s, more than 3x off its median "
        "90.0 ms (rerun it)"
    )


def test_a_figure_that_is_not_a_number_is_invalid() -> None:
    for value in (math.nan, math.inf):
        verdict = bv.judge(value, True)
        assert verdict.invalid is not None
        assert verdict.text.startswith("INVALID")


def test_a_clean_measurement_is_judged_by_its_goal() -> None:
    runs = [bv.Spread.of("a", [1.0, 1.1, 0.9]), bv.Spread.of("b", [0.8, 0.85, 0.9])]
    assert bv.judge(1.2, True, floor=bv.SAME_WORK_FLOOR, series=runs).text == "met"
    assert bv.judge(2.5, False, floor=bv.SAME_WORK_FLOOR, series=runs).text == "NOT met"
    assert bv.judge(0.5, True, floor=bv.SAME_WORK_FLOOR).text == "met"  # the floor itself
    assert bv.judge(1.0, True).text == "met"  # no floor, no series
    assert bv.Verdict(None).text == "n/a"


def test_seconds_are_printed_in_a_readable_unit() -> None:
    assert bv.seconds_text(0.0214) == "21.4 ms"
    assert bv.seconds_text(0.115) == "115 ms"
    assert bv.seconds_text(9.5) == "9500 ms"
    assert bv.seconds_text(20.7) == "20.7 s"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))  # it imports its siblings, as when it runs
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def test_the_stage_sizes_figure_of_the_reported_run_is_invalid(bench: ModuleType) -> None:
    # As the bench measured it then, one run of each: the ratio is implausible.
    figure, goal, verdict = bench.stage_sizes_figure([0.115], [20.7])
    assert figure.startswith("0.01 (115 ms, one run / 20.7 s, one run)")
    assert goal == "<= 2"
    assert verdict.text.startswith("INVALID: 0.01 is below 0.5")
    # As it measures now, three of each in turns: the medians agree, the stalled run does not.
    figure, _, verdict = bench.stage_sizes_figure([0.115, 0.12, 0.11], [20.7, 0.088, 0.09])
    assert figure.startswith("1.28 (median 115 ms of 3")
    assert verdict.text.startswith("INVALID: NodeStage 10 GiB: run 1 of 3 took 20.7 s")
    # A clean measurement.
    _, _, verdict = bench.stage_sizes_figure([0.115, 0.12, 0.11], [0.088, 0.09, 0.095])
    assert verdict.text == "met"


def test_a_row_prints_its_verdict(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.ROWS.clear()
    bench.row("stage", "0.01", "<= 2", bv.judge(0.01, True, floor=0.5))
    bench.row("plain", "1.00", "<= 2", True)
    bench.row("skipped", "skipped: not root", "<= 2", None)
    verdicts = [r[3] for r in bench.ROWS]
    assert verdicts[0].startswith("INVALID: 0.01 is below 0.5")
    assert verdicts[1:] == ["met", "n/a"]
    assert "(goal <= 2: INVALID: 0.01 is below 0.5" in capsys.readouterr().out
    bench.ROWS.clear()
