"""Prometheus metrics: filled by real RPCs and real Oxide requests, served over HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.daemon.health import Health
from csi_oxide.daemon.listener import BoundedHttpListener, Limits
from csi_oxide.daemon.metrics import Metrics, parse_address, serve_metrics
from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.errors import OxideNotFoundError
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide_lab.asgi import AsgiCarrier
from csi_oxide_lab.sim import SimConfig, Simulator
from tests.plain_http import get
from tests.polling import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_rpcs_are_counted_by_method_and_code(tmp_path: Path) -> None:
    metrics = Metrics()
    server = CsiServer(
        f"unix://{tmp_path}/csi.sock",
        Services(identity=IdentityService(Health()), observers=[metrics]),
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{tmp_path}/csi.sock") as channel:
            identity = csi_grpc.IdentityStub(channel)
            for _ in range(3):
                await identity.GetPluginInfo(csi.GetPluginInfoRequest())
            with pytest.raises(grpc.aio.AioRpcError):
                await csi_grpc.NodeStub(channel).NodeGetInfo(csi.NodeGetInfoRequest())
    finally:
        await server.stop(grace=1)
    value = metrics.registry.get_sample_value
    assert value("csi_oxide_rpc_total", {"method": "GetPluginInfo", "code": "OK"}) == 3
    assert value("csi_oxide_rpc_duration_seconds_count", {"method": "GetPluginInfo"}) == 3
    assert value("csi_oxide_rpc_in_flight", {"method": "GetPluginInfo"}) == 0


async def test_oxide_requests_are_counted_and_served_without_the_token() -> None:
    metrics = Metrics()
    sim = Simulator(SimConfig())
    api = HttpOxideClient(
        "http://sim",
        lambda: sim.token,
        "csi",
        carrier=AsgiCarrier(sim.asgi_app()),
        request_observer=metrics.oxide_request,
    )
    await api.disk_list()
    with pytest.raises(OxideNotFoundError):
        await api.disk_view("missing-disk")
    await api.aclose()
    value = metrics.registry.get_sample_value
    labels = {"operation": "disk_view", "status": "404"}
    assert value("csi_oxide_oxide_requests_total", {**labels, "outcome": "http_error"}) == 1
    port = _free_port()
    serve_metrics(metrics, f"127.0.0.1:{port}")
    answer = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
    text = answer.text
    assert 'csi_oxide_oxide_requests_total{operation="disk_list"' in text
    assert sim.token not in text
    # Read back by an independent parser (prometheus_client's, a dev dependency only).
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["csi_oxide_oxide_requests"].type == "counter"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    key = (*sorted({**labels, "outcome": "http_error"}.items()),)
    assert samples["csi_oxide_oxide_requests_total", key] == 1
    count = ("csi_oxide_oxide_request_duration_seconds_count", (("operation", "disk_view"),))
    inf = (
        "csi_oxide_oxide_request_duration_seconds_bucket",
        (("le", "+Inf"), ("operation", "disk_view")),
    )
    assert samples[count] == samples[inf] == 1


@pytest.mark.parametrize(
    ("address", "parsed"),
    [("127.0.0.1:9090", ("127.0.0.1", 9090)), (":9090", ("0.0.0.0", 9090))],  # noqa: S104
)
def test_address(address: str, parsed: tuple[str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["9090", "host:", "host:99999", "host:http"])
def test_bad_address(address: str) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        parse_address(address)


async def test_healthz_answers_from_the_liveness_check_beside_metrics() -> None:
    problems: list[str | None] = [None]
    server = serve_metrics(Metrics(), f"127.0.0.1:{_free_port()}", liveness=lambda: problems[0])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = await asyncio.to_thread(get, f"{base}/healthz")
        assert (ok.status_code, ok.text) == (200, "ok\n")
        problems[0] = "CSI socket /csi/csi.sock does not exist"
        bad = await asyncio.to_thread(get, f"{base}/healthz")
        assert bad.status_code == 503
        assert "CSI socket /csi/csi.sock does not exist" in bad.text
        metrics = await asyncio.to_thread(get, f"{base}/metrics")
        assert metrics.status_code == 200
        assert "csi_oxide_rpc_total" in metrics.text
        assert (await asyncio.to_thread(get, f"{base}/other")).status_code == 404
    finally:
        server.close()


def _proc_status(key: str) -> int:
    """A number from /proc/self/status (Threads, or VmRSS in KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _get(port: int, path: str, request: bytes | None = None) -> bytes:
    """The status line of a request sent on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request or f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        return conn.recv(4096).split(b"\r\n", 1)[0]


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset


@pytest.fixture
def listener() -> Iterator[BoundedHttpListener]:
    limits = Limits(max_connections=64, request_timeout=2.0, max_request_bytes=2048)
    server = serve_metrics(Metrics(), f"127.0.0.1:{_free_port()}", liveness=None, limits=limits)
    yield server
    server.close()


def test_idle_connections_are_bounded_and_closed_while_healthz_answers(
    listener: BoundedHttpListener,
) -> None:
    port = listener.server_address[1]
    assert _get(port, "/healthz").endswith(b" 200 OK")
    threads, fds, rss = _proc_status("Threads"), _open_fds(), _proc_status("VmRSS")
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(500)]
    try:
        # Every slot is held by an idle connection: the probe still gets in, and answered.
        assert _get(port, "/healthz").endswith(b" 200 OK")
        assert _proc_status("Threads") <= threads + 2  # the answer pool's second thread
        assert listener.open_connections() <= 64
        assert _open_fds() - fds - len(idle) <= 64 + 2
        assert _proc_status("VmRSS") - rss < 4 * 1024  # KiB; the client sockets included
        for conn in idle:
            conn.setblocking(False)
        assert wait_until(lambda: all(_closed_by_peer(c) for c in idle), 15.0)
        assert wait_until(lambda: listener.open_connections() == 0, 5.0)
    finally:
        for conn in idle:
            conn.close()


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /healthz HTTP/1.1\r\n", b"GET /" + b"a" * 4096 + b" HTTP/1.1\r\n\r\n"],
    ids=["unfinished", "too-long"],
)
def test_a_request_that_never_completes_is_dropped(
    listener: BoundedHttpListener, request_bytes: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", listener.server_address[1]), timeout=5) as conn:
        conn.sendall(request_bytes)
        started = time.monotonic()
        assert conn.recv(4096) == b""  # closed without an answer
        assert time.monotonic() - started < 4.0


def test_only_get_is_answered(listener: BoundedHttpListener) -> None:
    port = listener.server_address[1]
    post = b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    assert _get(port, "", post) == b"HTTP/1.1 405 Method Not Allowed"
    assert _get(port, "/metrics?x=1") == b"HTTP/1.1 200 OK"


def test_a_failing_liveness_check_answers_500() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    server = serve_metrics(Metrics(), f"127.0.0.1:{_free_port()}", liveness=broken)
    try:
        status = _get(server.server_address[1], "/healthz")
        assert status == b"HTTP/1.1 500 Internal Server Error"
    finally:
        server.close()
