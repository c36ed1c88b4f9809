"""One operation per object at a time, and operations that outlive a cancelled RPC.

The CSI spec lets a plugin answer ABORTED when a second call arrives for a volume that already has
one in flight (the caller backs off and retries). ``InFlight.run`` does that, and it also
shields the work from cancellation: when kubelet or a sidecar gives up on an RPC (deadline,
cancel), the mkfs or Oxide call underneath runs to its end and keeps the key busy until then, so
the retry never races a half-finished operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from csi_oxide.errors import AbortedError

T = TypeVar("T")


class InFlight:
    """A set of busy keys (volume IDs, snapshot names, ...) for one process."""

    def __init__(self) -> None:
        self._busy: dict[str, str] = {}
        self._tasks: set[asyncio.Task[object]] = set()

    def busy(self, key: str) -> bool:
        """True while an operation holds ``key``."""
        return key in self._busy

    async def run(self, keys: Iterable[str], what: str, work: Awaitable[T]) -> T:
        """Run ``work`` holding every key in ``keys``; AbortedError if any is already held.

        If the caller is cancelled, ``work`` continues in the background and the keys stay held
        until it finishes; its outcome is then only logged by whoever awaits it next (nobody), which
        is what a retry after a timeout wants: it finds the finished state.
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
        task: asyncio.Task[T] = asyncio.ensure_future(work)
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
