"""The reconciler's loop: how long it pauses between passes while the Oxide API keeps failing."""

from __future__ import annotations

import pytest

from csi_oxide.controller.reconcile import MAX_BACKOFF
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import UnavailableError
from csi_oxide.oxide.types import Snapshot
from csi_oxide.wiring import build_reconciler

INTERVAL = 10.0


class _StopError(Exception):
    pass


class _Sick:
    """An API whose listing fails ``failures`` times (503s), then works (nothing to repair)."""

    def __init__(self, failures: int) -> None:
        self.left = failures

    async def snapshot_list(self) -> list[Snapshot]:
        if self.left:
            self.left -= 1
            raise UnavailableError("Oxide answered 503")
        return []


async def _pauses(failures: int, passes: int, jitter: float) -> list[float]:
    """The pauses ``run_forever`` takes over ``passes`` passes, the first ``failures`` failing."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == passes:
            raise _StopError

    reconciler = build_reconciler(_Sick(failures), cluster="test", inflight=InFlight())  # type: ignore[arg-type]
    with pytest.raises(_StopError):
        await reconciler.run_forever(INTERVAL, sleep=sleep, random=lambda: jitter)
    return pauses


async def test_the_backoff_doubles_up_to_its_cap_and_stays_there() -> None:
    """40 failed passes in a row: the pause doubles from the interval until it reaches
    ``MAX_BACKOFF`` and never goes past it (uncapped, the 40th pause would be 10 * 2**30 s, some
    340 years); the first pass that works brings it back to the interval."""
    pauses = await _pauses(failures=40, passes=42, jitter=0.5)  # jitter 0.5: a factor of 1.0
    doubling = [INTERVAL * 2**k for k in range(9)]  # 10 s ... 2560 s; the next doubling is capped
    assert pauses[:9] == doubling
    assert pauses[9:40] == [MAX_BACKOFF] * 31
    assert pauses[40:] == [INTERVAL, INTERVAL]


@pytest.mark.parametrize("jitter", [0.0, 1.0])
async def test_jitter_keeps_the_capped_pause_within_a_quarter_of_the_cap(jitter: float) -> None:
    """The jitter (so that replicas do not ask in step) spreads the capped pause over 0.75 to
    1.25 times ``MAX_BACKOFF``, however long the failures go on."""
    pauses = await _pauses(failures=60, passes=60, jitter=jitter)
    assert pauses[-1] == MAX_BACKOFF * (0.75 + 0.5 * jitter)
    assert max(pauses) <= 1.25 * MAX_BACKOFF
