"""Waiting in tests: poll a condition until it holds or a deadline passes (never a bare sleep
to order events)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(done: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """Whether ``done()`` became true within ``seconds``, asked every ``interval`` seconds."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
