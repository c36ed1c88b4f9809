"""One operation per object at a time, and operations that outlive a cancelled RPC, for a while.

The CSI spec lets a plugin answer ABORTED when a second call arrives for a volume that already has
one in flight (the caller backs off and retries). ``InFlight.run`` does that, and it also
shields the work from cancellation: when kubelet or a sidecar gives up on an RPC (deadline,
cancel), the mkfs or Oxide call underneath runs on and keeps the key busy, so the retry never
races a half-finished operation.

But not forever. An ``InFlight`` made with a ``grace`` (the controller's) cuts the work once the
RPC's own deadline plus that grace has passed: a slow or stalled Oxide API must not hold a volume's
guard for long after the caller gave up, or every retry answers ABORTED "already in progress"
while the first attempt waits. The RPC's deadline reaches here through ``rpc_deadline`` (set by
the gRPC interceptor; no gRPC below the server layer). Cutting is safe for the controller because
each of its steps is repeatable and found again by name (see ``csi_oxide.oxide.client``): the
retry, starting afresh, finds what the cut attempt left. The node keeps the default (no cut): a
mkfs cut in the middle is not something a retry can tell from a filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Iterable, Iterator
from typing import TypeVar

import structlog

from csi_oxide.errors import AbortedError, UnavailableError

T = TypeVar("T")
log = structlog.get_logger(__name__)

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "csi_oxide_rpc_deadline", default=None
)


@contextlib.contextmanager
def rpc_deadline(seconds_left: float | None) -> Iterator[None]:
    """Within this block, the current RPC must be answered in ``seconds_left`` seconds (None:
    the caller set no deadline)."""
    when = None if seconds_left is None else time.monotonic() + seconds_left
    token = _DEADLINE.set(when)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The ``time.monotonic()`` by which the current RPC must be answered, if known."""
    return _DEADLINE.get()


class InFlight:
    """A set of busy keys (volume IDs, snapshot names, ...) for one process.

    ``grace``: cut an operation once the deadline of the RPC that started it plus ``grace``
    seconds has passed (None: never cut). ``limit``: cut any operation after this many seconds,
    deadline or not (None: no limit).
    """

    def __init__(self, *, grace: float | None = None, limit: float | None = None) -> None:
        self._busy: dict[str, str] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._grace = grace
        self._limit = limit

    def busy(self, key: str) -> bool:
        """True while an operation holds ``key``."""
        return key in self._busy

    def _time_left(self) -> float | None:
        candidates: list[float] = []
        deadline = current_deadline()
        if self._grace is not None and deadline is not None:
            candidates.append(deadline + self._grace - time.monotonic())
        if self._limit is not None:
            candidates.append(self._limit)
        return max(0.0, min(candidates)) if candidates else None

    async def run(self, keys: Iterable[str], what: str, work: Awaitable[T]) -> T:
        """Run ``work`` holding every key in ``keys``; AbortedError if any is already held.

        If the caller is cancelled, ``work`` continues in the background and the keys stay held
        until it finishes or is cut (see the class); its outcome is then only logged by whoever
        awaits it next (nobody), which is what a retry after a timeout wants: it finds the
        finished state, or the state the cut attempt left, and carries on from there.
        """
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            if key in self._busy:
                if asyncio.iscoroutine(work):
                    work.close()
                raise AbortedError(
                    f"an operation ({self._busy[key]}) is already in progress for {key}; "
                    "retry later"
                )
        for key in wanted:
            self._busy[key] = what
        time_left = self._time_left()
        bounded = work if time_left is None else _cut_after(time_left, what, wanted, work)
        task: asyncio.Task[T] = asyncio.ensure_future(bounded)
        self._tasks.add(task)

        def release(done: asyncio.Task[T]) -> None:
            for key in wanted:
                self._busy.pop(key, None)
            self._tasks.discard(done)
            if not done.cancelled():
                done.exception()  # mark retrieved: a caller that went away must not warn

        task.add_done_callback(release)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every running operation (used at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _cut_after(seconds: float, what: str, keys: list[str], work: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        log.warning("operation cut", operation=what, keys=keys, after_s=round(seconds, 1))
        raise UnavailableError(
            f"{what} for {', '.join(keys)} did not finish within the call's deadline; it was "
            "stopped so that a retry can start afresh (the Oxide API is slow or not answering)"
        ) from None
