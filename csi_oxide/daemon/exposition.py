"""A small metrics registry and its Prometheus text exposition (format 0.0.4).

It stands in for prometheus_client, whose import (with hashlib, http.server, http.client, email,
urllib.request) cost the node plugin about 3 MiB of resident memory (``make bench``). For the same
families and observations it writes what prometheus_client's ``generate_latest`` wrote, byte for
byte but for the creation timestamps (tests/daemon/test_exposition.py compares the two): a counter
``NAME_total`` and a histogram ``NAME`` are each followed by a ``NAME_created`` gauge once they
have a series; histograms as cumulative ``NAME_bucket{le=...}`` then ``NAME_count`` and
``NAME_sum``; labels sorted by name; numbers as Go writes floats (``1.0``, ``1e+06``, ``+Inf``,
``NaN``).

Families are labelled: a series appears once its label values are first used. One lock guards a
registry: observations come from the event loop, the exposition from the listener's answer pool.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import ClassVar, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]  # (name, value) pairs
Sample = tuple[str, Labels, float]  # metric name, labels, value
Section = tuple[str, str, str, list[Sample]]  # name, type, help, samples: one # HELP/# TYPE block

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_float(value: float) -> str:
    """``value`` as Prometheus (Go) writes it, and as prometheus_client did."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent from 1e+06 on; Python later
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class _Family:
    """A labelled metric family: per series (its tuple of label values) a list of floats.
    Made by a ``Registry``, whose lock it shares."""

    kind: ClassVar[str]

    def __init__(
        self, lock: threading.Lock, name: str, documentation: str, labelnames: Sequence[str]
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        bad = [n for n in labelnames if not _LABEL.fullmatch(n) or n.startswith("__")]
        if not labelnames or bad or len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: invalid label names {list(labelnames)!r}")
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.created_name: str | None = None  # the name of the _created gauge, if any
        self._lock = lock
        self._width = 1  # floats per series
        self._series: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def _get(self, values: tuple[str, ...]) -> list[float]:
        """The series of ``values``, made on first use; the caller holds the lock."""
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{self.name}: label values {values!r} for {self.labelnames}")
            series = self._series[values] = [0.0] * self._width
            self._created[values] = time.time()
        return series

    def _labels(self, values: tuple[str, ...]) -> Labels:
        return tuple(zip(self.labelnames, values, strict=True))

    def _samples(self) -> list[Sample]:
        return [(self.name, self._labels(v), s[0]) for v, s in self._series.items()]

    def sections(self) -> list[Section]:
        """The family's blocks of the exposition; the caller holds the lock."""
        blocks = [(self.name, self.kind, self.documentation, self._samples())]
        if self.created_name is not None and self._created:
            created = [(self.created_name, self._labels(v), t) for v, t in self._created.items()]
            blocks.append((self.created_name, "gauge", self.documentation, created))
        return blocks


class Counter(_Family):
    kind = "counter"

    def __init__(
        self, lock: threading.Lock, name: str, documentation: str, labelnames: Sequence[str]
    ) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total: {name}")
        super().__init__(lock, name, documentation, labelnames)
        self.created_name = f"{name.removesuffix('_total')}_created"

    def inc(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._get(values)[0] += amount


class Gauge(_Family):
    kind = "gauge"

    def inc(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            self._get(values)[0] += amount

    def dec(self, values: tuple[str, ...], amount: float = 1.0) -> None:
        self.inc(values, -amount)


class Histogram(_Family):
    """Per series: the count in each bucket (not cumulative), then the sum."""

    kind = "histogram"

    def __init__(
        self,
        lock: threading.Lock,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Iterable[float],
    ) -> None:
        super().__init__(lock, name, documentation, labelnames)
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)) or "le" in self.labelnames:
            raise ValueError(f"{name}: buckets must increase, and le is not a label")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self.created_name = f"{name}_created"
        self._les = tuple(format_float(b) for b in bounds)
        self._width = len(bounds) + 1

    def observe(self, values: tuple[str, ...], amount: float) -> None:
        with self._lock:
            series = self._get(values)
            series[bisect.bisect_left(self.bounds, amount)] += 1
            series[-1] += amount

    def _samples(self) -> list[Sample]:
        samples: list[Sample] = []
        for values, series in self._series.items():
            labels = self._labels(values)
            count = 0.0
            for le, in_bucket in zip(self._les, series[:-1], strict=True):
                count += in_bucket
                samples.append((f"{self.name}_bucket", (*labels, ("le", le)), count))
            samples.append((f"{self.name}_count", labels, count))
            samples.append((f"{self.name}_sum", labels, series[-1]))
        return samples


_F = TypeVar("_F", bound=_Family)


class Registry:
    """The families of one process, in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: list[_Family] = []

    def _add(self, family: _F) -> _F:
        if any(f.name == family.name for f in self._families):
            raise ValueError(f"duplicate metric {family.name}")
        self._families.append(family)
        return family

    def counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> Counter:
        return self._add(Counter(self._lock, name, documentation, labelnames))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str]) -> Gauge:
        return self._add(Gauge(self._lock, name, documentation, labelnames))

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Iterable[float]
    ) -> Histogram:
        return self._add(Histogram(self._lock, name, documentation, labelnames, buckets))

    def collect(self) -> list[Section]:
        """Every block of the exposition, copied under the lock."""
        with self._lock:
            return [section for family in self._families for section in family.sections()]

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the sample ``name`` with exactly ``labels``, or None (for tests)."""
        wanted = labels or {}
        for _, _, _, samples in self.collect():
            for sample_name, sample_labels, value in samples:
                if sample_name == name and dict(sample_labels) == wanted:
                    return value
        return None

    def exposition(self) -> bytes:
        """The text exposition (format 0.0.4) of every family, UTF-8."""
        lines = []
        for name, kind, documentation, samples in self.collect():
            lines.append(f"# HELP {name} {escape_help(documentation)}\n# TYPE {name} {kind}\n")
            for sample_name, labels, value in samples:
                pairs = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sorted(labels))
                lines.append(f"{sample_name}{{{pairs}}} {format_float(value)}\n")
        return "".join(lines).encode()
