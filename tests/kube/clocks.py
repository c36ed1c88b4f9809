"""Clocks for the leader elector's tests: real time, only faster, and wall clocks set wrong."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

# How much faster than real time the electors of the tests live: a lease of 8 s lasts 1.6 s.
SPEED = 5.0


class FastClock:
    """Real time run ``speed`` times faster (monotonic time and sleeps alike), its wall clock
    ``skew`` away from the true one: replicas whose clocks disagree."""

    def __init__(self, speed: float = SPEED, skew: timedelta = timedelta(0)) -> None:
        self._speed = speed
        self._start = time.monotonic()
        self._wall = datetime.now(UTC) + skew

    def monotonic(self) -> float:
        return (time.monotonic() - self._start) * self._speed

    def now(self) -> datetime:
        return self._wall + timedelta(seconds=self.monotonic())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)
