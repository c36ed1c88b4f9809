"""The verdict on a ``make bench`` figure: the spread of its runs, and when not to believe it.

A figure computed from repeated runs (a median of 3, of 7, of 40) prints its runs' spread:
``Spread.describe`` gives the median, the fastest and the slowest run, and the relative spread
(slowest - fastest) / median.

It is judged by three rules, in this order:

1. **Plausibility.** Every ratio the bench prints has a floor below which no real machine can
   measure it: a NodeStage of a 1023 GiB disk does the same fixed work as one of a 10 GiB disk
   (the same number of zero-check reads, a mkfs with lazy initialisation, a mount) plus a little
   more metadata, so 1023 GiB / 10 GiB cannot be far below 1; 100 volumes at once cannot finish
   well before one alone. A ratio under its floor (``judge(floor=...)``), or one that is not a
   finite number, says that one side of the measurement failed (it stalled, or it did not do
   the work), not that the goal is met: the verdict is INVALID.
2. **Outliers.** A run is an outlier when it lies more than ``OUTLIER_FACTOR`` times above, or
   below 1 / ``OUTLIER_FACTOR`` times, the median of all the runs of its series (timings are
   positive and their noise is multiplicative, so the distance is a ratio), and further from
   it than the measurement's resolution (``Spread.resolution``: CPU time comes in 10 ms
   ticks, and 0 against 1 tick is no outlier). The median of three
   or more runs is not moved by one outlier, so the rule holds from ``MIN_RUNS`` runs on; a
   series with fewer runs has no spread to judge and the rule says nothing about it. A series
   with an outlier makes the verdict INVALID: a run that took 200 times as long as its siblings
   says the machine (or the code) did something the median hides, and the figure is rerun, not
   believed.
3. **The goal.** Only then is the goal met or not.

The bench prints an INVALID verdict with its reason in place of "met" or "NOT met".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A run this many times above or below its series' median is an outlier (rule 2).
OUTLIER_FACTOR = 3.0
# The fewest runs whose median one outlier cannot move (rule 2).
MIN_RUNS = 3
# The floor of a ratio whose numerator does at least the work of its denominator (rule 1):
# physically about 1 or more; noise on a quiet machine moves it by tens of percent, never by half.
SAME_WORK_FLOOR = 0.5


def seconds_text(seconds: float) -> str:
    """A duration as the bench prints it: tenths of milliseconds below 0.1 s, milliseconds
    below 10 s, tenths of seconds above."""
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 10:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


@dataclass(frozen=True, slots=True)
class Spread:
    """The runs of one series of a figure (durations in seconds, in the order they ran)."""

    name: str
    runs: tuple[float, ...]
    # What the measurement cannot tell apart (CPU time read in 10 ms ticks): a run this close
    # to the median is never an outlier, however many times the median it is.
    resolution: float = 0.0

    @classmethod
    def of(cls, name: str, runs: Iterable[float], *, resolution: float = 0.0) -> Spread:
        """The series ``name`` of ``runs``; ValueError when there are none."""
        got = tuple(runs)
        if not got:
            raise ValueError(f"series {name!r} has no runs")
        return cls(name, got, resolution)

    @property
    def median(self) -> float:
        """The median run."""
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        """The fastest run."""
        return min(self.runs)

    @property
    def high(self) -> float:
        """The slowest run."""
        return max(self.runs)

    @property
    def relative(self) -> float:
        """(slowest - fastest) / median: 0 for identical runs; infinite for a zero median."""
        if self.median <= 0:
            return math.inf if self.high > self.low else 0.0
        return (self.high - self.low) / self.median

    def outliers(self) -> tuple[int, ...]:
        """Indexes of the runs outside ``OUTLIER_FACTOR`` of the median (rule 2); none with
        fewer than ``MIN_RUNS`` runs."""
        if len(self.runs) < MIN_RUNS:
            return ()
        median = self.median
        return tuple(
            i
            for i, run in enumerate(self.runs)
            if abs(run - median) > self.resolution and _far(run, median)
        )

    def describe(self) -> str:
        """'median M of N (min A, max B, spread S%)'; one run: 'one run' (no spread)."""
        if len(self.runs) == 1:
            return f"{seconds_text(self.runs[0])}, one run"
        return (
            f"median {seconds_text(self.median)} of {len(self.runs)} (min "
            f"{seconds_text(self.low)}, max {seconds_text(self.high)}, spread "
            f"{_percent(self.relative)})"
        )


def _far(run: float, median: float) -> bool:
    if median <= 0:
        return run > 0  # all but the zeros are infinitely far from a zero median
    return run > median * OUTLIER_FACTOR or run * OUTLIER_FACTOR < median


def _percent(relative: float) -> str:
    return "infinite" if math.isinf(relative) else f"{relative:.0%}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A figure's verdict: ``met`` (None: no goal was judged), or ``invalid``, why the
    measurement failed (then the goal is neither met nor missed)."""

    met: bool | None
    invalid: str | None = None

    @property
    def text(self) -> str:
        """'met', 'NOT met', 'n/a', or 'INVALID: why' (never 'met' when invalid)."""
        if self.invalid is not None:
            return f"INVALID: {self.invalid}"
        if self.met is None:
            return "n/a"
        return "met" if self.met else "NOT met"


def judge(
    value: float, meets_goal: bool, *, floor: float | None = None, series: Sequence[Spread] = ()
) -> Verdict:
    """The verdict on ``value`` (whose goal is ``meets_goal``): INVALID when it is not a finite
    number or lies under ``floor`` (rule 1), or when a run of ``series`` is an outlier (rule 2);
    else met or not met (rule 3)."""
    if not math.isfinite(value):
        return Verdict(None, f"the figure is {value}, not a number any measurement gives")
    if floor is not None and value < floor:
        return Verdict(
            None,
            f"{value:.2f} is below {floor:g}, which no machine can measure here; one side of "
            "the measurement failed (rerun it)",
        )
    for spread in series:
        far = spread.outliers()
        if far:
            runs = ", ".join(
                f"run {i + 1} of {len(spread.runs)} took {seconds_text(spread.runs[i])}"
                for i in far
            )
            return Verdict(
                None,
                f"{spread.name}: {runs}, more than {OUTLIER_FACTOR:g}x off its median "
                f"{seconds_text(spread.median)} (rerun it)",
            )
    return Verdict(meets_goal)
