"""``RpcInterceptor``: one log line per call at its level (none built when the level is off),
a fresh request ID per call, and each method's wrapped handler made once."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import structlog

from csi_oxide import log
from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.health import Health
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.interceptor import RpcInterceptor


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The process's log configuration, put back afterwards; the test configures its own."""
    before = structlog.get_config()
    yield io.StringIO()
    structlog.configure(**before)


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[csi_grpc.IdentityAsyncStub]:
    server = CsiServer(f"unix://{tmp_path}/csi.sock", Services(identity=IdentityService(Health())))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{tmp_path}/csi.sock") as channel:
            stub: csi_grpc.IdentityAsyncStub = csi_grpc.IdentityStub(channel)
            yield stub
    finally:
        await server.stop(grace=1)


def _rpc_lines(out: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return [line for line in lines if line["event"] == "rpc"]


async def test_each_call_is_logged_once_with_its_own_request_id(
    identity: csi_grpc.IdentityAsyncStub, logged: io.StringIO
) -> None:
    log.configure(fmt="json", level="info", stream=logged)
    for _ in range(3):
        await identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    await identity.Probe(csi.ProbeRequest())  # a quiet method: debug level
    lines = _rpc_lines(logged)
    assert [(line["rpc"], line["code"], line["level"]) for line in lines] == [
        ("GetPluginCapabilities", "OK", "info")
    ] * 3
    ids = [str(line["request_id"]) for line in lines]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == 3


async def test_quiet_calls_show_at_debug_and_nothing_shows_below_the_level(
    identity: csi_grpc.IdentityAsyncStub, logged: io.StringIO
) -> None:
    log.configure(fmt="json", level="debug", stream=logged)
    await identity.Probe(csi.ProbeRequest())
    assert [(line["rpc"], line["level"]) for line in _rpc_lines(logged)] == [("Probe", "debug")]
    quiet = io.StringIO()
    log.configure(fmt="json", level="warning", stream=quiet)
    await identity.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    assert _rpc_lines(quiet) == []


class _Details(grpc.HandlerCallDetails):
    """What the server hands an interceptor about a call: its method name."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_a_methods_wrapped_handler_is_made_once_and_unknown_methods_are_not_kept() -> None:
    interceptor = RpcInterceptor()
    asked: list[str] = []

    async def handler(request: object, context: object) -> object:
        return request

    async def continuation(
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[object, object] | None:
        asked.append(details.method)
        if details.method.endswith("/Unknown"):
            return None
        return grpc.unary_unary_rpc_method_handler(handler)

    first = await interceptor.intercept_service(continuation, _Details("/csi.v1.Identity/Probe"))
    again = await interceptor.intercept_service(continuation, _Details("/csi.v1.Identity/Probe"))
    assert first is not None and again is first
    assert asked == ["/csi.v1.Identity/Probe"]
    for _ in range(3):
        missing = await interceptor.intercept_service(continuation, _Details("/x.Y/Unknown"))
        assert missing is None
    assert asked.count("/x.Y/Unknown") == 3  # asked every time, never remembered
