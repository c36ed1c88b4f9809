"""The device finder's wait (``UdevDeviceFinder.find``) against this machine's own sysfs and
uevents: a volume that never appears is NOT_FOUND at the deadline, and a cancelled wait ends its
thread at once instead of polling until the timeout. The loop-device tests (test_node_loop.py)
cover finding a device that does appear."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from csi_oxide.errors import NotFoundError
from csi_oxide.node.devices import UdevDeviceFinder

# No disk on any machine carries this serial.
ABSENT = "csi-0123456789abcdef"


def _waiting_threads(before: set[int | None]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("device-wait") and t.ident not in before
    ]


async def test_a_device_that_never_appears_is_not_found_at_the_deadline() -> None:
    finder = UdevDeviceFinder(timeout=0.2)
    with pytest.raises(NotFoundError, match="appeared within"):
        await asyncio.wait_for(finder.find(ABSENT), 10)


async def test_a_cancelled_wait_for_a_device_stops_its_thread() -> None:
    """NodeStage cancels the wait when the volume's claim is refused: the thread that waits
    for the device ends too, instead of polling until the timeout (a minute by default)."""
    finder = UdevDeviceFinder(timeout=60)
    before = {t.ident for t in threading.enumerate()}
    waiting = asyncio.ensure_future(finder.find(ABSENT))
    deadline = time.monotonic() + 10
    while not _waiting_threads(before):
        assert time.monotonic() < deadline, "the wait never started"
        await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    deadline = time.monotonic() + 5  # the wait looks at its stop flag every POLL_SECONDS
    while _waiting_threads(before):
        assert time.monotonic() < deadline, "the device wait kept running after its cancel"
        await asyncio.sleep(0.05)
