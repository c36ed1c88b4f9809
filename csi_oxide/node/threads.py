"""Long blocking waits of the node in threads of their own, not in asyncio's default executor.

The default executor has a handful of threads (``min(32, CPUs + 4)``: six on a two-core node)
shared by every short blocking call of the plugin (record writes with fsync, mountinfo reads,
realpath). A call that blocks for long there (waiting up to a minute for a device to appear, a
zero check reading thousands of blocks) holds one of them; a burst of volumes on one node would
hold all of them, and every other volume's short calls would queue behind. Those long calls run
here instead, each in a thread started for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_own_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` in a new thread named ``name``; cancelling the wait does not stop ``fn`` (the
    caller arranges that, e.g. with an event ``fn`` checks)."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)
    finally:
        executor.shutdown(wait=False)
