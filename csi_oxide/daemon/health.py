"""Cached readiness, so that Probe never waits on the Oxide API.

The controller refreshes it in the background; Probe reads it. A slow or unreachable API therefore
never makes the liveness probe fail (which would restart a perfectly fine controller); it shows as
``ready=false`` with the reason logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from csi_oxide.errors import CsiOxideError

log = structlog.get_logger("csi_oxide.daemon.health")


class Health:
    """Readiness flag; the problem behind a change to not ready is logged."""

    def __init__(self, *, ready: bool = True) -> None:
        self.ready = ready

    def mark(self, ok: bool, problem: str | None = None) -> None:
        """Record the outcome of a check, logging transitions only."""
        if ok != self.ready:
            if ok:
                log.info("ready again")
            else:
                log.warning("not ready", problem=problem)
        self.ready = ok

    async def watch(
        self,
        check: Callable[[], Awaitable[None]],
        *,
        interval: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Run ``check`` forever every ``interval`` seconds (cancel the task to stop)."""
        while True:
            try:
                await check()
            except CsiOxideError as exc:
                self.mark(False, str(exc))
            except Exception as exc:  # the watch must outlive any one failure
                log.exception("health check failed unexpectedly")
                self.mark(False, f"health check failed unexpectedly: {type(exc).__name__}")
            else:
                self.mark(True)
            await sleep(interval)
