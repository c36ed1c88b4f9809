"""A small HTTP/1.x listener for GET requests (``/metrics``, ``/healthz``) whose cost is bounded.

Everything runs on one event loop in one thread, plus a pool of two threads that compute the
answers (a liveness check may block for seconds). Each connection carries one request and is then
closed. The bounds:

- a request (request line and headers) must arrive within ``request_timeout`` seconds of the
  connection and fit in ``max_request_bytes``; otherwise the connection is closed without a word;
- at most ``max_connections`` connections are open at once. A new connection beyond that evicts
  the oldest one that has not finished sending its request yet (an idle or trickling client), so
  a flood of idle connections cannot keep the kubelet's probe out: a probe sends its request at
  once and is answered before many newer connections arrive. When every open connection is
  already being answered, the newcomer is closed at once;
- the answer must be written within ``request_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body and content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Answer = Callable[[str], Reply]  # the request's path (query cut off) -> the reply


@dataclass(frozen=True)
class Limits:
    """The listener's bounds (see the module's docstring)."""

    max_connections: int = 64
    request_timeout: float = 5.0
    max_request_bytes: int = 8192
    answer_threads: int = 2


class _BadRequestError(Exception):
    """The request could not be read or parsed; the connection is dropped."""


class BoundedHttpListener:
    """Serves ``answer`` on a bound listening socket from a thread of its own until ``close``."""

    def __init__(self, sock: socket.socket, answer: Answer, limits: Limits) -> None:
        self._sock = sock
        self._answer = answer
        self._limits = limits
        self._pool = ThreadPoolExecutor(limits.answer_threads, thread_name_prefix="http-answer")
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()
        # Connections still reading their request, oldest first (dict order): eviction victims.
        self._reading: dict[asyncio.StreamWriter, None] = {}
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="http-listener", daemon=True)
        self._thread.start()

    @property
    def server_address(self) -> tuple[str, int]:
        """The (host, port) the listener is bound to."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def open_connections(self) -> int:
        """How many connections are open now (an estimate, read from another thread)."""
        return len(self._open)

    def close(self) -> None:
        """Stop listening, drop every connection, and wait for the thread to end."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(
            self._connected, sock=self._sock, limit=self._limits.max_request_bytes
        )
        async with server:
            await self._stopped.wait()
        for writer in list(self._open):
            writer.transport.abort()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            writer.transport.abort()
            return
        self._open.add(writer)
        self._reading[writer] = None
        try:
            method, path = await self._read_request(reader)
            self._reading.pop(writer, None)
            reply = await self._reply(method, path)
            await self._send(writer, reply, with_body=method != "HEAD")
        except (_BadRequestError, OSError, TimeoutError, RuntimeError):
            pass  # a client that misbehaves or went away: nothing to tell anyone
        finally:
            self._forget(writer)
            if not writer.transport.is_closing():
                writer.transport.abort()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Make room for ``writer``: evict the oldest connection still reading, if need be."""
        if len(self._open) < self._limits.max_connections:
            return True
        victim = next(iter(self._reading), None)
        if victim is None:
            return False
        self._forget(victim)
        victim.transport.abort()
        return True

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        self._reading.pop(writer, None)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str]:
        """The method and path of a request read within the time and size bounds."""
        try:
            async with asyncio.timeout(self._limits.request_timeout):
                head = await _read_head(reader, self._limits.max_request_bytes)
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise _BadRequestError(str(exc)) from exc
        return _parse_request_line(head)

    async def _reply(self, method: str, path: str) -> Reply:
        if method not in ("GET", "HEAD"):
            return Reply(405, b"only GET is served here\n")
        return await self._loop.run_in_executor(self._pool, _safely, self._answer, path)

    async def _send(self, writer: asyncio.StreamWriter, reply: Reply, *, with_body: bool) -> None:
        """Write ``reply`` and close; everything must reach the kernel within the timeout."""
        writer.transport.set_write_buffer_limits(high=0)  # drain() waits for every byte
        writer.write(_encode(reply, with_body=with_body))
        async with asyncio.timeout(self._limits.request_timeout):
            await writer.drain()
        writer.close()


def _safely(answer: Answer, path: str) -> Reply:
    """``answer(path)``, or a 500 naming the error (a failing check must still answer)."""
    try:
        return answer(path)
    except Exception as exc:  # noqa: BLE001 - the client gets a status, not a dropped line
        return Reply(500, f"internal error: {type(exc).__name__}\n".encode())


async def _read_head(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The request line; the header lines after it are read (up to the blank line) and dropped."""
    first = await reader.readline()
    total = len(first)
    line = first
    while line not in (b"\r\n", b"\n"):
        line = await reader.readline()
        total += len(line)
        if not line or total > max_bytes:
            raise _BadRequestError("the request ended early or is too long")
    return first


def _parse_request_line(line: bytes) -> tuple[str, str]:
    """``GET /path?query HTTP/1.1`` -> ("GET", "/path")."""
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError("not an HTTP/1.x request line")
    return parts[0], parts[1].split("?", 1)[0]


def _encode(reply: Reply, *, with_body: bool) -> bytes:
    reason = HTTPStatus(reply.status).phrase
    head = (
        f"HTTP/1.1 {reply.status} {reason}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (reply.body if with_body else b"")


def bind(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def serve_http(
    host: str, port: int, answer: Answer, limits: Limits | None = None
) -> BoundedHttpListener:
    """Bind ``host:port`` now (so an address in use fails here) and serve ``answer`` on it."""
    sock = bind(host, port)
    try:
        return BoundedHttpListener(sock, answer, limits or Limits())
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
