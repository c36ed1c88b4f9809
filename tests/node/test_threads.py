"""Long blocking waits of the node run in threads of their own (csi_oxide.node.threads)."""

from __future__ import annotations

import asyncio
import threading

from csi_oxide.node.threads import in_own_thread

GUARD = 10.0  # ends a test that would hang on the old behaviour; never reached when it passes
LONG_WAITS = 40  # more than asyncio's default executor has threads on any machine (at most 32)


async def test_long_waits_leave_the_default_executor_free() -> None:
    """A burst of volumes on one node: many calls block for long (device waits, zero checks);
    the short blocking calls of every other volume (record writes, mountinfo) still run."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def long_wait() -> str:
        started.release()
        release.wait(GUARD)
        return threading.current_thread().name

    waits = [
        asyncio.ensure_future(in_own_thread(long_wait, "long-wait")) for _ in range(LONG_WAITS)
    ]
    for _ in range(LONG_WAITS):  # every one of them is blocked now
        assert await asyncio.to_thread(started.acquire, True, GUARD)
    short = await asyncio.wait_for(asyncio.to_thread(lambda: "short call done"), GUARD)
    assert short == "short call done" and not any(w.done() for w in waits)
    release.set()
    names = await asyncio.gather(*waits)
    assert all(name.startswith("long-wait") for name in names)
