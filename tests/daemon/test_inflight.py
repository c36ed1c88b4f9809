from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from csi_oxide.daemon.inflight import InFlight, current_deadline, rpc_deadline
from csi_oxide.errors import AbortedError, UnavailableError


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


async def test_work_is_cut_after_the_rpc_deadline_plus_grace_and_the_key_freed() -> None:
    inflight = InFlight(grace=0.2)
    started = asyncio.Event()
    held_at_the_end: list[bool] = []

    async def stalled() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # an Oxide request that never answers
        finally:
            held_at_the_end.append(inflight.busy("vol"))

    async def rpc() -> None:
        with rpc_deadline(0.1):
            await inflight.run(["vol"], "CreateVolume", stalled())

    loop = asyncio.get_running_loop()
    began = loop.time()
    caller = asyncio.create_task(rpc())
    await asyncio.wait_for(started.wait(), 10)
    caller.cancel()  # the CO's deadline: the caller goes away, the work goes on...
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert inflight.busy("vol")
    with capture_logs() as logs:
        await asyncio.wait_for(inflight.drain(), 10)  # ...until deadline + grace
    assert loop.time() - began > 0.29  # not before the deadline plus the grace
    assert [e["event"] for e in logs] == ["operation cut"]  # ended by the cut, not the caller
    assert held_at_the_end == [True]
    assert not inflight.busy("vol")
    # A retry starts afresh instead of answering ABORTED.
    assert await inflight.run(["vol"], "CreateVolume", asyncio.sleep(0, "fresh")) == "fresh"


async def test_a_caller_still_waiting_at_the_cut_gets_unavailable() -> None:
    inflight = InFlight(grace=0.05)
    with rpc_deadline(0.05), pytest.raises(UnavailableError, match="did not finish"):
        await inflight.run(["vol"], "DeleteVolume", asyncio.Event().wait())
    assert not inflight.busy("vol")


async def test_without_grace_or_without_a_deadline_nothing_is_cut() -> None:
    """The node's InFlight has no grace (a mkfs is never cut); an RPC without a deadline is
    not cut by the grace rule either."""
    for inflight, deadline in ((InFlight(), 0.01), (InFlight(grace=0.01), None)):
        with rpc_deadline(deadline):
            task = asyncio.ensure_future(inflight.run(["k"], "op", asyncio.sleep(0.2, "done")))
        assert await task == "done"
    assert current_deadline() is None


async def test_limit_cuts_work_even_without_a_deadline() -> None:
    inflight = InFlight(limit=0.05)
    with pytest.raises(UnavailableError):
        await inflight.run(["k"], "reconcile", asyncio.Event().wait())
    assert not inflight.busy("k")
