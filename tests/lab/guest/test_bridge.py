"""The byte-stream bridge: unix socket to TCP and back, several connections at once."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from csi_oxide_lab.guest import bridge


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_forwards_each_connection_both_ways(tmp_path: Path) -> None:
    upstream, port = await _echo_server()
    path = tmp_path / "b.sock"
    server = await bridge.serve(f"unix:{path}", f"tcp:127.0.0.1:{port}")
    try:
        assert path.stat().st_mode & 0o777 == 0o600  # only its owner may talk to the plugin

        async def talk(word: bytes) -> bytes:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(word * 50000)  # more than one read's worth
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            return answer

        answers = await asyncio.gather(talk(b"ab"), talk(b"cd"), talk(b"ef"))
        assert list(answers) == [b"AB" * 50000, b"CD" * 50000, b"EF" * 50000]
    finally:
        server.close()
        upstream.close()


async def test_an_unreachable_upstream_closes_the_connection(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    server = await bridge.serve(f"unix:{path}", f"unix:{tmp_path / 'nobody.sock'}")
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await reader.read() == b""
        writer.close()
    finally:
        server.close()


@pytest.mark.parametrize("endpoint", ["tcp:nohost", "udp:1.2.3.4:5", "unix:", "tcp::12"])
async def test_malformed_endpoints_are_refused(endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use unix:PATH or tcp:HOST:PORT"):
        await bridge.serve(endpoint, f"unix:{tmp_path / 'x.sock'}")


def test_bridge_thread_serves_a_synchronous_owner(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    path = tmp_path / "t.sock"
    thread = bridge.BridgeThread(f"unix:{path}", f"tcp:127.0.0.1:{port}")
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(path))
        client.sendall(b"ping")
        upstream, _ = listener.accept()
        upstream.settimeout(10)
        assert upstream.recv(4) == b"ping"
        upstream.sendall(b"pong")
        client.settimeout(10)
        assert client.recv(4) == b"pong"
        client.close()
        upstream.close()
    finally:
        thread.close()
        listener.close()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ConnectionRefusedError):
            probe.connect(str(path))  # closed: nobody listens any more
    finally:
        probe.close()
