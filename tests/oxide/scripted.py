"""A scripted Oxide API for HttpOxideClient's unit tests: a handler function of the test decides
each answer (``Seen`` -> ``Reply``), served in-process through the lab's ``AsgiCarrier``, so the
client's requests arrive as encoded for the wire (method, percent-encoded path, query string,
headers, JSON body) and its answers go through the same body cap as with ``StreamCarrier``.

A handler plays a connection that failed by raising ``TransportFailure`` (``lost``, ``timed_out``),
which reaches the client as any carrier's failure would. Real sockets, trickled bytes and dropped
connections are tests/oxide/hostile.py's.
"""

from __future__ import annotations

import inspect
import json as _json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from csi_oxide.oxide.transport import TransportFailure
from csi_oxide_lab.asgi import AsgiCarrier


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the app received it. ``path`` is decoded; ``target`` is the path and query
    as sent (percent-encoded); ``params`` the query's fields; ``url`` scheme, host and target."""

    method: str
    url: str
    path: str
    target: str
    params: dict[str, str]
    headers: Headers
    content: bytes

    def json(self) -> Any:
        return _json.loads(self.content)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the scripted server answers."""

    status: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def json(status: int, payload: object, *, headers: dict[str, str] | None = None) -> Reply:
        body = _json.dumps(payload).encode()
        return Reply(status, body, {"content-type": "application/json", **(headers or {})})

    @staticmethod
    def text(status: int, text: str, *, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, text.encode(), {"content-type": "text/plain", **(headers or {})})


Handler = Callable[[Seen], Reply | Awaitable[Reply]]


def lost(detail: str = "ConnectError: refused") -> TransportFailure:
    """What a carrier raises for a connection that failed before a complete answer came."""
    return TransportFailure("connection_error", detail)


def timed_out(detail: str = "ReadTimeout: timed out") -> TransportFailure:
    """What a carrier raises when its own timeout ended the exchange."""
    return TransportFailure("timeout", detail)


def scripted_app(handler: Handler) -> ASGIApp:
    """An ASGI app answering every request with what ``handler`` says."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        content = b""
        while True:
            message = await receive()
            content += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = Headers(scope=scope)
        query = scope["query_string"].decode("ascii")
        target = scope["raw_path"].decode("ascii") + (f"?{query}" if query else "")
        seen = Seen(
            method=scope["method"],
            url=f"{scope['scheme']}://{headers['host']}{target}",
            path=scope["path"],
            target=target,
            params=dict(parse_qsl(query, keep_blank_values=True)),
            headers=headers,
            content=content,
        )
        reply = handler(seen)
        if inspect.isawaitable(reply):
            reply = await reply
        assert isinstance(reply, Reply)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
        raw.append((b"content-length", str(len(reply.content)).encode("ascii")))
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        await send({"type": "http.response.body", "body": reply.content})

    return app


def scripted(handler: Handler) -> AsgiCarrier:
    """A carrier for ``HttpOxideClient(carrier=...)`` to the scripted server ``handler``."""
    return AsgiCarrier(scripted_app(handler))
