from __future__ import annotations

import asyncio

import pytest

from csi_oxide.errors import AbortedError
from csi_oxide.inflight import InFlight


async def test_second_call_for_busy_key_is_aborted() -> None:
    inflight = InFlight()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(inflight.run(["vol-a"], "CreateVolume", slow()))
    await asyncio.sleep(0)
    with pytest.raises(AbortedError, match="CreateVolume"):
        await inflight.run(["vol-a"], "DeleteVolume", slow())
    # Another key is independent: one slow volume never holds up another.
    assert await inflight.run(["vol-b"], "DeleteVolume", asyncio.sleep(0, "other")) == "other"
    gate.set()
    assert await first == "done"
    assert not inflight.busy("vol-a")


async def test_cancelled_caller_does_not_cancel_the_work() -> None:
    inflight = InFlight()
    gate = asyncio.Event()
    finished: list[str] = []

    async def work() -> None:
        await gate.wait()
        finished.append("yes")

    caller = asyncio.create_task(inflight.run(["vol"], "NodeStageVolume", work()))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The key stays busy until the shielded work really ends.
    assert inflight.busy("vol")
    gate.set()
    await inflight.drain()
    assert finished == ["yes"]
    assert not inflight.busy("vol")


async def test_failure_releases_the_key() -> None:
    inflight = InFlight()

    async def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        await inflight.run(["k"], "op", boom())
    assert not inflight.busy("k")
