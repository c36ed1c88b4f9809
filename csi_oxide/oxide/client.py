"""``HttpOxideClient``: the ``OxideApi`` over HTTP, the only code that knows Oxide's HTTP and JSON.

Every request carries ``api-version``, a bearer token from the token provider (asked again on each
attempt, so a rotated token takes effect at once), and the ``csi-oxide/<version>`` User-Agent. Error
answers are translated here, once, into ``csi_oxide.oxide.errors``; bodies are parsed by the pure
functions of ``csi_oxide.oxide.wire``.

The token never leaves the ``authorization`` header: it is not stored on the client, not logged
(the one debug line per request has no headers), and not put in any exception.
"""

from __future__ import annotations

import asyncio
import random as _random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx
import structlog

from csi_oxide import __version__
from csi_oxide.errors import ConfigurationError, InvalidArgumentError
from csi_oxide.log import redact_text
from csi_oxide.oxide import wire
from csi_oxide.oxide.credentials import (
    OxideCredentials,
    StaticToken,
    TokenProvider,
    normalize_host,
)
from csi_oxide.oxide.errors import (
    OxideAlreadyExistsError,
    OxideConflictError,
    OxideError,
    OxideForbiddenError,
    OxideInsufficientCapacityError,
    OxideInvalidRequestError,
    OxideNotFoundError,
    OxideServerError,
    OxideUnauthorizedError,
    OxideUnavailableError,
)
from csi_oxide.oxide.names import is_uuid
from csi_oxide.oxide.types import Disk, DiskSpec, Instance, Snapshot, Utilization

log = structlog.get_logger("csi_oxide.oxide.client")

API_VERSION = "2026060800.0.0"
USER_AGENT = f"csi-oxide/{__version__}"
PAGE_LIMIT = 1000
DEFAULT_TIMEOUT = 300.0
# Requests in flight at once from one controller: enough for a burst of a hundred volumes at
# once (each needs two or three sequential calls) without queueing behind each other.
DEFAULT_MAX_CONCURRENCY = 64

_T = TypeVar("_T")
Params = dict[str, str | int]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry of 503 answers and connection errors/timeouts: exponential backoff with full jitter,
    given up when the next attempt would start after ``max_elapsed`` seconds."""

    max_elapsed: float = 60.0
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int, jitter: float) -> float:
        """The pause after failed attempt number ``attempt`` (1-based); ``jitter`` is in [0, 1)."""
        return jitter * min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP attempt, for metrics. ``outcome`` is ``ok``, ``http_error``, ``timeout``,
    ``connection_error`` or ``bad_answer`` (undecodable); ``status`` is None without an answer."""

    operation: str
    method: str
    status: int | None
    outcome: str
    duration: float
    request_id: str | None
    attempt: int


RequestObserver = Callable[[RequestRecord], None]


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that got no HTTP answer."""

    outcome: str
    exc: httpx.TransportError


class HttpOxideClient:
    """``OxideApi`` over ``httpx.AsyncClient``.

    Retries only 503 answers and connection errors or timeouts (see ``RetryPolicy``), so a POST may
    be sent twice when the first answer was lost: a retried ``disk_create`` or ``snapshot_create``
    whose first attempt did succeed then answers 400 ObjectAlreadyExists, which surfaces as
    ``OxideAlreadyExistsError``; the caller re-reads the object and compares it with what it asked
    for. At most ``max_concurrency`` requests are in flight at once (backoff pauses do not count).
    ``timeout`` bounds one request and is long because Oxide runs sagas synchronously.
    """

    def __init__(
        self,
        host: str,
        token: TokenProvider,
        project: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 10.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy | None = None,
        page_limit: int = PAGE_LIMIT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        request_observer: RequestObserver | None = None,
    ) -> None:
        if not callable(token):
            raise TypeError("token must be a token provider (a callable), not a string")
        if max_concurrency < 1 or page_limit < 1:
            raise ValueError("max_concurrency and page_limit must be at least 1")
        self._host = normalize_host(host, origin="Oxide host")
        self._token = token
        self._project = project
        self._retry = retry or RetryPolicy()
        self._page_limit = page_limit
        self._sleep = sleep
        self._monotonic = monotonic
        self._random = random
        self._observer = request_observer
        self._semaphore = asyncio.Semaphore(max_concurrency)
        limits = httpx.Limits(max_connections=max_concurrency)
        if transport is None:
            # TCP_NODELAY: a POST goes out as headers then body; with Nagle the body waits for
            # the server's delayed ACK of the headers, adding ~40 ms to every request on a
            # reused connection.
            transport = httpx.AsyncHTTPTransport(
                verify=_verify(ca_file),
                limits=limits,
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
        self._http = httpx.AsyncClient(
            base_url=self._host,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(connect_timeout, timeout)),
            limits=limits,
            headers={"api-version": API_VERSION, "user-agent": USER_AGENT},
            follow_redirects=False,
        )

    @classmethod
    def from_credentials(
        cls,
        credentials: OxideCredentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy | None = None,
        request_observer: RequestObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> HttpOxideClient:
        """The production client for resolved credentials (custom CA included)."""
        return cls(
            credentials.host,
            credentials.token,
            credentials.project,
            transport=transport,
            ca_file=credentials.ca_file,
            timeout=timeout,
            max_concurrency=max_concurrency,
            retry=retry,
            request_observer=request_observer,
        )

    @classmethod
    def for_tests(
        cls,
        *,
        host: str,
        token: str,
        project: str,
        transport: httpx.AsyncBaseTransport,
        retry: RetryPolicy | None = None,
        page_limit: int = PAGE_LIMIT,
    ) -> HttpOxideClient:
        """A client with a fixed token and quick retries, over an in-process transport."""
        quick = RetryPolicy(max_elapsed=5.0, base_delay=0.001, max_delay=0.01)
        return cls(
            host,
            StaticToken(token),
            project,
            transport=transport,
            retry=retry or quick,
            page_limit=page_limit,
        )

    def __repr__(self) -> str:
        return f"HttpOxideClient(host={self._host!r}, project={self._project!r})"

    __str__ = __repr__

    @property
    def project(self) -> str:
        """The project (name or ID) that names are resolved in and objects are created in."""
        return self._project

    @property
    def host(self) -> str:
        """The base URL of the Oxide API."""
        return self._host

    async def aclose(self) -> None:
        """Release connections."""
        await self._http.aclose()

    async def __aenter__(self) -> HttpOxideClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # ---- disks --------------------------------------------------------------------------------

    async def disk_create(self, spec: DiskSpec) -> Disk:
        """``disk_create`` in the project. The returned state is the stale ``creating``."""
        body = wire.disk_create_body(spec)
        answer = await self._call("disk_create", "POST", "/v1/disks", self._parent(), body)
        return self._parse("disk_create", answer, wire.parse_disk)

    async def disk_view(self, disk: str) -> Disk:
        """``disk_view``; ``OxideNotFoundError`` when there is no such disk."""
        path = f"/v1/disks/{_segment(disk, 'disk')}"
        answer = await self._call("disk_view", "GET", path, self._selector(disk))
        return self._parse("disk_view", answer, wire.parse_disk)

    async def disk_list(self) -> list[Disk]:
        """``disk_list`` over all pages of the project."""
        return await self._list("disk_list", "/v1/disks", self._parent(), wire.parse_disk)

    async def disk_delete(self, disk: str) -> None:
        """``disk_delete`` (400 unless the disk is detached or faulted)."""
        path = f"/v1/disks/{_segment(disk, 'disk')}"
        await self._call("disk_delete", "DELETE", path, self._selector(disk))

    # ---- snapshots ----------------------------------------------------------------------------

    async def snapshot_create(self, name: str, description: str, disk: str) -> Snapshot:
        """``snapshot_create`` of ``disk`` in the project; ready on return."""
        body = wire.snapshot_create_body(name, description, disk)
        answer = await self._call("snapshot_create", "POST", "/v1/snapshots", self._parent(), body)
        return self._parse("snapshot_create", answer, wire.parse_snapshot)

    async def snapshot_view(self, snapshot: str) -> Snapshot:
        """``snapshot_view``."""
        path = f"/v1/snapshots/{_segment(snapshot, 'snapshot')}"
        answer = await self._call("snapshot_view", "GET", path, self._selector(snapshot))
        return self._parse("snapshot_view", answer, wire.parse_snapshot)

    async def snapshot_list(self) -> list[Snapshot]:
        """``snapshot_list`` over all pages of the project."""
        return await self._list(
            "snapshot_list", "/v1/snapshots", self._parent(), wire.parse_snapshot
        )

    async def snapshot_delete(self, snapshot: str) -> None:
        """``snapshot_delete``."""
        path = f"/v1/snapshots/{_segment(snapshot, 'snapshot')}"
        await self._call("snapshot_delete", "DELETE", path, self._selector(snapshot))

    # ---- instances ----------------------------------------------------------------------------

    async def instance_view(self, instance: str) -> Instance:
        """``instance_view``."""
        path = f"/v1/instances/{_segment(instance, 'instance')}"
        answer = await self._call("instance_view", "GET", path, self._selector(instance))
        return self._parse("instance_view", answer, wire.parse_instance)

    async def instance_list(self) -> list[Instance]:
        """``instance_list`` over all pages of the project."""
        return await self._list(
            "instance_list", "/v1/instances", self._parent(), wire.parse_instance
        )

    async def instance_start(self, instance: str) -> Instance:
        """``instance_start`` (202)."""
        return await self._instance_action("instance_start", instance, "start")

    async def instance_stop(self, instance: str) -> Instance:
        """``instance_stop`` (202)."""
        return await self._instance_action("instance_stop", instance, "stop")

    async def instance_disk_list(self, instance: str) -> list[Disk]:
        """``instance_disk_list`` over all pages."""
        path = f"/v1/instances/{_segment(instance, 'instance')}/disks"
        return await self._list(
            "instance_disk_list", path, self._selector(instance), wire.parse_disk
        )

    async def instance_disk_attach(self, instance: str, disk: str) -> Disk:
        """``instance_disk_attach``; a disk name is looked up in the instance's project."""
        return await self._disk_action("instance_disk_attach", instance, disk, "attach")

    async def instance_disk_detach(self, instance: str, disk: str) -> Disk:
        """``instance_disk_detach``."""
        return await self._disk_action("instance_disk_detach", instance, disk, "detach")

    async def utilization_view(self) -> Utilization:
        """``utilization_view``: the silo's storage quota and provisioned bytes."""
        answer = await self._call("utilization_view", "GET", "/v1/utilization", {})
        return self._parse("utilization_view", answer, wire.parse_utilization)

    async def _instance_action(self, operation: str, instance: str, action: str) -> Instance:
        path = f"/v1/instances/{_segment(instance, 'instance')}/{action}"
        answer = await self._call(operation, "POST", path, self._selector(instance))
        return self._parse(operation, answer, wire.parse_instance)

    async def _disk_action(self, operation: str, instance: str, disk: str, action: str) -> Disk:
        _segment(disk, "disk")
        path = f"/v1/instances/{_segment(instance, 'instance')}/disks/{action}"
        body = wire.disk_path_body(disk)
        answer = await self._call(operation, "POST", path, self._selector(instance), body)
        return self._parse(operation, answer, wire.parse_disk)

    # ---- selectors, lists, parsing ------------------------------------------------------------

    def _parent(self) -> Params:
        """The ``project`` query of create and list endpoints."""
        return {"project": self._project}

    def _selector(self, value: str) -> Params:
        """``project`` only for a name; the API refuses it alongside a UUID."""
        return {} if is_uuid(value) else {"project": self._project}

    async def _list(
        self, operation: str, path: str, first: Params, parse: Callable[[object], _T]
    ) -> list[_T]:
        """Every item of every page: the first page with ``first`` (the scan parameters), later
        ones with only ``page_token``, until a page comes back with no ``next_page``."""
        found: list[_T] = []
        token: str | None = None
        while True:
            query: Params = (
                {**first, "limit": self._page_limit}
                if token is None
                else {"page_token": token, "limit": self._page_limit}
            )
            answer = await self._call(operation, "GET", path, query)
            page = self._parse(operation, answer, lambda body: wire.parse_results(body, parse))
            found.extend(page.items)
            for exc in page.skipped:
                log.warning("oxide_object_skipped", operation=operation, reason=str(exc))
            if page.next_page is None:
                return found
            if page.next_page == token:
                raise self._server_error(operation, answer, "pagination did not advance")
            token = page.next_page

    def _parse(self, operation: str, answer: httpx.Response, parse: Callable[[object], _T]) -> _T:
        """``parse`` applied to the JSON body; ``OxideServerError`` when it does not fit."""
        try:
            body: object = answer.json()
        except ValueError as exc:
            raise self._server_error(operation, answer, "the answer is not JSON") from exc
        try:
            return parse(body)
        except wire.WireError as exc:
            raise self._server_error(operation, answer, f"unexpected answer: {exc}") from exc

    def _server_error(self, operation: str, answer: httpx.Response, message: str) -> OxideError:
        return OxideServerError(
            message,
            status=answer.status_code,
            request_id=answer.headers.get("x-request-id"),
            operation=operation,
        )

    # ---- one request, with retries ------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None = None,
    ) -> httpx.Response:
        """Send until an answer other than 503 comes (or the deadline passes); raise the
        translated error for a non-2xx answer."""
        deadline = self._monotonic() + self._retry.max_elapsed
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt(operation, method, path, params, body, attempt)
            if isinstance(result, httpx.Response) and result.status_code != 503:
                if result.is_success:
                    return result
                raise error_from_response(operation, result)
            delay = self._retry.delay(attempt, self._random())
            if self._monotonic() + delay > deadline:
                cause = result.exc if isinstance(result, _Failed) else None
                raise self._give_up(operation, result, attempt) from cause
            log.info("oxide_request_retry", operation=operation, attempt=attempt, delay=delay)
            await self._sleep(delay)

    async def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None,
        attempt: int,
    ) -> httpx.Response | _Failed:
        headers = {"authorization": f"Bearer {self._token()}"}
        async with self._semaphore:
            start = self._monotonic()
            try:
                result: httpx.Response | _Failed = await self._http.request(
                    method, path, params=params, json=body, headers=headers
                )
            except httpx.TimeoutException as exc:
                result = _Failed("timeout", exc)
            except httpx.TransportError as exc:
                result = _Failed("connection_error", exc)
            except httpx.HTTPError as exc:
                # Not a transport failure (a body that does not decode, a redirect loop): the
                # server answered something we cannot use; retrying would not help.
                self._record(operation, method, None, self._monotonic() - start, attempt)
                raise OxideServerError(
                    self._scrub(f"{type(exc).__name__}: {exc}"), operation=operation
                ) from exc
            duration = self._monotonic() - start
        self._record(operation, method, result, duration, attempt)
        return result

    def _record(
        self,
        operation: str,
        method: str,
        result: httpx.Response | _Failed | None,
        duration: float,
        attempt: int,
    ) -> None:
        """One debug line and one observer call per attempt (``None``: an unusable answer)."""
        status: int | None = None
        request_id: str | None = None
        if isinstance(result, httpx.Response):
            status = result.status_code
            outcome = "ok" if result.is_success else "http_error"
            request_id = result.headers.get("x-request-id")
        else:
            outcome = result.outcome if result is not None else "bad_answer"
        log.debug(
            "oxide_request",
            method=method,
            operation=operation,
            status=status,
            outcome=outcome,
            duration_ms=round(duration * 1000, 1),
            request_id=request_id,
            attempt=attempt,
        )
        if self._observer is None:
            return
        record = RequestRecord(operation, method, status, outcome, duration, request_id, attempt)
        try:
            self._observer(record)
        except Exception as exc:  # noqa: BLE001 - a metrics hook must never fail a request
            log.warning("oxide_request_observer_failed", error=type(exc).__name__)

    def _give_up(self, operation: str, last: httpx.Response | _Failed, attempts: int) -> OxideError:
        after = f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}"
        if isinstance(last, httpx.Response):
            log.warning("oxide_request_gave_up", operation=operation, status=last.status_code)
            return error_from_response(operation, last, note=after)
        log.warning("oxide_request_gave_up", operation=operation, outcome=last.outcome)
        what = "timed out talking" if last.outcome == "timeout" else "could not connect"
        detail = self._scrub(f"{type(last.exc).__name__}: {last.exc}".rstrip(": "))
        return OxideUnavailableError(
            f"{what} to {self._host} ({detail}); {after}", operation=operation
        )

    def _scrub(self, text: str) -> str:
        """Remove the token from text that came from a library (defence in depth)."""
        return redact_text(text.replace(self._token(), "<redacted>"))


def error_from_response(operation: str, response: httpx.Response, *, note: str = "") -> OxideError:
    """The ``OxideError`` for a non-2xx answer, from its status and ``error_code``; ``note`` is
    appended to the server's message."""
    try:
        raw: object = response.json()
    except ValueError:
        raw = None
    body = wire.parse_error_body(raw)
    status = response.status_code
    message = body.message or response.reason_phrase or f"HTTP {status}"
    if note:
        message = f"{message} ({note})"
    return _error_class(status, body.error_code)(
        message,
        status=status,
        error_code=body.error_code,
        request_id=body.request_id or response.headers.get("x-request-id"),
        operation=operation,
    )


def _error_class(status: int, error_code: str | None) -> type[OxideError]:
    if status == 400:
        if error_code == "ObjectAlreadyExists":
            return OxideAlreadyExistsError
        return OxideInvalidRequestError
    return _BY_STATUS.get(status, OxideServerError)


_BY_STATUS: dict[int, type[OxideError]] = {
    401: OxideUnauthorizedError,
    403: OxideForbiddenError,
    404: OxideNotFoundError,
    409: OxideConflictError,
    503: OxideUnavailableError,
    507: OxideInsufficientCapacityError,
}


def _segment(value: str, kind: str) -> str:
    """A selector as one URL path segment."""
    if not value:
        raise InvalidArgumentError(f"empty {kind} name or ID")
    return quote(value, safe="")


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot use the CA bundle {ca_file}: {exc}") from exc
