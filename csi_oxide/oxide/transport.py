"""How one HTTP exchange with the Oxide API is carried, its answer's body read within a cap.

``HttpOxideClient`` decides what to send and what an answer means; it encodes each request once
(``encode_request``: the URL with its query, the headers, the JSON body) and hands it to a
carrier, which only moves bytes (``Carrier``). The driver has one carrier and no HTTP library:

- ``StreamCarrier``, HTTP/1.1 over asyncio's streams, framed by ``csi_oxide.oxide.http1``. It
  costs about a third of the CPU per request of aiohttp, which the driver used before, and a
  thirtieth of httpx's before that (measured against the simulator in another process, ten
  requests in flight: ~0.03 ms, ~0.1 ms and ~0.85 ms of CPU per request). Connections are kept
  alive; TCP_NODELAY is on; proxies come from the usual environment variables (``HTTPS_PROXY``,
  ``NO_PROXY``...); the TLS trust is certifi's bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``,
  or the custom CA (``tls_context``).

The tests and the simulator's in-process runs carry the same encoded requests to an ASGI app
in the same process (``csi_oxide_lab.asgi.AsgiCarrier``, not part of the driver).

A carrier follows no redirect (the token would go along), reads at most ``max_body`` bytes of an
answer and then abandons the connection (``AnswerTooLargeError``), and the request asks for no
content coding (a compressed answer could expand far beyond the cap in memory before it is
counted). No complete answer is a ``TransportFailure``, whatever the carrier. The total deadline
of an attempt is the client's (``asyncio.timeout`` around the whole exchange).

A carrier never lets an exception escape with the request attached: a ``TransportFailure``
carries only an error's type and text, raised without its context, and the errors met on a
connection (``OSError``, ``ssl.SSLError``, the framing's ``ValueError``) never hold the request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlencode, urlsplit

from csi_oxide.oxide import http1

Params = Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it goes on the wire, encoded once whatever carries it (``encode_request``):
    ``url`` is absolute, its path and query percent-encoded; ``headers`` are all of the request's
    but ``Host`` and ``Content-Length``, which the carrier adds from ``url`` and ``body``."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


def encode_request(
    base_url: str,
    method: str,
    path: str,
    params: Params,
    body: Mapping[str, object] | None,
    headers: Mapping[str, str],
) -> Request:
    """The request to ``base_url`` + ``path`` (already percent-encoded) with ``params`` as its
    query, ``body`` as compact JSON, ``headers`` plus ``accept-encoding: identity`` (no content
    coding: see the module docstring) and the body's content type."""
    url = base_url + path
    if params:
        url += "?" + urlencode({k: str(v) for k, v in params.items()})
    sent = {**headers, "accept-encoding": "identity"}
    data = None
    if body is not None:
        data = json_body(body)
        sent["content-type"] = "application/json"
    return Request(method, url, sent, data)


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer, its body read within the bounds. ``headers`` look up names
    case-insensitively."""

    status_code: int
    reason_phrase: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        """A 2xx status."""
        return 200 <= self.status_code < 300

    def json(self) -> object:
        """The body as JSON (``ValueError`` when it is not, also when it is nested so deeply that
        the decoder gives up with ``RecursionError``: a few hundred kilobytes of ``[`` do that)."""
        try:
            result: object = json.loads(self.content)
        except RecursionError as exc:
            raise ValueError("the answer is nested too deeply to decode") from exc
        return result


class AnswerTooLargeError(Exception):
    """An answer body beyond ``max_body``: the request was abandoned."""


# Why a connection failed, when the carrier can tell (``TransportFailure.cause``).
REFUSED = "refused"  # nothing listens at the address (yet: the API may be restarting)
UNRESOLVED = "unresolved"  # the host name does not resolve (yet: DNS may be restarting)
PLAIN_SERVER = "plain_server"  # https:// to a server that speaks plain HTTP
UNTRUSTED = "untrusted"  # the server's TLS certificate does not verify
UNSENDABLE = "unsendable"  # the request cannot be sent as configured (a header, the proxy)
# Causes no retry can cure: the configuration must change.
PERMANENT_CAUSES = frozenset({PLAIN_SERVER, UNTRUSTED, UNSENDABLE})
# Causes a retry may cure within seconds in production, but which mean a wrong address on first
# contact (``csi-oxide doctor``).
UNREACHABLE_CAUSES = frozenset({REFUSED, UNRESOLVED})


class TransportFailure(Exception):  # noqa: N818 - a failure, reported as such, not an error
    """No complete answer came (``outcome`` ``timeout`` or ``connection_error``); the text names
    the library's error type and message, never the request. ``cause`` is one of the constants
    above when known (else empty), and ``hint`` then says what to check."""

    def __init__(self, outcome: str, detail: str, cause: str = "", hint: str = "") -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.cause = cause
        self.hint = hint


class Carrier(Protocol):
    """Sends one request and reads its answer within the body cap.

    ``exchange`` returns the complete answer, whatever its status; it raises
    ``AnswerTooLargeError`` for a body beyond ``max_body`` (announced or read) and
    ``TransportFailure`` when no complete answer came (refused, reset, dropped, bad framing, a
    timeout of its own), and nothing else of its library. ``HttpOxideClient`` reads these, and
    its own deadline's ``TimeoutError``, the same way whatever the carrier."""

    async def exchange(self, request: Request, max_body: int) -> Answer:
        """Send ``request``; its answer, the body read up to ``max_body`` bytes."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def json_body(body: object) -> bytes:
    """A request body as JSON: compact, UTF-8, no NaN (what the Oxide API's clients send)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def too_large(max_body: int, what: str) -> str:
    """The message of ``AnswerTooLargeError``."""
    return f"the answer {what} than the {max_body} bytes the driver reads; abandoned"


# OpenSSL's words when the first bytes back from a TLS handshake are a plain HTTP answer.
_PLAIN_HTTP_SIGNS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")


def _speaks_plain_http(exc: BaseException) -> bool:
    """True when a TLS handshake failed because the server answered in plain HTTP."""
    text = str(getattr(exc, "os_error", exc)).upper().replace(" ", "_")
    return any(sign in text for sign in _PLAIN_HTTP_SIGNS)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The driver's TLS trust: the CA bundle ``ca_file``, else ``SSL_CERT_FILE`` (a bundle),
    else ``SSL_CERT_DIR`` (a hashed folder), else certifi's bundle (not the system's store: a
    container image's may be missing or stale). ``OSError``/``ssl.SSLError`` when ``ca_file``
    is unusable.

    These are the steps httpx takes (``create_ssl_context(trust_env=True)``), kept when the
    driver left httpx for aiohttp so that the same settings trust the same servers."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi  # here, not at the top: only an https controller needs it

    return ssl.create_default_context(cafile=certifi.where())


def proxy_from_environment(base_url: str) -> str | None:
    """The proxy the usual environment variables name for ``base_url`` (None: direct):
    ``<scheme>_proxy`` or ``all_proxy``, unless ``no_proxy`` exempts the host."""
    proxies = urllib.request.getproxies_environment()
    host = urlsplit(base_url).hostname or ""
    if not proxies or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(urlsplit(base_url).scheme) or proxies.get("all")


@dataclass(frozen=True, slots=True)
class _Place:
    """Where a connection goes: host, port, and the TLS it speaks (None: plain)."""

    host: str
    port: int
    tls: ssl.SSLContext | None

    @property
    def where(self) -> str:
        """``host:port``, an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _place(url: str, tls: ssl.SSLContext | None) -> _Place:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    # An https API without a context given gets the driver's usual trust (tls_context).
    return _Place(parts.hostname or "", port, (tls or tls_context(None)) if secure else None)


def _proxy_settings(proxy: str) -> tuple[_Place, str | None, str]:
    """Where the proxy URL ``proxy`` points, its basic authorization (None: none), and why it
    cannot be used ("": it can). Nothing of its text goes into the refusal: it may hold a
    password."""
    try:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        place = _Place(parts.hostname or "", parts.port or 80, None)
    except ValueError:
        unreadable = (
            "the proxy the environment names (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is not a "
            "URL whose host and port can be read"
        )
        return _Place("", 0, None), None, unreadable
    refused = ""
    if parts.scheme != "http":
        refused = (
            f"the proxy the environment names is {parts.scheme}://; only http:// proxies are "
            "supported (the API itself may be https://)"
        )
    auth = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return place, auth, refused


class _Connection:
    """One kept-alive connection to the API (or to a proxy carrying it)."""

    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def open(self) -> bool:
        """Fit for the next request: not closed by either side (as far as the event loop has
        seen), and nothing unread. Bytes that came after the last answer (a second answer, one
        sent while idle such as a late 408, or a body longer than its framing said) answer no
        request of ours: read as the next request's answer, they would be taken for it."""
        return not (self.writer.is_closing() or self.reader.at_eof() or _unread(self.reader))

    def abort(self) -> None:
        """Drop the connection at once, with whatever is still unread or unsent."""
        self.writer.transport.abort()


def _unread(reader: asyncio.StreamReader) -> bool:
    """Whether ``reader`` holds bytes not read yet. asyncio has no public way to ask, so this
    looks at the buffer the stream reads from; where that is not there (a Python that keeps
    it elsewhere) every connection counts as holding some, so none is reused: slower, never
    out of step (tests/oxide/test_transport.py would show the lost reuse)."""
    buffered = getattr(reader, "_buffer", None)
    return not isinstance(buffered, bytearray) or len(buffered) > 0


_SLIPPED_IN = (
    "the proxy sent bytes of its own after its answer to CONNECT {where}; the tunnel is not "
    "used (they did not come from the API through TLS)"
)


class _Unanswered(Exception):  # noqa: N818 - an outcome, not an error of the code
    """The connection ended after the request went out and before any byte of an answer."""


class StreamCarrier:
    """HTTP/1.1 over asyncio's streams (``csi_oxide.oxide.http1`` frames the bytes): the driver's
    one HTTP client. See the module docstring for what a carrier must do; here is how this one
    does it.

    Connections. Kept alive and reused last-in first-out, at most ``max_connections`` kept idle,
    none kept idle longer than ``IDLE_SECONDS`` (a server closes idle connections on its own
    schedule; one closed while idle is seen closed and dropped before use, and so is one that
    holds bytes no request asked for: see ``_Connection.open``). TCP_NODELAY is on
    (asyncio sets it on every TCP connection: with Nagle a POST's body would wait ~40 ms for the
    server's delayed ACK of its head). A connection is opened within ``connect_timeout`` seconds,
    TLS handshake included. One whose answer was abandoned, cut, or cancelled is dropped, never
    reused.

    Proxies come from the usual environment variables (``HTTPS_PROXY``, ``NO_PROXY``...:
    ``proxy_from_environment``), ``http://`` proxies only, with ``user:password@`` sent as
    basic proxy authorization: an ``http://`` API through them is asked for by absolute URL, an
    ``https://`` one through a ``CONNECT`` tunnel, TLS end to end with the API.

    The one resend. A request sent on a kept-alive connection that ends before any byte of an
    answer comes back is sent once more, at once, on a new connection, when it is a GET or a
    DELETE, never a POST. The usual cause is a connection the server closed as the request went
    out; and for what this driver sends a resend is harmless:

    - the client sends only GET, POST and DELETE (``csi_oxide.oxide.client``);
    - a GET changes nothing: sent twice, it reads twice;
    - every DELETE names its object by UUID, never by name (the controller deletes what it read,
      by the ID it read), so a resend can never remove an object made under the same name since;
      if the first one was carried out, the resend answers 404, which every caller reads as
      "gone", the success of a delete. The client's own ``RetryPolicy`` would resend the same
      request after a lost answer anyway; this one only comes earlier;
    - a POST (creates, attach, detach) is never resent here; the client's retries of it are
      counted, paced and found again by name (``HttpOxideClient``).

    What the resend costs: one attempt the request observer does not see (the metrics count the
    pair as one) and no backoff before it; it happens at most once per attempt and within that
    attempt's deadline. tests/oxide/test_hostile_api.py holds each of these facts against a real
    server that drops connections.

    Why not an HTTP library: measured against the simulator in another process, ten requests in
    flight, this carrier costs about 0.03 ms of CPU per request where aiohttp (used before) cost
    about 0.1 ms and httpx about 0.85 ms; with six requests per volume lifecycle that is a
    third of the driver's CPU per lifecycle (``make bench``). And no library error, which would
    hold the request (its token), exists to leak."""

    IDLE_SECONDS = 15.0

    def __init__(
        self,
        base_url: str,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        self._api = _place(base_url, tls)
        self._netloc = urlsplit(base_url).netloc
        self._connect_timeout = connect_timeout
        self._max_idle = max_connections
        self._idle: list[_Connection] = []
        proxy = proxy_from_environment(base_url)
        self._proxy: _Place | None = None
        self._proxy_auth: str | None = None
        self._proxy_refused = ""
        if proxy is not None:
            self._proxy, self._proxy_auth, self._proxy_refused = _proxy_settings(proxy)

    async def exchange(self, request: Request, max_body: int) -> Answer:
        """See ``Carrier.exchange``."""
        data = self._encode(request)
        conn = self._reuse()
        if conn is not None:
            try:
                return await self._over(conn, data, max_body)
            except _Unanswered as exc:
                if request.method not in ("GET", "DELETE"):
                    raise TransportFailure("connection_error", str(exc)) from None
        conn = await self._connect()
        try:
            return await self._over(conn, data, max_body)
        except _Unanswered as exc:
            raise TransportFailure("connection_error", str(exc)) from None

    def _encode(self, request: Request) -> bytes:
        parts = urlsplit(request.url)
        if self._proxy is not None and self._api.tls is None:
            target = request.url  # to a proxy, an http:// request names its absolute URL
        else:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = dict(request.headers)
        if self._proxy_auth is not None and self._api.tls is None:
            headers["proxy-authorization"] = self._proxy_auth
        try:
            head = http1.request_head(request.method, target, parts.netloc, headers, request.body)
        except ValueError as exc:
            raise TransportFailure("connection_error", str(exc), UNSENDABLE) from None
        return head + (request.body or b"")

    def _reuse(self) -> _Connection | None:
        """The idle connection used last, if one is still open and fresh."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.open() and now - conn.idle_since < self.IDLE_SECONDS:
                return conn
            conn.abort()
        return None

    async def _over(self, conn: _Connection, data: bytes, max_body: int) -> Answer:
        """One exchange on ``conn``; the connection is kept for later when it may be, else
        dropped (always when anything fails, the caller's cancellation included)."""
        try:
            answer, keep = await self._exchange_on(conn, data, max_body)
        except BaseException:
            conn.abort()
            raise
        if keep and len(self._idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.abort()
        return answer

    async def _exchange_on(
        self, conn: _Connection, data: bytes, max_body: int
    ) -> tuple[Answer, bool]:
        reader = conn.reader
        head = False  # whether any of the answer's head has come
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _Unanswered("the connection closed before an answer came") from None
                raise
            head = True
            minor, status, reason, headers = http1.parse_head(raw)
            while 100 <= status < 200:  # interim answers (100 Continue...): the final one follows
                if status == 101:
                    raise ValueError("the server switched protocols, which was not asked for")
                raw = await reader.readuntil(b"\r\n\r\n")
                minor, status, reason, headers = http1.parse_head(raw)
            how, length = http1.framing(status, headers)
            content = await _read_body(reader, how, length, max_body)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if not head:  # reset while sending or waiting: no answer came
                raise _Unanswered(_describe(exc)) from None
            raise TransportFailure("connection_error", _describe(exc)) from None
        except asyncio.LimitOverrunError:
            detail = f"the answer's head is larger than {http1.MAX_HEAD} bytes"
            raise TransportFailure("connection_error", detail) from None
        except (OSError, EOFError, ValueError) as exc:
            raise TransportFailure("connection_error", _describe(exc)) from None
        answer = Answer(status, reason, headers, content)
        return answer, http1.keeps_alive(minor, headers, how)

    async def _connect(self) -> _Connection:
        """A new connection to the API (through the proxy, if one is set)."""
        api, hop = self._api, self._proxy or self._api
        if self._proxy_refused:
            raise TransportFailure("connection_error", self._proxy_refused, UNSENDABLE)
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    hop.host,
                    hop.port,
                    ssl=hop.tls,
                    server_hostname=hop.host if hop.tls is not None else None,
                    limit=http1.MAX_HEAD,
                )
                conn = _Connection(reader, writer)
                if hop is not api and api.tls is not None:
                    try:
                        await self._tunnel(conn, api, api.tls)
                    except BaseException:
                        conn.abort()
                        raise
        except TimeoutError:
            detail = f"no connection to {hop.where} within {self._connect_timeout:g} s"
            raise TransportFailure("timeout", detail) from None
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            cause, hint = self._diagnose(exc, hop)
            raise TransportFailure("connection_error", _describe(exc), cause, hint) from None
        return conn

    async def _tunnel(self, conn: _Connection, api: _Place, tls: ssl.SSLContext) -> None:
        """Ask the proxy on ``conn`` for a tunnel to ``api``, then speak TLS to ``api`` in it."""
        lines = [f"CONNECT {api.where} HTTP/1.1", f"host: {api.where}"]
        if self._proxy_auth is not None:
            lines.append(f"proxy-authorization: {self._proxy_auth}")
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await conn.writer.drain()
        _minor, status, _reason, _headers = http1.parse_head(
            await conn.reader.readuntil(b"\r\n\r\n")
        )
        if not 200 <= status < 300:
            raise ValueError(f"the proxy refused a tunnel to {api.where}: HTTP {status}")
        # Bytes after the proxy's answer came in the clear, not through TLS from the API: read
        # as the first answer, they would be the proxy's forgery. Looked for again once TLS is
        # up, for bytes that came while it started (the API sends nothing before a request).
        if _unread(conn.reader):
            raise ValueError(_SLIPPED_IN.format(where=api.where))
        await conn.writer.start_tls(tls, server_hostname=api.host)
        if _unread(conn.reader):
            raise ValueError(_SLIPPED_IN.format(where=api.where))

    def _diagnose(self, exc: BaseException, hop: _Place) -> tuple[str, str]:
        """The cause of a failed connection and what to do about it, when the error tells."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            return UNTRUSTED, (
                f"the certificate of {self._netloc} does not verify: if the rack uses its own "
                "CA, give its PEM bundle in CSI_OXIDE_CA_FILE"
            )
        if isinstance(exc, ssl.SSLError) and _speaks_plain_http(exc):
            return PLAIN_SERVER, f"the server speaks plain HTTP: use http://{self._netloc}"
        if isinstance(exc, socket.gaierror):
            return UNRESOLVED, f"the host name {hop.host!r} does not resolve: check OXIDE_HOST"
        if isinstance(exc, ConnectionRefusedError):
            return REFUSED, f"nothing listens at {hop.where}: is the API up, and the port right?"
        return "", ""

    async def aclose(self) -> None:
        """Release connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()


async def _read_body(
    reader: asyncio.StreamReader, how: http1.Framing, length: int, cap: int
) -> bytes:
    """The body of an answer framed ``how``, at most ``cap`` bytes (``AnswerTooLargeError``)."""
    if how is http1.Framing.NONE:
        return b""
    if how is http1.Framing.LENGTH:
        if length > cap:
            raise AnswerTooLargeError(too_large(cap, f"announces {length} bytes, more"))
        return await reader.readexactly(length)
    chunks: list[bytes] = []
    size = 0
    if how is http1.Framing.CHUNKED:
        while n := http1.chunk_size(await reader.readuntil(http1.CRLF)):
            size += n
            if size > cap:
                raise AnswerTooLargeError(too_large(cap, "is larger"))
            chunks.append(await reader.readexactly(n))
            if await reader.readexactly(2) != http1.CRLF:
                raise ValueError("a chunk does not end in CRLF")
        for _ in range(http1.MAX_TRAILERS):
            if await reader.readuntil(http1.CRLF) == http1.CRLF:
                return b"".join(chunks)
        raise ValueError(f"more than {http1.MAX_TRAILERS} trailer lines after the last chunk")
    while chunk := await reader.read(65536):  # Framing.CLOSE: until the server closes
        size += len(chunk)
        if size > cap:
            raise AnswerTooLargeError(too_large(cap, "is larger"))
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an error met on the connection (it never holds the request)."""
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
