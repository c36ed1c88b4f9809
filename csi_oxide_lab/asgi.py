"""HTTP requests delivered to an ASGI app in this process: the simulator (or a test's scripted
server) without a socket, for tests, benchmarks and scripts. Nothing in the product imports this
module, and it uses no HTTP library: the request is handed to the app as an ASGI ``http`` scope.

- ``AsgiCarrier``: a ``Carrier`` for ``HttpOxideClient`` (``carrier=``). The client encodes each
  request exactly as for the driver's carrier, ``StreamCarrier``
  (``csi_oxide.oxide.transport.encode_request``: URL and query, headers, JSON body); this carrier
  adds what that one adds on the wire (``host``, ``content-length``:
  ``csi_oxide.oxide.http1.request_head``) and hands the result to the app
  (tests/oxide/test_transport.py compares the two).
- ``AsgiClient``: plain requests (``get``, ``post``...) for what the driver never sends: a raw
  body, a missing header, a silo image.

How the app's behaviour reads as an exchange:

- an answer is complete once its last ``http.response.body`` message came; its body is counted
  as it comes and abandoned beyond ``max_body`` (``AnswerTooLargeError``), also when its
  ``content-length`` announces more;
- an app that ends without a complete answer is a dropped connection (``TransportFailure``,
  ``connection_error``); a scripted server plays a lost connection by raising
  ``TransportFailure`` itself, which reaches the client as any carrier's would;
- any other exception the app raises reaches the caller as it is (a simulator's bug shows with
  its traceback: the simulator answers its own failures with a 500, as the real server does);
- the client's deadline cancels the app where it stands (the simulator's trickled answers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import unquote, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message

if TYPE_CHECKING:
    from typing_extensions import Unpack

from csi_oxide.oxide.transport import (
    Answer,
    AnswerTooLargeError,
    Request,
    TransportFailure,
    json_body,
    too_large,
)

# The most an AsgiClient reads of an answer: far beyond any page the simulator serves.
CLIENT_MAX_BODY = 64 * 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Methods whose request goes without a Content-Length when there is no body (the others carry
# "content-length: 0"). The driver's carrier (http1.request_head) leaves it out for GET alone: for
# the methods the driver sends (GET, POST, DELETE) the two agree.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _AbandonedError(Exception):
    """Raised into the app by ``send`` when its answer is too large."""


async def call_app(app: ASGIApp, request: Request, max_body: int) -> Answer:
    """``request`` handled by ``app``; its answer, the body read up to ``max_body`` bytes."""
    exchange = _Exchange(request.body or b"", max_body)
    try:
        await app(_scope(request), exchange.receive, exchange.send)
    except Exception:
        if exchange.abandoned:  # what the app made of the abandoned answer does not matter
            raise AnswerTooLargeError(exchange.abandoned) from None
        raise
    return exchange.answer()


def _scope(request: Request) -> dict[str, Any]:
    """The ASGI http scope of ``request``, its headers as the driver's carrier sends them
    (``StreamCarrier``, ``csi_oxide.oxide.http1.request_head``) for the methods the driver sends
    (``_BODILESS``)."""
    url = urlsplit(request.url)
    raw_path = url.path or "/"
    headers = [(b"host", url.netloc.encode("ascii"))]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in request.headers.items()
    ]
    if request.body is not None or request.method not in _BODILESS:  # as the carrier does
        size = len(request.body or b"")
        headers.append((b"content-length", str(size).encode("ascii")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": url.scheme,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "query_string": url.query.encode("ascii"),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": (url.hostname or "", url.port or _DEFAULT_PORTS.get(url.scheme, 80)),
        "extensions": {},
    }


class _Exchange:
    """One request's two ASGI channels: the body handed to the app once, then the client stays
    until the answer is complete; the answer collected up to ``max_body`` bytes, abandoned (the
    app's next ``send`` raises) once it announces or grows larger."""

    def __init__(self, body: bytes, max_body: int) -> None:
        self._body: bytes | None = body
        self._max_body = max_body
        self._complete = asyncio.Event()
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self.abandoned = ""

    async def receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._complete.wait()  # the client is there until the answer is complete
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.abandoned:
            raise _AbandonedError(self.abandoned)
        if message["type"] == "http.response.start":
            self._status = int(message["status"])
            self._headers.extend(
                (bytes(name).lower(), bytes(value)) for name, value in message.get("headers", [])
            )
            declared = Headers(raw=self._headers).get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_body:
                self._abandon(f"announces {int(declared)} bytes, more")
        elif message["type"] == "http.response.body" and self._status is not None:
            chunk = bytes(message.get("body", b""))
            self._size += len(chunk)
            if self._size > self._max_body:
                self._abandon("is larger")
            self._chunks.append(chunk)
            if not message.get("more_body", False):
                self._complete.set()

    def _abandon(self, what: str) -> None:
        self.abandoned = too_large(self._max_body, what)
        raise _AbandonedError(self.abandoned)

    def answer(self) -> Answer:
        """The collected answer, once the app has returned."""
        if self.abandoned:
            raise AnswerTooLargeError(self.abandoned)
        if self._status is None or not self._complete.is_set():
            raise TransportFailure("connection_error", "the app ended without a complete answer")
        status = self._status
        return Answer(status, _reason(status), Headers(raw=self._headers), b"".join(self._chunks))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class AsgiCarrier:
    """``HttpOxideClient``'s carrier to an ASGI app in this process (see the module docstring):
    ``HttpOxideClient(host, token, project, carrier=AsgiCarrier(sim.asgi_app(validate=True)))``.
    It holds no connection; one carrier may serve several clients."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def exchange(self, request: Request, max_body: int) -> Answer:
        """See ``csi_oxide.oxide.transport.Carrier``."""
        return await call_app(self.app, request, max_body)

    async def aclose(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True, slots=True)
class Response(Answer):
    """An ``AsgiClient`` answer: an ``Answer`` with its body as text too."""

    @property
    def text(self) -> str:
        """The body as UTF-8 (what does not decode replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON, whatever its shape (a test indexes it as it expects)."""
        return Answer.json(self)


class RequestOptions(TypedDict, total=False):
    """What ``AsgiClient.request`` takes beside the method and path."""

    params: Mapping[str, object] | None
    json: object
    content: bytes | None
    headers: Mapping[str, str] | None


class AsgiClient:
    """Plain HTTP requests to an ASGI app in this process: ``headers`` go with every request
    (a test may change them), ``params`` become the query, ``json`` the body (compact, as the
    driver sends it) or ``content`` the raw body. ``async with`` is allowed, not needed."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        base_url: str = "http://sim",
        headers: Mapping[str, str] | None = None,
        max_body: int = CLIENT_MAX_BODY,
    ) -> None:
        self.app = app
        self.base_url = base_url.rstrip("/")
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.max_body = max_body

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, object] | None = None,
        json: object = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """One request to ``path`` (percent-encoded as it stands)."""
        url = self.base_url + path
        if params:
            url += "?" + urlencode({k: str(v) for k, v in params.items()})
        sent = {**self.headers, **{k.lower(): v for k, v in (headers or {}).items()}}
        body = content
        if json is not None:
            body = json_body(json)
            sent.setdefault("content-type", "application/json")
        answer = await call_app(self.app, Request(method, url, sent, body), self.max_body)
        return Response(answer.status_code, answer.reason_phrase, answer.headers, answer.content)

    async def get(self, path: str, **options: Unpack[RequestOptions]) -> Response:
        """``request("GET", ...)``."""
        return await self.request("GET", path, **options)

    async def post(self, path: str, **options: Unpack[RequestOptions]) -> Response:
        """``request("POST", ...)``."""
        return await self.request("POST", path, **options)

    async def put(self, path: str, **options: Unpack[RequestOptions]) -> Response:
        """``request("PUT", ...)``."""
        return await self.request("PUT", path, **options)

    async def delete(self, path: str, **options: Unpack[RequestOptions]) -> Response:
        """``request("DELETE", ...)``."""
        return await self.request("DELETE", path, **options)

    async def aclose(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> AsgiClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()
