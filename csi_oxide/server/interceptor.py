"""The one place where RPCs are logged, timed and their errors turned into gRPC statuses.

Every unary RPC passes through ``RpcInterceptor``: it binds a request ID and the object IDs of the
request (volume, snapshot, node) to the log context, so every line logged while serving the call
carries them, logs the call once at its end (``Probe`` at debug level), and maps any exception with
the table in ``csi_oxide.server.errors``. Request messages are never logged: they may carry secrets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar, cast

import grpc
import structlog
from google.protobuf.message import Message

from csi_oxide.daemon.inflight import rpc_deadline
from csi_oxide.daemon.log import bound, is_enabled, redact_text
from csi_oxide.errors import CsiOxideError
from csi_oxide.server.errors import status_for

log = structlog.get_logger("csi_oxide.rpc")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Request fields worth carrying on every log line of a call (never secrets).
_ID_FIELDS = ("volume_id", "source_volume_id", "snapshot_id", "node_id", "name")
_QUIET = frozenset({"Probe", "NodeGetCapabilities", "GetPluginInfo", "NodeGetVolumeStats"})


class RpcObserver(Protocol):
    """Told about every finished RPC (for metrics)."""

    def rpc_started(self, method: str) -> None:
        """A call to ``method`` (e.g. ``CreateVolume``) started."""

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call to ``method`` finished with ``code`` after ``seconds``."""


# The status message travels in the grpc-message trailer, percent-encoded (up to three characters
# per byte); a client drops a trailer beyond its metadata limit (8 KiB by default) and reports
# RESOURCE_EXHAUSTED instead of the real code. A request can put any amount of text into a
# message (an ID is echoed in NOT_FOUND), so messages are cut to fit well within that limit.
MAX_MESSAGE_ENCODED = 4096


def bounded(message: str) -> str:
    """``message`` cut so that its percent-encoded form stays within ``MAX_MESSAGE_ENCODED``."""
    size = 0
    for i, ch in enumerate(message):
        size += sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in ch.encode())
        if size > MAX_MESSAGE_ENCODED - 64:
            return f"{message[:i]}... ({len(message) - i} more characters cut)"
    return message


# Which of _ID_FIELDS each request message type has, found once per type.
_FIELDS_OF: dict[type, tuple[str, ...]] = {}


def _ids(request: object) -> dict[str, str]:
    if not isinstance(request, Message):
        return {}
    kind = type(request)
    fields = _FIELDS_OF.get(kind)
    if fields is None:
        present = request.DESCRIPTOR.fields_by_name
        fields = _FIELDS_OF[kind] = tuple(f for f in _ID_FIELDS if f in present)
    out: dict[str, str] = {}
    for field in fields:
        value = getattr(request, field)
        if isinstance(value, str) and value:
            # Bounded: a request can carry megabytes here, and this goes on every log line.
            out[field] = value if len(value) <= 128 else value[:128] + "..."
    return out


# The calls that make an object, and where their response holds its ID: (message, ID field).
_MADE = {"CreateVolume": ("volume", "volume_id"), "CreateSnapshot": ("snapshot", "snapshot_id")}


def _made_ids(method: str, response: object) -> dict[str, str]:
    """The ID of what a successful call made, for its log line: its request names only what
    was asked for (the CSI name), not the volume or snapshot ID the driver chose."""
    where = _MADE.get(method)
    if where is None or not isinstance(response, Message):
        return {}
    made = str(getattr(getattr(response, where[0]), where[1]))
    return {where[1]: made} if made else {}


def _request_id() -> str:
    """16 random hex characters (as ``uuid4().hex[:16]`` was, at a fifth of the cost)."""
    return os.urandom(8).hex()


Handler = Callable[[object, grpc.aio.ServicerContext[object, object]], Awaitable[object]]


def _refuse(
    context: grpc.aio.ServicerContext[object, object], code: grpc.StatusCode, message: str
) -> None:
    """End the call with ``code`` and ``message`` (gRPC then sends no response message).

    Not ``context.abort``: grpc.aio keeps the exception it raises on the call's state, and that
    exception's traceback holds the frames, hence the request, in a reference cycle. Only the
    cyclic collector frees such a cycle, and in the daemon (see ``settle_garbage_collector``) a
    full collection is rare, so the requests of refused calls piled up (a 1.4 MiB request
    refused 150 times held 500 MiB)."""
    context.set_code(code)
    context.set_details(message)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """Logs, times and maps errors of every unary-unary RPC."""

    def __init__(self, observers: list[RpcObserver] | None = None) -> None:
        self._observers = observers or []
        # The wrapped handler of each method, made on its first call: the servicers' handlers
        # are fixed once the server starts. Only methods that exist get here (an unknown one has
        # no handler), so this holds at most one entry per RPC of the CSI services.
        self._wrapped: dict[str, grpc.RpcMethodHandler[object, object]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        full = handler_call_details.method
        known = self._wrapped.get(full)
        if known is not None:
            return cast("grpc.RpcMethodHandler[Req, Resp]", known)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = full.rsplit("/", 1)[-1]
        # grpc's stubs type the handler as synchronous; in grpc.aio it is a coroutine function.
        inner = cast(Handler, handler.unary_unary)
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, inner),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[full] = cast("grpc.RpcMethodHandler[object, object]", wrapped)
        return wrapped

    def _wrap(self, method: str, inner: Handler) -> Handler:
        async def call(
            request: object, context: grpc.aio.ServicerContext[object, object]
        ) -> object:
            request_id = _request_id()
            ids = _ids(request)
            started = time.monotonic()
            for observer in self._observers:
                observer.rpc_started(method)
            # The call's deadline reaches the work below (InFlight cuts it after deadline + grace).
            with (
                bound(rpc=method, request_id=request_id, **ids),
                rpc_deadline(context.time_remaining()),
            ):
                code = grpc.StatusCode.OK
                message = ""
                made: dict[str, str] = {}
                try:
                    response = await inner(request, context)
                    made = _made_ids(method, response)
                    return response
                except asyncio.CancelledError:
                    code, message = grpc.StatusCode.CANCELLED, "cancelled by the caller"
                    raise
                except CsiOxideError as exc:
                    # Scrubbed where it was made (OxideError); masked again on the way out.
                    code, message = status_for(exc), bounded(redact_text(str(exc)))
                except NotImplementedError:
                    code, message = grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented"
                except Exception as exc:
                    message = bounded(redact_text(f"internal error: {exc}"))
                    code = grpc.StatusCode.INTERNAL
                    log.exception("rpc failed unexpectedly")
                finally:
                    seconds = time.monotonic() - started
                    self._log(method, code, message, seconds, made)
                    for observer in self._observers:
                        observer.rpc_finished(method, code, seconds)
                _refuse(context, code, message)
                return None

        return call

    @staticmethod
    def _log(
        method: str,
        code: grpc.StatusCode,
        message: str,
        seconds: float,
        made: dict[str, str],
    ) -> None:
        if code == grpc.StatusCode.OK:
            quiet = method in _QUIET
            if is_enabled(logging.DEBUG if quiet else logging.INFO):  # else: no record built
                ms = round(seconds * 1000, 1)
                (log.debug if quiet else log.info)("rpc", code=code.name, duration_ms=ms, **made)
            return
        fields = {"code": code.name, "duration_ms": round(seconds * 1000, 1)}
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            log.error("rpc", error=message, **fields)
        else:
            log.warning("rpc", error=message, **fields)
