"""How one HTTP exchange with the Oxide API is carried, its answer's body read within a cap.

``HttpOxideClient`` decides what to send and what an answer means; a carrier only moves bytes.
Two carriers keep one contract (``Carrier``):

- ``AiohttpCarrier``, the production one: aiohttp's C HTTP parser and its connection pool cost
  about a tenth of the CPU per request of httpx over httpcore (measured against the simulator
  in another process, ten requests in flight: ~0.1 ms against ~0.85 ms of CPU per request; with
  about nine requests per volume lifecycle, ``make bench``'s driver CPU per lifecycle fell from
  ~11 ms to ~3 ms). Connections are kept alive; TCP_NODELAY is on (aiohttp sets it on every
  connection: with Nagle a POST's body would wait ~40 ms for the server's delayed ACK of its
  headers); proxies come from the usual environment variables (``HTTPS_PROXY``,
  ``NO_PROXY``...) as with httpx; the TLS trust is httpx's (certifi, or ``SSL_CERT_FILE`` /
  ``SSL_CERT_DIR``, or the custom CA).
- ``HttpxCarrier`` sends over any ``httpx.AsyncBaseTransport``: the in-process transports of the
  tests and of the simulator (``httpx.ASGITransport``, ``httpx.MockTransport``). httpx is
  imported only by it: a controller, which talks to Oxide through aiohttp, does not load httpx
  (nor what httpx loads with it, click for its command line among them).

Both follow no redirect (the token would go along), read at most ``max_body`` bytes of an answer
and then abandon the connection, and ask for no content coding (a compressed answer could expand
far beyond the cap in memory before it is counted). The total deadline of an attempt is the
client's (``asyncio.timeout`` around the whole exchange).

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
    import httpx

Params = Mapping[str, str | int]


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
    """Sends one request and reads its answer within the body cap."""

    async def exchange(
        self,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None,
        headers: dict[str, str],
    ) -> Answer:
        """One request to ``path`` (already percent-encoded) with ``params`` as its query."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def json_body(body: Mapping[str, object]) -> bytes:
    """A request body as httpx's ``json=`` encodes it (compact, UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def too_large(max_body: int, what: str) -> str:
    """The message of ``AnswerTooLargeError``."""
    return f"the answer {what} than the {max_body} bytes the driver reads; abandoned"


class HttpxCarrier:
    """Requests over an ``httpx.AsyncBaseTransport``."""

    def __init__(
        self,
        base_url: str,
        transport: httpx.AsyncBaseTransport,
        *,
        timeout: httpx.Timeout,
        limits: httpx.Limits,
        headers: Mapping[str, str],
        max_body: int,
    ) -> None:
        import httpx  # here, not at the top: see the module docstring

        self._max_body = max_body
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=timeout,
            limits=limits,
            headers={**headers, "accept-encoding": "identity"},
            follow_redirects=False,
        )

    async def exchange(
        self,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None,
        headers: dict[str, str],
    ) -> Answer:
        """See ``Carrier.exchange``; httpx's own exceptions pass through."""
        request = self._http.build_request(
            method, path, params=dict(params), json=body, headers=headers
        )
        response = await self._http.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_body:
                raise AnswerTooLargeError(
                    too_large(self._max_body, f"announces {int(declared)} bytes")
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self._max_body:
                    raise AnswerTooLargeError(too_large(self._max_body, "is larger"))
                chunks.append(chunk)
        finally:
            await response.aclose()
        return Answer(
            response.status_code, response.reason_phrase, response.headers, b"".join(chunks)
        )

    async def aclose(self) -> None:
        """Release connections."""
        await self._http.aclose()


# OpenSSL's words when the first bytes back from a TLS handshake are a plain HTTP answer.
_PLAIN_HTTP_SIGNS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")


def _speaks_plain_http(exc: BaseException) -> bool:
    """True when a TLS handshake failed because the server answered in plain HTTP."""
    text = str(getattr(exc, "os_error", exc)).upper().replace(" ", "_")
    return any(sign in text for sign in _PLAIN_HTTP_SIGNS)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """httpx's trust: the CA bundle ``ca_file``, else ``SSL_CERT_FILE``/``SSL_CERT_DIR``, else
    certifi's bundle. ``OSError``/``ssl.SSLError`` when ``ca_file`` is unusable.

    The same steps as ``httpx.create_ssl_context(trust_env=True)`` (httpx 0.28 and 0.29), taken
    here so that a controller does not import httpx for them (tests/test_footprint.py compares
    the two)."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=ca_file)
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi  # httpx's own dependency, as in httpx

    return ssl.create_default_context(cafile=certifi.where())


def proxy_from_environment(base_url: str) -> str | None:
    """The proxy the usual environment variables name for ``base_url`` (None: direct), the way
    httpx reads them: ``<scheme>_proxy`` or ``all_proxy``, unless ``no_proxy`` exempts the host."""
    proxies = urllib.request.getproxies_environment()
    host = urlsplit(base_url).hostname or ""
    if not proxies or urllib.request.proxy_bypass(host):
        return None
    return proxies.get(urlsplit(base_url).scheme) or proxies.get("all")


class AiohttpCarrier:
    """Requests with aiohttp (see the module docstring). The session is made on first use, in
    the event loop that uses it. aiohttp is imported only here, by a controller: a node plugin,
    which never calls the Oxide API, does not carry it in memory."""

    def __init__(
        self,
        base_url: str,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        max_connections: int,
        headers: Mapping[str, str],
        max_body: int,
    ) -> None:
        self._base = base_url
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._headers = {**headers, "accept-encoding": "identity"}
        self._max_body = max_body
        self._proxy = proxy_from_environment(base_url)
        self._session: aiohttp.ClientSession | None = None
        import aiohttp  # here, not at the top: see the class docstring
        from yarl import URL

        self._aiohttp = aiohttp
        self._url = URL
        # Any failure of aiohttp to bring back a complete answer, bad framing from the server
        # included (as httpx's TransportError covers ``RemoteProtocolError``): retried like a
        # dropped connection.
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
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout, connect=None
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # proxies are read above; never a ~/.netrc password
                skip_auto_headers=("Accept",),
            )
            # aiohttp resends an idempotent request once, silently, when a kept-alive connection
            # drops: an attempt no observer sees and no backoff paces. Retries are the client's
            # (RetryPolicy); the switch is private (aiohttp's own test client turns it off the
            # same way), and tests/oxide/test_hostile_api.py notices if it stops working.
            self._session._retry_connection = False
        return self._session

    async def exchange(
        self,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None,
        headers: dict[str, str],
    ) -> Answer:
        """See ``Carrier.exchange``; aiohttp's errors become ``TransportFailure``."""
        url = self._base + path
        if params:
            url += "?" + urlencode({k: str(v) for k, v in params.items()})
        data = None
        if body is not None:
            data = json_body(body)
            headers = {**headers, "content-type": "application/json"}
        session = self._open()
        failure: TransportFailure
        try:
            async with session.request(
                method,
                self._url(url, encoded=True),
                data=data,
                headers=headers,
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                try:
                    content = await self._read(response)
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

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            raise AnswerTooLargeError(too_large(self._max_body, f"announces {declared} bytes"))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > self._max_body:
                raise AnswerTooLargeError(too_large(self._max_body, "is larger"))
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Release connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
