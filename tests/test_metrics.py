"""Prometheus metrics: filled by real RPCs and real Oxide requests, served over HTTP."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import httpx
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.errors import ConfigurationError
from csi_oxide.health import Health
from csi_oxide.metrics import Metrics, parse_address, serve_metrics
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.errors import OxideNotFoundError
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.sim import SimConfig, Simulator


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
        transport=httpx.ASGITransport(app=sim.asgi_app()),
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
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'csi_oxide_oxide_requests_total{operation="disk_list"' in text
    assert sim.token not in text


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
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"{base}/healthz")
            assert (ok.status_code, ok.text) == (200, "ok\n")
            problems[0] = "CSI socket /csi/csi.sock does not exist"
            bad = await client.get(f"{base}/healthz")
            assert bad.status_code == 503
            assert "CSI socket /csi/csi.sock does not exist" in bad.text
            metrics = await client.get(f"{base}/metrics")
            assert metrics.status_code == 200
            assert "csi_oxide_rpc_total" in metrics.text
            assert (await client.get(f"{base}/other")).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
