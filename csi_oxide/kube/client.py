"""``KubeClient``: the driver's one seam to the Kubernetes API, on the standard library alone.

The node plugin uses it too (to lift its startup taint), and a node process stays light: no
HTTP library, no ``kubernetes`` package, only ``http.client``, ``ssl`` and ``json``. The client is
synchronous; async callers run each call in a thread (``asyncio.to_thread``).

What it does, and what it leaves to its callers:

- One request per call, on a connection of its own that is closed afterwards (a renewal every few
  seconds does not need a pool, and a closed connection never goes stale). No redirect is
  followed (the token would go along), no proxy is used, nothing is retried: the callers
  (``csi_oxide.kube.lease``, ``csi_oxide.kube.taint``) have loops of their own that decide what a
  failure means.
- Bounds: ``KubeConfig.timeout`` bounds the connection, each wait for the server, and the whole
  reading of the body; at most ``MAX_BODY`` bytes of an answer are read.
- Errors are translated once, here, into ``KubeError(status, reason, message)``: from the API's
  ``Status`` object when the answer carries one (its ``reason`` and ``message``), else from the
  HTTP status line; no answer at all (refused, reset, timed out, TLS not trusted) is status 0.
- The token: ``KubeConfig.in_cluster`` reads the service-account token from its file before every
  request (the kubelet rotates projected tokens). It travels only in the ``Authorization`` header:
  no repr shows it, the one debug line per request has no headers, and every ``KubeError`` text is
  scrubbed of it (also when a server echoes it back) and of anything shaped like a bearer
  credential.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from socket import socket
from urllib.parse import urlsplit

import structlog

from csi_oxide import __version__
from csi_oxide.daemon.log import is_enabled
from csi_oxide.errors import ConfigurationError, CsiOxideError
from csi_oxide.host.files import read_small

log = structlog.get_logger(__name__)

# Where the kubelet mounts a pod's service-account token, its cluster's CA and its namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT = "KUBERNETES_SERVICE_PORT"

DEFAULT_TIMEOUT = 10.0
# The largest answer held in memory: a Node or a Lease is a few kilobytes.
MAX_BODY = 4 * 1024 * 1024
MAX_TOKEN_FILE = 64 * 1024
MAX_MESSAGE = 600
USER_AGENT = f"csi-oxide/{__version__}"
JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
REDACTED = "<redacted>"

JsonObject = dict[str, object]
TokenSource = Callable[[], str]
"""Returns the bearer token to send now; asked before every request."""

_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[^\s,;\"'}]+")


class KubeError(CsiOxideError):
    """An error answer of the Kubernetes API, or none at all (``status`` 0).

    ``reason`` is the API's machine-readable reason (``NotFound``, ``Conflict``,
    ``AlreadyExists``, ``Invalid``...) or, without a ``Status`` object, the HTTP reason phrase
    without spaces; for status 0 it says what failed (``ConnectionFailed``, ``Timeout``,
    ``TokenUnreadable``...). The texts never carry a bearer credential, and are cut to
    ``MAX_MESSAGE`` characters."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(_scrub(message))
        self.status = status
        self.reason = _scrub(reason)[:64]

    @property
    def conflict(self) -> bool:
        """409: somebody else wrote first (a stale ``resourceVersion``), or the name is taken."""
        return self.status == 409

    @property
    def not_found(self) -> bool:
        """404: no such object."""
        return self.status == 404

    def __str__(self) -> str:
        if self.status == 0:
            return f"Kubernetes API unreachable ({self.reason}): {self.message}"
        return f"Kubernetes API: {self.status} {self.reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"KubeError(status={self.status!r}, reason={self.reason!r}, message={self.message!r})"
        )


def _scrub(text: str, secret: str = "") -> str:
    """``text`` without ``secret`` nor anything shaped like a bearer credential, cut short."""
    if secret:
        text = text.replace(secret, REDACTED)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"... ({len(text) - MAX_MESSAGE} more characters cut)"
    return text


# ---- the token ----------------------------------------------------------------------------------


def _check_token(token: str, origin: str) -> str:
    value = token.strip()
    if not value or not all(33 <= ord(ch) <= 126 for ch in value):
        raise ValueError(
            f"{origin}: no bearer token (it is empty, or holds characters an HTTP header "
            "cannot carry)"
        )
    return value


class FixedToken:
    """A token given once (tests, an explicit configuration). Its repr and str hide it."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        try:
            self._token = _check_token(token, "the given Kubernetes token")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None

    def __call__(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "FixedToken(<hidden>)"

    __str__ = __repr__


class ServiceAccountToken:
    """The token held in ``path``, read again at every call: the kubelet replaces a projected
    service-account token before it expires. A file that cannot be read is ``KubeError``
    status 0, reason ``TokenUnreadable`` (the request is not sent)."""

    __slots__ = ("_path",)

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def path(self) -> Path:
        """The file the token is read from."""
        return self._path

    def __call__(self) -> str:
        try:
            return _check_token(read_small(self._path, MAX_TOKEN_FILE), str(self._path))
        except OSError as exc:
            detail = exc.strerror or type(exc).__name__
            problem = f"cannot read the service-account token {self._path}: {detail}"
        except ValueError as exc:
            problem = str(exc)
        raise KubeError(0, "TokenUnreadable", problem)

    def __repr__(self) -> str:
        return f"ServiceAccountToken({str(self._path)!r})"

    __str__ = __repr__


# ---- the configuration --------------------------------------------------------------------------


def check_base_url(url: str) -> str:
    """``url`` as ``scheme://host[:port]`` (``ConfigurationError`` for anything else: another
    scheme, a path, a query, ``user:password@``, no host, a bad port)."""
    value = url.strip()
    parts = urlsplit(value)
    expected = "expected http(s)://HOST[:PORT]"
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(
            f"the Kubernetes API URL must start with http:// or https://; {expected}"
        )
    if "@" in parts.netloc:
        raise ConfigurationError(
            "the Kubernetes API URL carries a user name or password: remove "
            "it; the token is given on its own"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"the Kubernetes API URL {value!r} has a path, query or fragment; {expected}"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise ConfigurationError(
            f"the Kubernetes API URL {value!r} has no host or a bad port; {expected}"
        )
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where and how to reach the Kubernetes API. ``token`` is asked before every request and
    shows in no repr; ``ca_file`` is the PEM bundle to trust for https (None: the system's);
    ``namespace`` is the pod's own (``in_cluster``) or the one given."""

    base_url: str
    token: TokenSource = field(repr=False, compare=False)
    ca_file: Path | None = None
    namespace: str = "default"
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", check_base_url(self.base_url))
        if not callable(self.token):
            raise TypeError("token must be a token source (a callable): see KubeConfig.explicit")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout!r}")

    @classmethod
    def explicit(
        cls,
        base_url: str,
        token: str,
        ca_file: str | Path | None = None,
        *,
        namespace: str = "default",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> KubeConfig:
        """A configuration given in full: ``base_url`` ``http://`` or ``https://``, a fixed
        ``token``, the CA bundle ``ca_file`` (None: the system's trust)."""
        ca = Path(ca_file) if ca_file is not None else None
        return cls(base_url, FixedToken(token), ca, namespace, timeout)

    @classmethod
    def in_cluster(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        directory: Path = SERVICE_ACCOUNT_DIR,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> KubeConfig:
        """The configuration of a pod: ``KUBERNETES_SERVICE_HOST`` and ``KUBERNETES_SERVICE_PORT``
        from ``env`` (default: this process's environment), and from ``directory`` the
        service-account ``token`` (read again before every request), ``ca.crt`` and
        ``namespace``. ``ConfigurationError`` naming what is missing."""
        environ = os.environ if env is None else env
        host = environ.get(SERVICE_HOST, "").strip()
        port = environ.get(SERVICE_PORT, "").strip()
        if not host or not port:
            raise ConfigurationError(
                f"not in a Kubernetes pod: {SERVICE_HOST} and {SERVICE_PORT} must both be set "
                "(the kubelet sets them in every container)"
            )
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        token = ServiceAccountToken(directory / "token")
        try:
            token()
        except KubeError as exc:
            raise ConfigurationError(
                f"{exc.message}: is a service account token mounted (automountServiceAccountToken)?"
            ) from None
        ca = directory / "ca.crt"
        if not ca.is_file():
            raise ConfigurationError(f"the cluster's CA bundle {ca} is missing")
        try:
            namespace = read_small(directory / "namespace", MAX_TOKEN_FILE).strip()
        except (OSError, ValueError):
            namespace = ""
        if not namespace:
            raise ConfigurationError(f"the pod's namespace {directory / 'namespace'} is unreadable")
        return cls(f"https://{host}:{port}", token, ca, namespace, timeout)


# ---- the client ---------------------------------------------------------------------------------


class KubeClient:
    """Requests to the Kubernetes API (see the module docstring). Thread-safe: each call has a
    connection of its own."""

    def __init__(self, config: KubeConfig) -> None:
        parts = urlsplit(config.base_url)
        self._config = config
        self._host = parts.hostname or ""
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._port = parts.port or 443
            cafile = str(config.ca_file) if config.ca_file is not None else None
            try:
                self._tls = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                detail = getattr(exc, "strerror", None) or str(exc)
                raise ConfigurationError(
                    f"the Kubernetes CA bundle {config.ca_file} is not usable: {detail}"
                ) from None
        else:
            self._port = parts.port or 80

    @property
    def config(self) -> KubeConfig:
        """What the client was made with."""
        return self._config

    def __repr__(self) -> str:
        return f"KubeClient({self._config.base_url!r})"

    def get(self, path: str) -> JsonObject:
        """GET ``path`` (percent-encoded, from ``/``): the object."""
        return self._call("GET", path, None, JSON)

    def create(self, path: str, body: Mapping[str, object]) -> JsonObject:
        """POST ``body`` to the collection ``path``: the object as created."""
        return self._call("POST", path, body, JSON)

    def replace(self, path: str, body: Mapping[str, object]) -> JsonObject:
        """PUT ``body`` at ``path`` (its ``metadata.resourceVersion`` makes it conditional: 409
        when the object changed since): the object as stored."""
        return self._call("PUT", path, body, JSON)

    def json_patch(self, path: str, ops: Sequence[Mapping[str, object]]) -> JsonObject:
        """PATCH ``path`` with the JSON patch ``ops`` (RFC 6902): the object as patched."""
        return self._call("PATCH", path, list(ops), JSON_PATCH)

    def _call(self, method: str, path: str, body: object, content_type: str) -> JsonObject:
        if not path.startswith("/") or not all(33 <= ord(ch) <= 126 for ch in path):
            raise ValueError(f"not a percent-encoded API path: {path!r}")
        token = self._config.token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": JSON,
            "User-Agent": USER_AGENT,
            "Connection": "close",
        }
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            headers["Content-Type"] = content_type
        started = time.monotonic()
        status, phrase, content = self._exchange(method, path, data, headers, token)
        if is_enabled(logging.DEBUG):
            elapsed_ms = round((time.monotonic() - started) * 1000, 1)
            log.debug("kube request", method=method, path=path, status=status, ms=elapsed_ms)
        if 200 <= status < 300:
            try:
                value = _decode(content)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise KubeError(status, "InvalidAnswer", f"{method} {path}: not a JSON object")
            return value
        raise _error_from(status, phrase, content, token)

    def _exchange(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], token: str
    ) -> tuple[int, str, bytes]:
        """Status, reason phrase and body of one request, or ``KubeError`` status 0."""
        timeout = self._config.timeout
        deadline = time.monotonic() + timeout
        connection: http.client.HTTPConnection
        if self._tls is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._tls
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        failure: KubeError
        response: http.client.HTTPResponse | None = None
        try:
            connection.request(method, path, body=data, headers=headers)
            sock = connection.sock  # kept: the answer is read through it after a close
            _bound(sock, deadline)
            response = connection.getresponse()
            content = _read_body(response, sock, deadline)
            return response.status, response.reason, content
        except TimeoutError as exc:
            failure = KubeError(
                0,
                "Timeout",
                _scrub(
                    f"{method} {path}: no complete answer within {timeout} s "
                    f"({type(exc).__name__}: {exc})",
                    token,
                ),
            )
        except (OSError, http.client.HTTPException) as exc:
            failure = KubeError(
                0,
                "ConnectionFailed",
                _scrub(f"{method} {path}: {type(exc).__name__}: {exc}", token),
            )
        finally:
            if response is not None:
                response.close()  # what is left unread, and the socket it holds
            connection.close()
        # Raised out here, so that not even its __context__ holds the library's exception.
        raise failure


def _bound(sock: socket | None, deadline: float) -> None:
    """Let the next wait on ``sock`` last no longer than what remains until ``deadline``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the request's time is up")
    if sock is not None:
        sock.settimeout(remaining)


def _read_body(response: http.client.HTTPResponse, sock: socket | None, deadline: float) -> bytes:
    declared = response.getheader("Content-Length") or ""
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise KubeError(
            0,
            "TooLarge",
            f"the answer announces {declared} bytes, more than the {MAX_BODY} the driver reads",
        )
    chunks: list[bytes] = []
    size = 0
    while not response.isclosed():  # closed (with its socket) once the whole body is read
        _bound(sock, deadline)
        chunk = response.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_BODY:
            raise KubeError(
                0, "TooLarge", f"the answer is larger than the {MAX_BODY} bytes the driver reads"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(content: bytes) -> object:
    try:
        value: object = json.loads(content)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    return value


def _error_from(status: int, phrase: str, content: bytes, token: str) -> KubeError:
    """The ``KubeError`` of a non-2xx answer: its ``Status`` object's reason and message when it
    has one, else the HTTP reason phrase."""
    reason = "".join(phrase.split()) or "Unknown"
    message = phrase or f"HTTP {status}"
    try:
        value = _decode(content)
    except ValueError:
        value = None
    if isinstance(value, dict) and value.get("kind") == "Status":
        given_reason, given_message = value.get("reason"), value.get("message")
        if isinstance(given_reason, str) and given_reason:
            reason = given_reason
        if isinstance(given_message, str) and given_message:
            message = given_message
    return KubeError(status, _scrub(reason, token), _scrub(message, token))
