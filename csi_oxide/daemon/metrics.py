"""Prometheus metrics: RPCs by method and code, Oxide API requests by operation, work in flight.

Each process gets its own ``Registry`` (no module-level globals; ``csi_oxide.daemon.exposition``,
not prometheus_client, which cost the node plugin megabytes), exposed on ``--metrics-address`` by
``serve_metrics``, which also answers the liveness probe on ``/healthz``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from csi_oxide.daemon.exposition import CONTENT_TYPE, Registry
from csi_oxide.daemon.listener import Answer, BoundedHttpListener, Limits, Reply, serve_http
from csi_oxide.errors import ConfigurationError

_RPC_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class OxideAttempt(Protocol):
    """What the metrics read of one Oxide API request attempt: the HTTP client's
    ``RequestRecord`` is one. Stated here so that this module, which the node plugin loads too,
    does not import the client (and with it the HTTP library)."""

    @property
    def operation(self) -> str: ...
    @property
    def status(self) -> int | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def duration(self) -> float: ...


class Metrics:
    """The driver's metric families on one registry."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        self.rpc_total = self.registry.counter(
            "csi_oxide_rpc_total",
            "CSI RPCs served, by method and gRPC status code",
            ["method", "code"],
        )
        self.rpc_seconds = self.registry.histogram(
            "csi_oxide_rpc_duration_seconds", "Time to serve a CSI RPC", ["method"], _RPC_BUCKETS
        )
        self.rpc_in_flight = self.registry.gauge(
            "csi_oxide_rpc_in_flight", "CSI RPCs being served now", ["method"]
        )
        self.oxide_total = self.registry.counter(
            "csi_oxide_oxide_requests_total",
            "Oxide API requests (attempts), by operation, HTTP status and outcome",
            ["operation", "status", "outcome"],
        )
        self.oxide_seconds = self.registry.histogram(
            "csi_oxide_oxide_request_duration_seconds",
            "Duration of one Oxide API request attempt",
            ["operation"],
            _RPC_BUCKETS,
        )

    # RpcObserver (csi_oxide.server.interceptor); the code arrives as the gRPC code's name.
    def rpc_started(self, method: str) -> None:
        """A call to ``method`` started."""
        self.rpc_in_flight.inc((method,))

    def rpc_finished(self, method: str, code: object, seconds: float) -> None:
        """A call to ``method`` ended with ``code`` (a grpc.StatusCode) after ``seconds``."""
        self.rpc_in_flight.dec((method,))
        name = getattr(code, "name", None)
        self.rpc_total.inc((method, str(code) if name is None else name))
        self.rpc_seconds.observe((method,), seconds)

    def oxide_request(self, rec: OxideAttempt) -> None:
        """``HttpOxideClient`` request observer."""
        status = str(rec.status) if rec.status is not None else "none"
        self.oxide_total.inc((rec.operation, status, rec.outcome))
        self.oxide_seconds.observe((rec.operation,), rec.duration)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT`` for all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"--metrics-address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice


LivenessCheck = Callable[[], "str | None"]


def _answer(metrics: Metrics, liveness: LivenessCheck | None) -> Answer:
    def answer(path: str) -> Reply:
        if path == "/metrics":
            return Reply(200, metrics.registry.exposition(), CONTENT_TYPE)
        if path in ("/healthz", "/livez"):
            problem = liveness() if liveness is not None else None
            if problem is None:
                return Reply(200, b"ok\n")
            return Reply(503, f"unhealthy: {problem}\n".encode())
        return Reply(404, b"not found: try /metrics or /healthz\n")

    return answer


def serve_metrics(
    metrics: Metrics,
    address: str,
    liveness: LivenessCheck | None = None,
    limits: Limits | None = None,
) -> BoundedHttpListener:
    """Serve ``/metrics`` and ``/healthz`` on ``address`` from a background thread.

    ``/healthz`` answers 200 when ``liveness`` (run per request) reports no problem, else 503 with
    the problem; without a check it answers 200 while the process serves HTTP. The listener's
    connections, threads and time per request are bounded by ``limits`` (see
    ``csi_oxide.daemon.listener``), so idle or slow clients cannot exhaust memory or starve the
    probe.
    """
    host, port = parse_address(address)
    return serve_http(host, port, _answer(metrics, liveness), limits)
