"""``HttpOxideClient``: the ``OxideApi`` over HTTP, the only code that knows Oxide's HTTP and JSON.

Every request carries ``api-version``, a bearer token from the token provider (asked again on each
attempt, so a rotated token takes effect at once), and the ``csi-oxide/<version>`` User-Agent. Error
answers are translated here, once, into ``csi_oxide.oxide.errors``; bodies are parsed by the pure
functions of ``csi_oxide.oxide.wire``, which also refuse implausible values (a negative size, an
unknown state, an ID that is not a UUID), so a malformed answer becomes one ``OxideServerError``
(gRPC INTERNAL) naming the operation, never a wrong value handed on.

Bounds, whatever the server does:

- time: each attempt has a TOTAL deadline, connect to last byte (``timeout``), so a server
  trickling its headers or body a byte at a time cannot hold a request open; retries stop being
  started after ``RetryPolicy.max_elapsed``;
- memory: an answer's body is read up to ``max_body`` bytes, then the request is abandoned;
- listings: at most ``max_pages`` pages and ``max_items`` items, then a clear error;
- retries: 429 and 503 and connection failures only, with backoff, honouring ``Retry-After`` up
  to ``RetryPolicy.max_retry_after``.

An answer that never came (deadline, dropped connection) says nothing about whether Oxide carried
the operation out: Nexus runs a request's saga to its end even when the client has gone. Every
operation of the driver is therefore safe to repeat: creates are found again by name and compared
by description (400 ObjectAlreadyExists -> re-read), deletes of a missing object succeed, attach
and detach are idempotent for the same instance.

The token never leaves the ``authorization`` header: it is not logged (the one debug line per
request has no headers), shows in no repr, and every error carries scrubbed text only (see
``csi_oxide.oxide.errors``: the token is scrubbed even when the server echoes it back, also the
previous token after a rotation: the client remembers the last few it sent for that only).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import random as _random
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit

import structlog

from csi_oxide import __version__
from csi_oxide.contract.oxide_rules import is_uuid
from csi_oxide.daemon.log import is_enabled
from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide import wire
from csi_oxide.oxide.credentials import (
    OxideCredentials,
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
    scrub,
)
from csi_oxide.oxide.transport import (
    PERMANENT_CAUSES,
    UNREACHABLE_CAUSES,
    Answer,
    AnswerTooLargeError,
    Carrier,
    StreamCarrier,
    TransportFailure,
    encode_request,
    tls_context,
)
from csi_oxide.oxide.types import Disk, DiskSpec, Image, Instance, Snapshot, Utilization

log = structlog.get_logger("csi_oxide.oxide.client")

API_VERSION = "2026060800.0.0"
USER_AGENT = f"csi-oxide/{__version__}"
PAGE_LIMIT = 1000
# The total deadline of one HTTP attempt, connect to last byte. Oxide runs a request's saga before
# it answers (disk create, snapshot, delete), so this must outlast the slowest of them; the Go
# SDK's default total timeout is the same 600 s. A CSI call is cut much earlier by its own
# deadline (see ``csi_oxide.daemon.inflight``); this bounds the work nobody waits for (the
# reconciler).
DEFAULT_TIMEOUT = 600.0
# The largest answer body held in memory: a page of PAGE_LIMIT disks is under 1 MiB.
MAX_BODY = 8 * 1024 * 1024
# Bounds of one listing: more than any one project holds (12 disks per instance), far fewer
# requests than a server handing out fresh page tokens forever could otherwise draw.
MAX_PAGES = 200
MAX_ITEMS = 100_000
# Requests in flight at once from one controller: enough for a burst of a hundred volumes at
# once (each needs two or three sequential calls) without queueing behind each other.
DEFAULT_MAX_CONCURRENCY = 64

_T = TypeVar("_T")
Params = dict[str, str | int]


RETRYABLE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry of 429 and 503 answers and connection errors/timeouts: exponential backoff with full
    jitter, at least the server's ``Retry-After`` (capped at ``max_retry_after``), given up when
    the next attempt would start after ``max_elapsed`` seconds.

    A connection refused or a host name that does not resolve is retried only with
    ``retry_unreachable``: in production the API (or DNS) may be restarting, but on first contact
    (``csi-oxide doctor``) it almost always means a wrong address. A TLS handshake that cannot
    succeed (plain HTTP server, untrusted certificate) is never retried."""

    max_elapsed: float = 60.0
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    retry_unreachable: bool = True

    def retries(self, cause: str) -> bool:
        """Whether a connection that failed for ``cause`` (``transport``'s constants, or empty
        when unknown) is worth another attempt."""
        if cause in PERMANENT_CAUSES:
            return False
        return self.retry_unreachable or cause not in UNREACHABLE_CAUSES

    def delay(self, attempt: int, jitter: float, retry_after: float | None = None) -> float:
        """The pause after failed attempt number ``attempt`` (1-based); ``jitter`` is in [0, 1);
        ``retry_after`` is what the server asked for, if anything."""
        backoff = jitter * min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        if retry_after is None:
            return backoff
        return max(backoff, min(max(retry_after, 0.0), self.max_retry_after))


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
    """An attempt that got no (complete) HTTP answer; ``deadline``: the attempt's total deadline
    ended it; ``cause`` and ``hint``: the carrier's diagnosis (see ``TransportFailure``)."""

    outcome: str
    exc: Exception
    deadline: bool = False
    cause: str = ""
    hint: str = ""


class HttpOxideClient:
    """``OxideApi`` over HTTP, carried by the driver's own HTTP/1.1 carrier (``StreamCarrier``),
    or by the ``carrier`` given (the tests' and the simulator's in-process
    ``csi_oxide_lab.asgi.AsgiCarrier``); see ``csi_oxide.oxide.transport``. ``ca_file`` and
    ``connect_timeout`` are ``StreamCarrier``'s: a given carrier has its own.

    Retries only 503 answers and connection errors or timeouts (see ``RetryPolicy``), so a POST may
    be sent twice when the first answer was lost: a retried ``disk_create`` or ``snapshot_create``
    whose first attempt did succeed then answers 400 ObjectAlreadyExists, which surfaces as
    ``OxideAlreadyExistsError``; the caller re-reads the object and compares it with what it asked
    for. The client sends only GET, POST and DELETE, and the controller deletes every object by
    its UUID: so the one silent resend the carrier makes of a GET or DELETE whose kept-alive
    connection dropped (never of a POST) is harmless, a repeated DELETE answering 404, "gone"
    (``StreamCarrier``).
    At most ``max_concurrency`` requests are in flight at once (backoff pauses do not count).
    ``timeout`` is the total deadline of one attempt (connect to last byte) and is long because
    Oxide runs sagas synchronously; ``max_body``, ``max_pages`` and ``max_items`` bound memory and
    listings (see the module's docstring).
    """

    def __init__(
        self,
        host: str,
        token: TokenProvider,
        project: str,
        *,
        carrier: Carrier | None = None,
        ca_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = 10.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy | None = None,
        page_limit: int = PAGE_LIMIT,
        max_body: int = MAX_BODY,
        max_pages: int = MAX_PAGES,
        max_items: int = MAX_ITEMS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        request_observer: RequestObserver | None = None,
    ) -> None:
        if not callable(token):
            raise TypeError("token must be a token provider (a callable), not a string")
        if min(max_concurrency, page_limit, max_body, max_pages, max_items) < 1:
            raise ValueError("max_concurrency, page_limit and the bounds must be at least 1")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._host = normalize_host(host, origin="Oxide host")
        self._token = token
        self._project = project
        self._retry = retry or RetryPolicy()
        self._page_limit = page_limit
        self._timeout = timeout
        self._max_body = max_body
        self._max_pages = max_pages
        self._max_items = max_items
        self._sleep = sleep
        self._monotonic = monotonic
        self._random = random
        self._observer = request_observer
        self._sent: collections.deque[str] = collections.deque(maxlen=4)
        self._semaphore = asyncio.Semaphore(max_concurrency)
        if carrier is None:
            tls = _tls(ca_file) if ca_file is not None or self._host.startswith("https:") else None
            carrier = StreamCarrier(
                self._host,
                tls=tls,
                connect_timeout=min(connect_timeout, timeout),
                max_connections=max_concurrency,
            )
        self._carrier: Carrier = carrier

    @classmethod
    def from_credentials(
        cls,
        credentials: OxideCredentials,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy | None = None,
        request_observer: RequestObserver | None = None,
        carrier: Carrier | None = None,
    ) -> HttpOxideClient:
        """The production client for resolved credentials (custom CA included)."""
        return cls(
            credentials.host,
            credentials.token,
            credentials.project,
            carrier=carrier,
            ca_file=credentials.ca_file,
            timeout=timeout,
            max_concurrency=max_concurrency,
            retry=retry,
            request_observer=request_observer,
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
        await self._carrier.aclose()

    async def __aenter__(self) -> HttpOxideClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # ---- disks --------------------------------------------------------------------------------

    async def disk_create(self, spec: DiskSpec) -> Disk:
        """``disk_create`` in the project. The returned state is the stale ``creating``."""
        body = wire.disk_create_body(spec)
        answer = await self._call("disk_create", "POST", "/v1/disks", self._parent(), body)
        return self._parse("disk_create", answer, wire.parse_disk, about=spec.name)

    async def disk_view(self, disk: str) -> Disk:
        """``disk_view``; ``OxideNotFoundError`` when there is no such disk."""
        path = f"/v1/disks/{_segment(disk, 'disk')}"
        answer = await self._call("disk_view", "GET", path, self._selector(disk))
        return self._parse("disk_view", answer, wire.parse_disk, about=disk)

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
        return self._parse("snapshot_create", answer, wire.parse_snapshot, about=name)

    async def snapshot_view(self, snapshot: str) -> Snapshot:
        """``snapshot_view``."""
        path = f"/v1/snapshots/{_segment(snapshot, 'snapshot')}"
        answer = await self._call("snapshot_view", "GET", path, self._selector(snapshot))
        return self._parse("snapshot_view", answer, wire.parse_snapshot, about=snapshot)

    async def snapshot_list(self) -> list[Snapshot]:
        """``snapshot_list`` over all pages of the project."""
        return await self._list(
            "snapshot_list", "/v1/snapshots", self._parent(), wire.parse_snapshot
        )

    async def snapshot_delete(self, snapshot: str) -> None:
        """``snapshot_delete``."""
        path = f"/v1/snapshots/{_segment(snapshot, 'snapshot')}"
        await self._call("snapshot_delete", "DELETE", path, self._selector(snapshot))

    # ---- images -------------------------------------------------------------------------------

    async def image_create(self, name: str, description: str, snapshot_id: str) -> Image:
        """``image_create`` from a snapshot, as an image of the project."""
        body = wire.image_create_body(name, description, snapshot_id)
        answer = await self._call("image_create", "POST", "/v1/images", self._parent(), body)
        return self._parse("image_create", answer, wire.parse_image, about=name)

    async def image_view(self, image: str, *, silo: bool = False) -> Image:
        """``image_view``: by name the project's image, or with ``silo`` the silo's."""
        path = f"/v1/images/{_segment(image, 'image')}"
        params = {} if silo else self._selector(image)
        answer = await self._call("image_view", "GET", path, params)
        return self._parse("image_view", answer, wire.parse_image, about=image)

    async def image_list(self) -> list[Image]:
        """``image_list`` of the project's images, over all pages."""
        return await self._list("image_list", "/v1/images", self._parent(), wire.parse_image)

    async def image_delete(self, image: str) -> None:
        """``image_delete``."""
        path = f"/v1/images/{_segment(image, 'image')}"
        await self._call("image_delete", "DELETE", path, self._selector(image))

    # ---- instances ----------------------------------------------------------------------------

    async def instance_view(self, instance: str) -> Instance:
        """``instance_view``."""
        path = f"/v1/instances/{_segment(instance, 'instance')}"
        answer = await self._call("instance_view", "GET", path, self._selector(instance))
        return self._parse("instance_view", answer, wire.parse_instance, about=instance)

    # Not part of OxideApi: the driver never calls the four below; tests, benchmarks and the
    # end-to-end checks do (to pick nodes, cold-plug, and look at what is attached).

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
        return self._parse(operation, answer, wire.parse_instance, about=instance)

    async def _disk_action(self, operation: str, instance: str, disk: str, action: str) -> Disk:
        _segment(disk, "disk")
        path = f"/v1/instances/{_segment(instance, 'instance')}/disks/{action}"
        body = wire.disk_path_body(disk)
        answer = await self._call(operation, "POST", path, self._selector(instance), body)
        return self._parse(operation, answer, wire.parse_disk, about=disk)

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
        seen_tokens: set[str] = set()
        pages = 0
        while True:
            query: Params = (
                {**first, "limit": self._page_limit}
                if token is None
                else {"page_token": token, "limit": self._page_limit}
            )
            answer = await self._call(operation, "GET", path, query)
            pages += 1
            page = self._parse(operation, answer, lambda body: wire.parse_results(body, parse))
            found.extend(page.items)
            for exc in page.skipped:
                reason = scrub(str(exc), self._secrets())
                log.warning("oxide_object_skipped", operation=operation, reason=reason)
            if page.next_page is None:
                return found
            if page.next_page in seen_tokens or page.next_page == token:
                raise self._server_error(operation, answer, "pagination did not advance")
            if pages >= self._max_pages or len(found) >= self._max_items:
                raise self._server_error(
                    operation,
                    answer,
                    f"the listing did not end after {pages} pages and {len(found)} items; "
                    f"the driver reads at most {self._max_pages} pages and {self._max_items} "
                    "items of one listing (is OXIDE_HOST an Oxide API?)",
                )
            seen_tokens.add(page.next_page)
            token = page.next_page

    def _parse(
        self,
        operation: str,
        answer: Answer,
        parse: Callable[[object], _T],
        *,
        about: str | None = None,
    ) -> _T:
        """``parse`` applied to the JSON body; ``OxideServerError`` when it does not fit, or when
        it describes another object than ``about`` (the name or UUID asked for): the driver acts
        on what a view answers (it deletes by the UUID it read), so an answer about another
        object, from a confused proxy or a buggy or hostile server, must never pass for it."""
        try:
            body: object = answer.json()
        except ValueError as exc:
            raise self._server_error(operation, answer, "the answer is not JSON") from exc
        try:
            result = parse(body)
        except wire.WireError as exc:
            raise self._server_error(operation, answer, f"unexpected answer: {exc}") from exc
        if about is not None and not _is_about(result, about):
            found = f"{getattr(result, 'name', '')!r} ({getattr(result, 'id', '')})"
            raise self._server_error(
                operation,
                answer,
                f"the answer is about another object, {found}, not {about[:64]!r}",
            )
        return result

    def _server_error(self, operation: str, answer: Answer, message: str) -> OxideError:
        return OxideServerError(
            message,
            status=answer.status_code,
            request_id=answer.headers.get("x-request-id"),
            operation=operation,
            secrets=self._secrets(),
        )

    # ---- one request, with retries ------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None = None,
    ) -> Answer:
        """Send until an answer other than 429/503 comes (or the deadline passes); raise the
        translated error for a non-2xx answer."""
        deadline = self._monotonic() + self._retry.max_elapsed
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt(operation, method, path, params, body, attempt)
            retry_after: float | None = None
            if isinstance(result, Answer):
                if result.status_code not in RETRYABLE_STATUSES:
                    if result.is_success:
                        return result
                    raise error_from_response(operation, result, secrets=self._secrets())
                retry_after = _retry_after(result.headers.get("retry-after"), time.time())
            elif not self._retry.retries(result.cause):
                raise self._give_up(operation, result, attempt) from result.exc
            delay = self._retry.delay(attempt, self._random(), retry_after)
            if self._monotonic() + delay > deadline:
                cause = result.exc if isinstance(result, _Failed) else None
                raise self._give_up(operation, result, attempt) from cause
            log.info(
                "oxide_request_retry",
                operation=operation,
                attempt=attempt,
                delay=round(delay, 3),
                cause=self._why(result),
            )
            await self._sleep(delay)

    def _why(self, result: Answer | _Failed) -> str:
        """What a retry line says it retries: the status, or the connection's failure."""
        if isinstance(result, Answer):
            return f"HTTP {result.status_code}"
        return scrub(f"{result.outcome}: {_failure_text(result.exc)}", self._secrets())

    async def _attempt(
        self,
        operation: str,
        method: str,
        path: str,
        params: Params,
        body: Mapping[str, object] | None,
        attempt: int,
    ) -> Answer | _Failed:
        token = self._token()
        if token not in self._sent:
            self._sent.append(token)  # scrubbed from errors even once the provider rotated it
        headers = {
            "api-version": API_VERSION,
            "user-agent": USER_AGENT,
            "authorization": f"Bearer {token}",
        }
        request = encode_request(self._host, method, path, params, body, headers)
        async with self._semaphore:
            start = self._monotonic()
            try:
                async with asyncio.timeout(self._timeout):
                    result: Answer | _Failed = await self._carrier.exchange(request, self._max_body)
            except TimeoutError as exc:
                # The total deadline: a server trickling bytes defeats per-read timeouts only.
                result = _Failed("timeout", exc, deadline=True)
            except TransportFailure as exc:
                result = _Failed(exc.outcome, exc, cause=exc.cause, hint=exc.hint)
            except AnswerTooLargeError as exc:
                # Not a transport failure: the server answered something we cannot use;
                # retrying would not help.
                self._record(operation, method, None, self._monotonic() - start, attempt)
                raise OxideServerError(
                    str(exc), operation=operation, secrets=self._secrets()
                ) from exc
            duration = self._monotonic() - start
        self._record(operation, method, result, duration, attempt)
        return result

    def _record(
        self,
        operation: str,
        method: str,
        result: Answer | _Failed | None,
        duration: float,
        attempt: int,
    ) -> None:
        """One debug line and one observer call per attempt (``None``: an unusable answer)."""
        status: int | None = None
        request_id: str | None = None
        if isinstance(result, Answer):
            status = result.status_code
            outcome = "ok" if result.is_success else "http_error"
            # The tokens this client has sent (this attempt's included): what an answer can echo.
            # Not ``_secrets()``: that asks the token provider again (a file stat per request).
            request_id = _short(result.headers.get("x-request-id"), self._sent)
        else:
            outcome = result.outcome if result is not None else "bad_answer"
        if is_enabled(logging.DEBUG):  # off in production: no event built for nothing
            log.debug(
                "oxide_request",
                method=method,
                operation=operation,
                status=status,
                outcome=outcome,
                duration_ms=round(duration * 1000, 1),
                oxide_request_id=request_id,
                attempt=attempt,
            )
        if self._observer is None:
            return
        record = RequestRecord(operation, method, status, outcome, duration, request_id, attempt)
        try:
            self._observer(record)
        except Exception as exc:  # noqa: BLE001 - a metrics hook must never fail a request
            log.warning("oxide_request_observer_failed", error=type(exc).__name__)

    def _give_up(self, operation: str, last: Answer | _Failed, attempts: int) -> OxideError:
        after = f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}"
        if isinstance(last, Answer):
            log.warning("oxide_request_gave_up", operation=operation, status=last.status_code)
            return error_from_response(operation, last, note=after, secrets=self._secrets())
        log.warning("oxide_request_gave_up", operation=operation, outcome=last.outcome)
        if last.deadline:
            what = "no complete answer within the request deadline"
            detail = f"{self._timeout:g} s, connect to last byte"
        else:
            what = "timed out talking" if last.outcome == "timeout" else "could not connect"
            detail = _failure_text(last.exc)
        hint = f": {last.hint}" if last.hint else ""
        return OxideUnavailableError(
            f"{what} to {self._host} ({detail}){hint}; {after}",
            operation=operation,
            secrets=self._secrets(),
        )

    def _secrets(self) -> tuple[str, ...]:
        """What no error text may contain: the token as it is now, and the last few sent (an
        answer to a request that carried the previous token may arrive after a rotation)."""
        return (self._token(), *self._sent)


def _failure_text(exc: Exception) -> str:
    """``Type: message`` of a failed attempt's exception (a carrier's text is that already)."""
    if isinstance(exc, TransportFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _is_about(obj: object, asked: str) -> bool:
    """True when ``obj`` (a parsed Disk, Snapshot or Instance) is the object named or
    identified by ``asked``."""
    if is_uuid(asked):
        return uuid.UUID(asked) == uuid.UUID(str(getattr(obj, "id", "")))
    return asked == getattr(obj, "name", None)


# What request IDs look like (Oxide's are UUIDs): nothing in such a value is ever scrubbed but
# the tokens themselves (the scrubber's patterns all need a character outside this set).
_PLAIN_ID_RE = re.compile(r"[0-9A-Za-z_.-]{1,64}", re.ASCII)


def _short(value: str | None, secrets: Iterable[str]) -> str | None:
    """A header value fit for a log line or a metric: scrubbed, at most 64 printable
    characters."""
    if value is None:
        return None
    plain = _PLAIN_ID_RE.fullmatch(value) and "oxide-token-" not in value
    if plain and not any(secret and secret in value for secret in secrets):
        return value  # the scrubber would leave it as it is: spare its five passes
    text = scrub(value, tuple(secrets))[:64]
    return text if text.isprintable() else "".join(ch for ch in text if ch.isprintable())


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # isdigit() alone also says yes to "²" and "٣"
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def error_from_response(
    operation: str, response: Answer, *, note: str = "", secrets: tuple[str, ...] = ()
) -> OxideError:
    """The ``OxideError`` for a non-2xx answer, from its status and ``error_code``; ``note`` is
    appended to the server's message. The text is scrubbed by ``OxideError`` (``secrets`` too)."""
    try:
        raw: object = response.json()
    except ValueError:
        raw = None
    body = wire.parse_error_body(raw)
    status = response.status_code
    message = body.message or response.reason_phrase or f"HTTP {status}"
    if 300 <= status < 400:
        message = _redirect_message(status, response.headers.get("location"))
    if note:
        message = f"{message} ({note})"
    return _error_class(status, body.error_code)(
        message,
        status=status,
        error_code=body.error_code,
        request_id=body.request_id or response.headers.get("x-request-id"),
        operation=operation,
        secrets=secrets,
    )


def _redirect_message(status: int, location: str | None) -> str:
    where = ""
    if location:
        parts = urlsplit(location)
        if parts.scheme and parts.hostname:
            where = f" to {parts.scheme}://{parts.hostname}"
    return (
        f"the API answered a redirect ({status}){where}, which the driver does not follow "
        "(the token would go along): set OXIDE_HOST to the API's own URL"
    )


def _error_class(status: int, error_code: str | None) -> type[OxideError]:
    if status == 400:
        if error_code == "ObjectAlreadyExists":
            return OxideAlreadyExistsError
        return OxideInvalidRequestError
    return _BY_STATUS.get(status, OxideServerError)


_BY_STATUS: dict[int, type[OxideError]] = {
    401: OxideUnauthorizedError,
    429: OxideUnavailableError,
    403: OxideForbiddenError,
    404: OxideNotFoundError,
    409: OxideConflictError,
    503: OxideUnavailableError,
    507: OxideInsufficientCapacityError,
}


def _segment(value: str, kind: str) -> str:
    """A selector as one URL path segment. Callers pass only names and IDs already checked
    (``volumes.require_id``, ``is_valid_name``, node UUIDs, UUIDs parsed from Oxide's answers): an
    empty one is a programmer's error, never a user's, and would address the whole collection."""
    if not value:  # not `assert`: it must hold under `python -O` too
        raise AssertionError(f"empty {kind} selector: the caller did not check it")
    return quote(value, safe="")


def _tls(ca_file: Path | None) -> ssl.SSLContext:
    try:
        return tls_context(None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        if ca_file is None:
            raise ConfigurationError(f"cannot load the TLS trust store: {exc}") from exc
        raise ConfigurationError(f"cannot use the CA bundle {ca_file}: {exc}") from exc
