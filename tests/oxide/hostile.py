"""A small, deliberately misbehaving HTTP/1.1 server on 127.0.0.1 standing in for the Oxide API.

It speaks just enough HTTP over raw asyncio streams to do what a well-behaved framework would
never let a test do: trickle a status line or a body one byte at a time, announce a body and never
send it, answer with fifty megabytes, redirect elsewhere. What it answers is decided per request by
a ``behave`` function of the test (``Seen`` -> ``Answer``); every request it saw is kept in
``seen`` (headers and body included, so a test can check what the client sent, and the number of
the connection it came on, so a test can tell a kept-alive connection from a new one).

Not a fake of the Oxide API's logic (the simulator is that); a fake of a hostile network peer,
which cannot be had any other way on one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as received; ``connection``: the server's number for its connection (1, 2...
    in the order they were accepted)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    connection: int = 0

    def text(self) -> str:
        """The whole request as text (what an echoing server would put in its message)."""
        lines = [f"{self.method} {self.path}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return "\n".join(lines) + "\n\n" + self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back. ``head_delay`` / ``body_delay``: seconds between single bytes of the
    status line and headers / of the body (0 sends at once). ``body_size`` sends that many bytes
    of filler instead of ``body`` (without holding them in memory). ``length`` overrides the
    Content-Length header (None: the true length; -1: no header, close the connection at the end).
    ``stall``: send nothing at all for this many seconds first. ``cut``: send only that many
    bytes of the body, then close the connection (a peer that dies mid-answer). ``drop``: close
    the connection without answering at all (the request was read: a peer that died, or a
    kept-alive connection it closed, just as the request arrived)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    head_delay: float = 0.0
    body_delay: float = 0.0
    body_size: int | None = None
    length: int | None = None
    stall: float = 0.0
    cut: int | None = None
    drop: bool = False

    @staticmethod
    def json(
        status: int, payload: object, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Answer:
        """A JSON answer (``headers`` are added to the content type)."""
        body = json.dumps(payload).encode()
        return Answer(
            status, body, {"content-type": "application/json", **(headers or {})}, **kwargs
        )


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HostileServer:
    """``async with HostileServer(behave) as server:`` then point a client at ``server.url``."""

    def __init__(
        self, behave: Callable[[Seen], Answer], *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.behave = behave
        self.tls = tls
        self.seen: list[Seen] = []
        self.bytes_sent = 0
        self.open_connections = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.open_connections += 1
        self.connections += 1
        number = self.connections
        try:
            while True:
                seen = await _read_request(reader, number)
                if seen is None:
                    return
                self.seen.append(seen)
                answer = self.behave(seen)
                keep = await self._send(writer, answer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # the server is closing: end quietly (asyncio logs a cancelled handler)
        finally:
            self.open_connections -= 1
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, answer: Answer) -> bool:
        if answer.drop:
            return False
        if answer.stall:
            await asyncio.sleep(answer.stall)
        size = answer.body_size if answer.body_size is not None else len(answer.body)
        headers = dict(answer.headers)
        if answer.length != -1:
            headers["content-length"] = str(answer.length if answer.length is not None else size)
        else:
            headers["connection"] = "close"
        reason = _REASONS.get(answer.status, "Whatever")
        head = f"HTTP/1.1 {answer.status} {reason}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        # UTF-8: a header value beyond latin-1 (digits of another script) goes out as its bytes,
        # as a real server's would; latin-1 could not encode it at all.
        await self._write(writer, head.encode(), answer.head_delay)
        if answer.body_size is not None:
            chunk = b" " * (1 << 16)
            left = answer.body_size
            while left > 0:
                piece = chunk[: min(left, len(chunk))]
                await self._write(writer, piece, answer.body_delay)
                left -= len(piece)
        elif answer.cut is not None:
            await self._write(writer, answer.body[: answer.cut], answer.body_delay)
            return False
        else:
            await self._write(writer, answer.body, answer.body_delay)
        return answer.length != -1

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, delay: float) -> None:
        if delay <= 0:
            writer.write(data)
            await writer.drain()
            self.bytes_sent += len(data)
            return
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            self.bytes_sent += 1
            await asyncio.sleep(delay)


async def _read_request(reader: asyncio.StreamReader, connection: int) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return Seen(method, parts.path, dict(parse_qsl(parts.query)), headers, body, connection)
