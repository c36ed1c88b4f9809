"""Our registry and text exposition against prometheus_client (a dev dependency only): for the
same observations the same text, byte for byte but for the creation timestamps, read back by
prometheus_client's own parser; the escaping, the float formatting and the lock."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as RefCounter
from prometheus_client import Gauge as RefGauge
from prometheus_client import Histogram as RefHistogram
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from csi_oxide.daemon.exposition import (
    CONTENT_TYPE,
    Registry,
    escape_help,
    escape_label_value,
    format_float,
)
from csi_oxide.daemon.metrics import Metrics

# prometheus_client's own float formatting (untyped there).
go_string = cast("Callable[[float], str]", floatToGoString)
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Reference:
    """The driver's families as they were declared with prometheus_client."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpc_total = RefCounter(
            "csi_oxide_rpc_total",
            "CSI RPCs served, by method and gRPC status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = RefHistogram(
            "csi_oxide_rpc_duration_seconds",
            "Time to serve a CSI RPC",
            ["method"],
            buckets=BUCKETS,
            registry=r,
        )
        self.rpc_in_flight = RefGauge(
            "csi_oxide_rpc_in_flight", "CSI RPCs being served now", ["method"], registry=r
        )
        self.oxide_total = RefCounter(
            "csi_oxide_oxide_requests_total",
            "Oxide API requests (attempts), by operation, HTTP status and outcome",
            ["operation", "status", "outcome"],
            registry=r,
        )
        self.oxide_seconds = RefHistogram(
            "csi_oxide_oxide_request_duration_seconds",
            "Duration of one Oxide API request attempt",
            ["operation"],
            buckets=BUCKETS,
            registry=r,
        )


@dataclass(frozen=True)
class Attempt:
    operation: str
    status: int | None
    outcome: str
    duration: float


# An observation: ("start", method) | ("finish", method, code, seconds) | ("oxide", Attempt)
Op = tuple[object, ...]


def replay(ops: Sequence[Op]) -> tuple[str, str]:
    """Our exposition and prometheus_client's after the same ``ops``."""
    ours, ref = Metrics(), Reference()
    for op in ops:
        if op[0] == "start":
            method = str(op[1])
            ours.rpc_started(method)
            ref.rpc_in_flight.labels(method).inc()
        elif op[0] == "finish":
            method, code, seconds = str(op[1]), str(op[2]), float(op[3])  # type: ignore[arg-type]
            ours.rpc_finished(method, code, seconds)
            ref.rpc_in_flight.labels(method).dec()
            ref.rpc_total.labels(method, code).inc()
            ref.rpc_seconds.labels(method).observe(seconds)
        else:
            rec = op[1]
            assert isinstance(rec, Attempt)
            ours.oxide_request(rec)
            status = "none" if rec.status is None else str(rec.status)
            ref.oxide_total.labels(rec.operation, status, rec.outcome).inc()
            ref.oxide_seconds.labels(rec.operation).observe(rec.duration)
    return ours.registry.exposition().decode(), generate_latest(ref.registry).decode()


_CREATED = re.compile(r"^(\S+_created(?:\{.*\})?) \S+$", re.MULTILINE)


def without_timestamps(text: str) -> str:
    """The exposition with each ``_created`` sample's value (a time) replaced by ``T``."""
    return _CREATED.sub(r"\1 T", text)


def parsed(text: str) -> list[tuple[object, ...]]:
    """The families as prometheus_client's parser reads them, creation times left out."""
    return [
        (
            family.name,
            family.type,
            family.documentation,
            [
                (s.name, s.labels, None if s.name.endswith("_created") else s.value)
                for s in family.samples
            ],
        )
        for family in text_string_to_metric_families(text)
    ]


ODD = 'back\\slash "quoted"\nnew line, üñí'
GOLDEN_OPS: list[Op] = [
    ("start", "CreateVolume"),
    ("start", "CreateVolume"),
    ("finish", "CreateVolume", "OK", 0.005),  # on a bound: in that bucket
    ("finish", "CreateVolume", "DEADLINE_EXCEEDED", 301.0),  # beyond the last bound: +Inf only
    ("start", ODD),
    ("finish", ODD, ODD, 0.0),
    ("start", "NodeStageVolume"),  # still in flight
    ("oxide", Attempt("disk_create", 201, "ok", 0.75)),
    ("oxide", Attempt("disk_create", 503, "http_error", 1.0)),
    ("oxide", Attempt("disk_view", None, "transport_error", 2.5e-7)),
    ("oxide", Attempt("disk_view", 200, "ok", 1234567.0)),
    ("oxide", Attempt(ODD, 200, "ok", 0.1 + 0.2)),
]


def test_the_same_text_as_prometheus_client_for_the_same_observations() -> None:
    ours, reference = replay(GOLDEN_OPS)
    assert without_timestamps(ours) == without_timestamps(reference)
    assert parsed(ours) == parsed(reference)
    assert '{code="OK",method="CreateVolume"} 1.0\n' in ours
    assert 'csi_oxide_rpc_duration_seconds_bucket{le="+Inf",method="CreateVolume"} 2.0' in ours
    assert "csi_oxide_oxide_request_duration_seconds_sum" in ours


def test_every_family_is_announced_before_any_observation() -> None:
    ours, reference = replay([])
    assert ours == reference
    assert [f[0] for f in parsed(ours)] == [
        "csi_oxide_rpc",
        "csi_oxide_rpc_duration_seconds",
        "csi_oxide_rpc_in_flight",
        "csi_oxide_oxide_requests",
        "csi_oxide_oxide_request_duration_seconds",
    ]


def test_creation_times_are_when_a_series_first_appeared() -> None:
    before = time.time()
    metrics = Metrics()
    metrics.rpc_finished("Probe", "OK", 0.1)
    value = metrics.registry.get_sample_value(
        "csi_oxide_rpc_created", {"method": "Probe", "code": "OK"}
    )
    assert value is not None
    assert before <= value <= time.time()
    assert metrics.registry.get_sample_value("csi_oxide_rpc_in_flight_created") is None


_LABEL_TEXT = st.text(max_size=8)
_SECONDS = st.floats(min_value=0, max_value=1e7, allow_nan=False)
_OP = st.one_of(
    st.tuples(st.just("start"), _LABEL_TEXT),
    st.tuples(st.just("finish"), _LABEL_TEXT, st.sampled_from(["OK", "INTERNAL"]), _SECONDS),
    st.tuples(
        st.just("oxide"),
        st.builds(
            Attempt,
            _LABEL_TEXT,
            st.one_of(st.none(), st.integers(100, 599)),
            st.sampled_from(["ok", "http_error"]),
            _SECONDS,
        ),
    ),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(ops=st.lists(_OP, max_size=20))
def test_any_observations_give_prometheus_clients_text(ops: list[Op]) -> None:
    ours, reference = replay(ops)
    assert without_timestamps(ours) == without_timestamps(reference)
    assert parsed(ours) == parsed(reference)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1.0"),
        (0.0, "0.0"),
        (-2.5, "-2.5"),
        (0.005, "0.005"),
        (300, "300.0"),
        (123456.0, "123456.0"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1.7966235276017475e09, "1.7966235276017475e+09"),
        (1e22, "1e+22"),
        (2.5e-7, "2.5e-07"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_floats_are_written_as_prometheus_expects(value: float, text: str) -> None:
    assert format_float(value) == text == go_string(value)


@given(st.floats())
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_any_float_is_written_as_prometheus_client_did(value: float) -> None:
    assert format_float(value) == go_string(value)


def test_label_values_and_help_are_escaped() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help('a\\b"c\nd') == 'a\\\\b"c\\nd'  # a double quote stays in HELP
    registry = Registry()
    registry.counter("odd_total", 'help with \\ and "quotes"\nand a line', ["v"]).inc((ODD,))
    text = registry.exposition().decode()
    assert '# HELP odd_total help with \\\\ and "quotes"\\nand a line\n' in text
    assert 'odd_total{v="back\\\\slash \\"quoted\\"\\nnew line, üñí"} 1.0\n' in text
    (family, _created) = text_string_to_metric_families(text)
    assert family.documentation == 'help with \\ and "quotes"\nand a line'
    assert family.samples[0].labels == {"v": ODD}


def test_concurrent_observations_and_scrapes_lose_nothing() -> None:
    metrics = Metrics()
    scrapes: list[str] = []

    def observe() -> None:
        for _ in range(2000):
            metrics.rpc_started("Probe")
            metrics.rpc_finished("Probe", "OK", 0.01)

    def scrape() -> None:
        for _ in range(50):
            scrapes.append(metrics.registry.exposition().decode())

    threads = [threading.Thread(target=observe) for _ in range(4)]
    threads.append(threading.Thread(target=scrape))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    value = metrics.registry.get_sample_value
    assert value("csi_oxide_rpc_total", {"method": "Probe", "code": "OK"}) == 8000
    assert value("csi_oxide_rpc_duration_seconds_count", {"method": "Probe"}) == 8000
    assert value("csi_oxide_rpc_in_flight", {"method": "Probe"}) == 0
    for text in scrapes:  # each scrape is whole: a histogram's count is its +Inf bucket
        counts = re.findall(r'_count\{method="Probe"\} (\S+)', text)
        infs = re.findall(r'_bucket\{le="\+Inf",method="Probe"\} (\S+)', text)
        assert counts == infs


@pytest.mark.parametrize(
    "make",
    [
        lambda r: r.counter("no_suffix", "h", ["a"]),  # a counter's name ends in _total
        lambda r: r.counter("bad-name_total", "h", ["a"]),
        lambda r: r.gauge("g", "h", []),  # families are labelled
        lambda r: r.gauge("g", "h", ["a", "a"]),
        lambda r: r.gauge("g", "h", ["__reserved"]),
        lambda r: r.histogram("h", "h", ["le"], [1]),
        lambda r: r.histogram("h", "h", ["a"], [2, 1]),
    ],
)
def test_bad_families_are_refused(make: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        make(Registry())  # type: ignore[operator]


def test_a_name_is_registered_once_and_label_values_must_fit() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "h", ["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        registry.gauge("g", "h", ["a"])
    with pytest.raises(ValueError, match="label values"):
        gauge.inc(("only one",))
    with pytest.raises(ValueError, match="only goes up"):
        registry.counter("c_total", "h", ["a"]).inc(("x",), -1)
    assert (
        registry.exposition()
        == b"# HELP g h\n# TYPE g gauge\n# HELP c_total h\n# TYPE c_total counter\n"
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
