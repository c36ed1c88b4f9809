"""How one HTTP exchange with the Oxide API is carried, its answer's body read within a cap.

``HttpOxideClient`` decides what to send and what an answer means; it encodes each request once
(``encode_request``: the URL with its query, the headers, the JSON body) and hands it to a
carrier, which only moves bytes (``Carrier``). The driver has one carrier and one HTTP library:

- ``AiohttpCarrier``, aiohttp: its C HTTP parser and its connection pool cost about a tenth of
  the CPU per request of httpx over httpcore, which the driver used before (measured against the
  simulator in another process, ten requests in flight: ~0.1 ms against ~0.85 ms of CPU per
  request; with about nine requests per volume lifecycle, ``make bench``'s driver CPU per
  lifecycle fell from ~11 ms to ~3 ms). Connections are kept alive; TCP_NODELAY is on (aiohttp
  sets it on every connection: with Nagle a POST's body would wait ~40 ms for the server's
  delayed ACK of its headers); proxies come from the usual environment variables
  (``HTTPS_PROXY``, ``NO_PROXY``...); the TLS trust is certifi's bundle, or ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR``, or the custom CA (``tls_context``).

The tests and the simulator's in-process runs carry the same encoded requests to an ASGI app
in the same process (``csi_oxide_lab.asgi.AsgiCarrier``, not part of the driver).

A carrier follows no redirect (the token would go along), reads at most ``max_body`` bytes of an
answer and then abandons the connection (``AnswerTooLargeError``), and the request asks for no
content coding (a compressed answer could expand far beyond the cap in memory before it is
counted). No complete answer is a ``TransportFailure``, whatever the carrier. The total deadline
of an attempt is the client's (``asyncio.timeout`` around the whole exchange).

A carrier never lets an exception of its library escape with the request attached: aiohttp's
errors hold the request's headers (the token) in ``request_info``, so they are replaced by a
``TransportFailure`` carrying only their type and text.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    import aiohttp

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
# Causes no retry can cure: the configuration must change.
PERMANENT_CAUSES = frozenset({PLAIN_SERVER, UNTRUSTED})
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


class AiohttpCarrier:
    """Requests with aiohttp (see the module docstring). The session is made on first use, in
    the event loop that uses it. aiohttp is imported only here, by a controller: a node plugin,
    which never calls the Oxide API, does not carry it in memory.

    aiohttp's own resend, left on. aiohttp sends a request once more, at once and silently, when
    its connection fails after the request went out and before an answer's head came back
    (``ServerDisconnectedError``/``ClientOSError``: typically a kept-alive connection the server
    had closed), for the idempotent methods only: GET, HEAD, OPTIONS, TRACE, PUT and DELETE,
    never POST. There is no public switch for it, and none is needed, because for what this
    driver sends such a resend is harmless:

    - the client sends only GET, POST and DELETE (``csi_oxide.oxide.client``);
    - a GET changes nothing: sent twice, it reads twice;
    - every DELETE names its object by UUID, never by name (the controller deletes what it read,
      by the ID it read), so a resend can never remove an object made under the same name since;
      if the first one was carried out, the resend answers 404, which every caller reads as
      "gone", the success of a delete. The client's own ``RetryPolicy`` would resend the same
      request after a lost answer anyway; aiohttp's only comes earlier;
    - a POST (creates, attach, detach) is never resent by aiohttp; the client's retries of it
      are counted, paced and found again by name (``HttpOxideClient``).

    What the resend costs: one attempt the request observer does not see (the metrics count the
    pair as one) and no backoff before it; it happens at most once per attempt and within that
    attempt's deadline. tests/oxide/test_hostile_api.py holds each of these facts against a real
    server that drops connections."""

    def __init__(
        self,
        base_url: str,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        self._base = base_url
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._proxy = proxy_from_environment(base_url)
        self._session: aiohttp.ClientSession | None = None
        import aiohttp  # here, not at the top: see the class docstring
        from yarl import URL

        self._aiohttp = aiohttp
        self._url = URL
        # Any failure of aiohttp to bring back a complete answer, bad framing from the server
        # included: retried like a dropped connection.
        self._failures = (aiohttp.ClientError, OSError)

    def _open(self) -> aiohttp.ClientSession:
        aiohttp = self._aiohttp
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ssl=self._tls if self._tls is not None else False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, connect=None
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # proxies are read above; never a ~/.netrc password
                # No headers of aiohttp's choosing beyond Host and Content-Length (it would add
                # Accept, and "application/octet-stream" to a POST without a body): what is sent
                # is encode_request's, as the in-process carrier of the tests hands it over.
                skip_auto_headers=("Accept", "Content-Type"),
            )
        return self._session

    async def exchange(self, request: Request, max_body: int) -> Answer:
        """See ``Carrier.exchange``; aiohttp's errors become ``TransportFailure``."""
        session = self._open()
        failure: TransportFailure
        try:
            async with session.request(
                request.method,
                self._url(request.url, encoded=True),
                data=request.body,
                headers=dict(request.headers),
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                try:
                    content = await self._read(response, max_body)
                except BaseException:
                    response.close()  # the connection, with whatever is still unread
                    raise
                return Answer(response.status, response.reason or "", response.headers, content)
        except AnswerTooLargeError:
            raise
        except self._aiohttp.ServerTimeoutError as exc:
            failure = TransportFailure("timeout", self._describe(exc))
        except self._failures as exc:
            cause, hint = self._diagnose(exc)
            failure = TransportFailure("connection_error", self._describe(exc), cause, hint)
        # Raised out here, so that not even its __context__ refers to aiohttp's error.
        raise failure

    def _diagnose(self, exc: BaseException) -> tuple[str, str]:
        """The cause of a failed connection and what to do about it, when aiohttp tells."""
        aiohttp = self._aiohttp
        where = urlsplit(self._base).netloc
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            return UNTRUSTED, (
                f"the certificate of {where} does not verify: if the rack uses its own CA, "
                "give its PEM bundle in CSI_OXIDE_CA_FILE"
            )
        if isinstance(exc, aiohttp.ClientConnectorSSLError) and _speaks_plain_http(exc):
            return PLAIN_SERVER, f"the server speaks plain HTTP: use http://{where}"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            host = urlsplit(self._base).hostname
            return UNRESOLVED, f"the host name {host!r} does not resolve: check OXIDE_HOST"
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, ConnectionRefusedError
        ):
            return REFUSED, f"nothing listens at {where}: is the API up, and the port right?"
        return "", ""

    def _describe(self, exc: BaseException) -> str:
        """``Type: message`` of a library error, without its request (so without the token)."""
        text = exc.message if isinstance(exc, self._aiohttp.ClientResponseError) else str(exc)
        return f"{type(exc).__name__}: {text}".rstrip(": ")

    async def _read(self, response: aiohttp.ClientResponse, max_body: int) -> bytes:
        declared = response.content_length
        if declared is not None and declared > max_body:
            raise AnswerTooLargeError(too_large(max_body, f"announces {declared} bytes, more"))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > max_body:
                raise AnswerTooLargeError(too_large(max_body, "is larger"))
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Release connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
