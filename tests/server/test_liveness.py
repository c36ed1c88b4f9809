"""The /healthz check: a real CSI server on a real socket answers Probe, or the problem is named."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from csi_oxide.daemon.health import Health
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.liveness import combine, probe_socket


async def test_a_serving_plugin_is_alive_even_when_not_ready(tmp_path: Path) -> None:
    # Not ready (the Oxide API is down) must not restart the plugin: liveness ignores `ready`.
    server = CsiServer(
        f"unix://{tmp_path}/csi.sock", Services(identity=IdentityService(Health(ready=False)))
    )
    await server.start()
    try:
        # The check is blocking (it runs in the HTTP thread); run it off the event loop.
        assert await asyncio.to_thread(probe_socket, server.path, 5.0) is None
    finally:
        await server.stop(grace=1)
    assert probe_socket(server.path) == f"CSI socket {server.path} does not exist"


def test_a_socket_nobody_serves_fails_the_probe(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # bound, never listening: connections are refused
        problem = probe_socket(path, timeout=2.0)
    assert problem is not None
    assert problem.startswith(f"Probe on {path} failed: UNAVAILABLE")


def test_combine_reports_the_first_problem_in_order() -> None:
    calls: list[str] = []

    def ok() -> str | None:
        calls.append("ok")
        return None

    def first() -> str | None:
        calls.append("first")
        return "first problem"

    def second() -> str | None:
        calls.append("second")
        return "second problem"

    assert combine(ok, first, second)() == "first problem"
    assert calls == ["ok", "first"]
    assert combine(ok)() is None
