"""The HTTP face of the simulator: a Starlette app applying, in the real server's order, routing,
the ``api-version`` header (and the translation of an older request), request parsing,
authentication and the operation; plus the test knobs (latency, scripted faults, random 503s) and,
in validate mode, the contract check of every request and response against the published document.

The app sees the simulator only through ``Served``, so this module does not import the simulator
(which imports this one to build its app).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from csi_oxide_lab.sim import contract, errors, routing
from csi_oxide_lab.sim.faults import Faults
from csi_oxide_lab.sim.handlers import Call, Handler, Reply
from csi_oxide_lab.sim.versions import check_api_version, upgrade_body

_log = logging.getLogger(__name__)
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_JSON = "application/json"


class Served(Protocol):
    """What the app needs of the simulator it serves."""

    @property
    def faults(self) -> Faults:
        """Scripted failures per operation."""

    @property
    def request_counts(self) -> Counter[str]:
        """Routed requests per operationId (the app counts them)."""

    def token_matches(self, token: str) -> bool:
        """Whether ``token`` is the simulator's bearer token."""

    def draw_delay(self, operation_id: str | None = None) -> float:
        """Seconds to hold this request (``operation_id``: None when no route matched)."""

    @property
    def logs_requests(self) -> bool:
        """Whether answered requests are logged (``record_request``)."""

    def record_request(self, entry: dict[str, object]) -> None:
        """Note one answered request (the request log)."""

    def draw_failure(self) -> bool:
        """Whether a random 503 strikes this request before it is applied."""

    def draw_lost(self) -> bool:
        """Whether this request's answer is lost after it is applied."""

    def draw_slow(self) -> float:
        """Seconds between single bytes of this request's answer (0: sent at once)."""

    def record_violation(self, message: str) -> None:
        """Note a contract violation."""

    async def apply(self, handler: Handler, call: Call, *, reads: bool = False) -> Reply:
        """Run one operation on the simulated state (``reads``: it only reads, a GET)."""


def _error_body(rid: str, err: errors.ApiError) -> bytes:
    body: dict[str, str] = {"request_id": rid, "message": err.message}
    if err.error_code is not None:
        body["error_code"] = err.error_code
    return json.dumps(body).encode()


class _Exchange:
    """One request on its way through the pipeline."""

    def __init__(self, sim: Served, request: Request, body: bytes, validate: bool) -> None:
        self.sim, self.request, self.body, self.validate = sim, request, body, validate
        self.rid = str(uuid.uuid4())
        self.checked_operation = False  # responses are validated once an operation matched
        self.checked = contract.Request(
            request.method,
            request.url.path,
            list(request.query_params.multi_items()),
            # the token is no business of the validator (nor of any message it writes)
            {k: v for k, v in request.headers.items() if k != "authorization"},
            body,
        )

    def _bytes_reply(self, status: int, body: bytes) -> Response:
        content_type = _JSON if body else ""
        if self.validate and self.checked_operation:
            problems = contract.response_errors(self.checked, status, body, content_type)
            if problems:
                self.sim.record_violation(
                    f"response {status} to {self.request.method} {self.request.url.path}: "
                    + "; ".join(problems)
                )
                err = errors.ApiError(500, "Internal", "Internal Server Error")
                status, body, content_type = 500, _error_body(self.rid, err), _JSON
        headers = {"x-request-id": self.rid}
        return Response(body, status_code=status, headers=headers, media_type=content_type or None)

    def error(self, err: errors.ApiError) -> Response:
        return self._bytes_reply(err.status, _error_body(self.rid, err))

    def reply(self, status: int, payload: object | None) -> Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        return self._bytes_reply(status, body)

    def _check_request(self) -> None:
        if not self.validate:
            return
        problems = contract.request_errors(self.checked)
        if problems:
            detail = "; ".join(problems)
            self.sim.record_violation(
                f"request {self.request.method} {self.request.url.path}: {detail}"
            )
            raise errors.bad_request(f"request does not match the published Oxide API: {detail}")

    def _record_unknown_path(self) -> None:
        """A path the published document lacks is a violation (still answered 404)."""
        problems = contract.request_errors(self.checked)
        if problems:
            self.sim.record_violation(
                f"request {self.request.method} {self.request.url.path}: " + "; ".join(problems)
            )

    def _check_auth(self) -> None:
        header = self.request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        valid = (
            scheme.lower() == "bearer"
            and token.startswith("oxide-token-")
            and self.sim.token_matches(token)
        )
        if not valid:
            raise errors.unauthorized()

    async def run(self) -> Response:
        arrived = time.monotonic()
        try:
            matched: tuple[routing.Route, dict[str, str]] | routing.NoRouteError = routing.match(
                self.request.method, self.request.url.path
            )
        except routing.NoRouteError as exc:
            matched = exc
        operation = None if isinstance(matched, routing.NoRouteError) else matched[0].operation_id
        delay = self.sim.draw_delay(operation)  # mutations may be slower than reads
        if delay > 0:
            await asyncio.sleep(delay)
        response = await self._answer(matched)
        if self.sim.logs_requests:
            self.sim.record_request(
                {
                    "operation": operation,
                    "method": self.request.method,
                    "path": self.request.url.path,
                    "target": _target(self.body),
                    "status": response.status_code,
                    "delay": delay,
                    "arrived": arrived,
                    "answered": time.monotonic(),
                }
            )
        return response

    async def _answer(
        self, matched: tuple[routing.Route, dict[str, str]] | routing.NoRouteError
    ) -> Response:
        if isinstance(matched, routing.NoRouteError):
            if self.validate and matched.status == 404:
                self._record_unknown_path()
            message = "Not Found" if matched.status == 404 else "Method Not Allowed"
            return self.error(errors.ApiError(matched.status, None, message))
        route, params = matched
        self.checked_operation = True
        self.sim.request_counts[route.operation_id] += 1
        try:
            return await self._operation(route, params)
        except errors.ApiError as err:
            return self.error(err)

    async def _operation(self, route: routing.Route, params: dict[str, str]) -> Response:
        version = check_api_version(self.request.headers.get("api-version"))
        body = upgrade_body(route.operation_id, version, self.body)
        self.checked.body = body
        self._check_request()
        self._check_auth()
        fault = self.sim.faults.take(route.operation_id)
        if fault is not None and not fault.after:
            raise errors.for_status(fault.status)
        if self.sim.draw_failure():
            raise errors.unavailable()
        query = dict(self.request.query_params)
        call = Call(params, query, body)
        status, payload = await self.sim.apply(route.handler, call, reads=route.method == "GET")
        if fault is not None:
            raise errors.for_status(fault.status)  # applied, but the answer is lost
        if self.sim.draw_lost():
            raise errors.unavailable()  # applied, but the answer is lost
        response = self.reply(status, payload)
        pause = self.sim.draw_slow()
        if pause > 0:
            return _trickled(response, pause)  # applied; the answer comes a byte at a time
        return response


def _target(body: bytes) -> str | None:
    """What a request body names: its ``disk`` (attach, detach, snapshot) or else its ``name``
    (create), for the request log; None for anything else."""
    if not body.startswith(b"{"):
        return None
    try:
        fields = json.loads(body)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    for key in ("disk", "name"):
        value = fields.get(key)
        if isinstance(value, str):
            return value
    return None


def _trickled(response: Response, pause: float) -> Response:
    """``response`` sent one byte every ``pause`` seconds."""

    body = bytes(response.body)

    async def bytes_one_by_one() -> AsyncIterator[bytes]:
        for i in range(len(body)):
            yield body[i : i + 1]
            await asyncio.sleep(pause)

    return StreamingResponse(
        bytes_one_by_one(), status_code=response.status_code, headers=dict(response.headers)
    )


def build_app(sim: Served, *, validate: bool) -> Starlette:
    """The ASGI app serving ``sim``."""
    if validate:
        contract.load()  # parse the document now, not during the first request

    async def endpoint(request: Request) -> Response:
        exchange = _Exchange(sim, request, await request.body(), validate)
        try:
            return await exchange.run()
        except Exception:  # noqa: BLE001 (a simulator bug must still answer like the server)
            _log.exception("simulator failed on %s %s", request.method, request.url.path)
            return exchange.error(errors.ApiError(500, "Internal", "Internal Server Error"))

    return Starlette(routes=[StarletteRoute("/{path:path}", endpoint, methods=_METHODS)])
