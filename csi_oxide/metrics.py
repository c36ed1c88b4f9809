"""Prometheus metrics: RPCs by method and code, Oxide API requests by operation, work in flight.

Each process gets its own ``CollectorRegistry`` (no module-level globals), exposed on
``--metrics-address`` by ``serve_metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide.client import RequestRecord

_RPC_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The driver's metric families on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc_total = Counter(
            "csi_oxide_rpc_total",
            "CSI RPCs served, by method and gRPC status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "csi_oxide_rpc_duration_seconds",
            "Time to serve a CSI RPC",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )
        self.rpc_in_flight = Gauge(
            "csi_oxide_rpc_in_flight",
            "CSI RPCs being served now",
            ["method"],
            registry=self.registry,
        )
        self.oxide_total = Counter(
            "csi_oxide_oxide_requests_total",
            "Oxide API requests (attempts), by operation, HTTP status and outcome",
            ["operation", "status", "outcome"],
            registry=self.registry,
        )
        self.oxide_seconds = Histogram(
            "csi_oxide_oxide_request_duration_seconds",
            "Duration of one Oxide API request attempt",
            ["operation"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )

    # RpcObserver (csi_oxide.server.interceptor); the code arrives as the gRPC code's name.
    def rpc_started(self, method: str) -> None:
        """A call to ``method`` started."""
        self.rpc_in_flight.labels(method).inc()

    def rpc_finished(self, method: str, code: object, seconds: float) -> None:
        """A call to ``method`` ended with ``code`` (a grpc.StatusCode) after ``seconds``."""
        self.rpc_in_flight.labels(method).dec()
        self.rpc_total.labels(method, getattr(code, "name", str(code))).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def oxide_request(self, rec: RequestRecord) -> None:
        """``HttpOxideClient`` request observer."""
        status = str(rec.status) if rec.status is not None else "none"
        self.oxide_total.labels(rec.operation, status, rec.outcome).inc()
        self.oxide_seconds.labels(rec.operation).observe(rec.duration)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT`` for all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"--metrics-address {address!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice


def serve_metrics(metrics: Metrics, address: str) -> None:
    """Serve ``/metrics`` on ``address`` from a background thread."""
    host, port = parse_address(address)
    start_http_server(port, addr=host, registry=metrics.registry)
