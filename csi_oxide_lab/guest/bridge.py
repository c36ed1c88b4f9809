"""Forward byte streams between two endpoints: ``unix:PATH`` or ``tcp:HOST:PORT``.

The guest rack uses it twice for the node plugin's gRPC socket: inside the guest, from the
guest's own user-network address to the plugin's unix socket; on the host, from a unix socket to
qemu's forward, which listens on 127.0.0.1 only (nothing leaves the loopback range).
``python -m csi_oxide_lab.guest.bridge --listen A --connect B`` runs one until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
from pathlib import Path

_CHUNK = 65536


def _split(endpoint: str) -> tuple[str, str, int]:
    """``("unix", path, 0)`` or ``("tcp", host, port)``; ValueError when malformed."""
    kind, _, rest = endpoint.partition(":")
    if kind == "unix" and rest:
        return kind, rest.removeprefix("//"), 0
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return kind, host, int(port)
    raise ValueError(f"endpoint {endpoint!r}: use unix:PATH or tcp:HOST:PORT")


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _open(endpoint: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, where, port = _split(endpoint)
    if kind == "unix":
        return await asyncio.open_unix_connection(where)
    return await asyncio.open_connection(where, port)


async def _handle(connect: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await _open(connect)
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError, ConnectionError):
                await w.wait_closed()


async def serve(listen: str, connect: str) -> asyncio.Server:
    """Listen on ``listen``; each accepted connection is joined to a new one to ``connect``."""
    kind, where, port = _split(listen)
    _split(connect)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(connect, reader, writer)

    if kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)  # a stale socket of an earlier run
        server = await asyncio.start_unix_server(handle, where)
        os.chmod(where, 0o600)
        return server
    return await asyncio.start_server(handle, where, port)


class BridgeThread:
    """A bridge served by an event loop in a daemon thread (for synchronous owners)."""

    def __init__(self, listen: str, connect: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        failure: list[Exception] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(serve(listen, connect))
            except (OSError, ValueError) as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="csi-oxide-bridge", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join(10)
            self._loop.close()
            raise failure[0]

    def close(self) -> None:
        """Stop listening, drop the open connections, end the thread and close its loop."""
        server = self._server

        async def stop() -> None:
            if server is not None:
                server.close()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()


def main(argv: list[str] | None = None) -> int:
    """Serve one bridge until killed."""
    parser = argparse.ArgumentParser(prog="python -m csi_oxide_lab.guest.bridge")
    parser.add_argument("--listen", required=True, help="unix:PATH or tcp:HOST:PORT")
    parser.add_argument("--connect", required=True, help="unix:PATH or tcp:HOST:PORT")
    parser.add_argument("--ready-file", type=Path, help="created once the bridge listens")
    args = parser.parse_args(argv)

    async def forever() -> None:
        server = await serve(args.listen, args.connect)
        if args.ready_file is not None:
            args.ready_file.write_text("ready\n")
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(forever())
    except ValueError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
