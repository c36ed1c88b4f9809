"""The cached readiness and its background watch."""

from __future__ import annotations

import asyncio

import pytest
import structlog
import structlog.testing

from csi_oxide.daemon.health import Health
from csi_oxide.errors import UnavailableError


async def _watch_through(failures: list[Exception]) -> Health:
    """Run the watch over one check per failure (then one that succeeds) and return the health."""
    health = Health()
    outcomes: list[Exception | None] = [*failures, None]
    seen: list[bool] = []

    async def check() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    async def sleep(_: float) -> None:
        seen.append(health.ready)
        if not outcomes:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await health.watch(check, interval=0, sleep=sleep)
    assert seen == [False] * len(failures) + [True]
    return health


async def test_a_driver_error_marks_not_ready_until_the_next_success() -> None:
    health = await _watch_through([UnavailableError("Oxide answered 503")])
    assert health.ready


async def test_an_unexpected_error_does_not_end_the_watch() -> None:
    with structlog.testing.capture_logs() as logs:
        health = await _watch_through([RuntimeError("bug"), KeyError("x")])
    assert health.ready
    problems = [e.get("problem") for e in logs if e["event"] == "not ready"]
    assert problems == ["health check failed unexpectedly: RuntimeError"]  # logged once, on change
    assert [e["event"] for e in logs][-1] == "ready again"
