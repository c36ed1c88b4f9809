"""scripts/makespan.py: the API-bound minimum of the burst benchmark, as a pure computation."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("makespan", ROOT / "scripts" / "makespan.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["makespan"] = module
    spec.loader.exec_module(module)
    return module


ms = _load()
POLICIES = ("fifo", "longest_first")


@pytest.mark.parametrize("policy", POLICIES)
def test_with_a_slot_for_every_chain_the_longest_chain_decides(policy: str) -> None:
    chains = [[0.3, 0.5], [0.8], [0.1, 0.1, 0.1]]
    assert ms.makespan(chains, 3, policy) == pytest.approx(0.8)
    assert ms.makespan(chains, 64, policy) == pytest.approx(0.8)


@pytest.mark.parametrize("policy", POLICIES)
def test_one_slot_runs_everything_in_turn(policy: str) -> None:
    chains = [[0.3, 0.5], [0.8], [0.1, 0.1, 0.1]]
    assert ms.makespan(chains, 1, policy) == pytest.approx(1.9)


def test_fifo_serves_the_request_that_waited_longest() -> None:
    # cap 2: chains 0 and 1 start; at t=1 chain 2 (waiting since 0) goes before the second
    # requests of chains 0 and 1, which then run 1-2 and 2-3.
    assert ms.makespan([[1, 1], [1, 1], [2]], 2, "fifo") == pytest.approx(3)
    # Three short chains first hold the slots; the long chain then runs alone: 1 + 3.
    assert ms.makespan([[1], [1], [1, 1, 1]], 2, "fifo") == pytest.approx(4)


def test_longest_first_starts_the_critical_chain_at_once() -> None:
    assert ms.makespan([[1], [1], [1, 1, 1]], 2, "longest_first") == pytest.approx(3)
    assert ms.lower_bound([[1], [1], [1, 1, 1]], 2) == pytest.approx(3)


def test_lower_bound_is_work_over_slots_or_the_longest_chain() -> None:
    assert ms.lower_bound([[1, 1], [1, 1], [2]], 2) == pytest.approx(3)  # 6 / 2
    assert ms.lower_bound([[5], [1], [1]], 2) == pytest.approx(5)  # the chain of 5
    assert ms.lower_bound([], 4) == 0
    assert ms.makespan([], 4) == 0
    assert ms.makespan([[], [2]], 1) == pytest.approx(2)


@pytest.mark.parametrize("policy", POLICIES)
def test_random_bursts_lie_between_the_bounds(policy: str) -> None:
    """Any list schedule is at least the lower bound and at most the work over the slots plus
    the longest chain (Graham's bound for chains)."""
    rng = random.Random(18)  # noqa: S311 (test data, not crypto)
    for _ in range(200):
        cap = rng.randint(1, 16)
        chains = [
            [rng.uniform(0.0, 1.0) for _ in range(rng.randint(0, 5))]
            for _ in range(rng.randint(0, 40))
        ]
        got = ms.makespan(chains, cap, policy)
        work = sum(map(sum, chains))
        longest = max((sum(c) for c in chains), default=0.0)
        assert ms.lower_bound(chains, cap) - 1e-9 <= got <= work / cap + longest + 1e-9


def test_zero_durations_take_no_time() -> None:
    assert ms.makespan([[0, 0], [0]], 1) == 0
    assert ms.makespan([[0, 1], [1, 0]], 1) == pytest.approx(2)


@pytest.mark.parametrize(
    ("chains", "cap", "policy", "message"),
    [
        ([[1]], 0, "fifo", "cap must be at least 1"),
        ([[1, -0.5]], 2, "fifo", "chain 0 has a duration that is not >= 0"),
        ([[1], [math.nan]], 2, "fifo", "chain 1"),
        ([[1]], 2, "lifo", "policy must be one of fifo, longest_first"),
    ],
)
def test_bad_input_is_refused(
    chains: list[list[float]], cap: int, policy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ms.makespan(chains, cap, policy)


def test_finish_times_per_chain() -> None:
    # cap 2, first come: chains 0 and 1 run 0-1, chain 2 runs 1-3; their second requests
    # run 1-2 (chain 0) and 2-3 (chain 1).
    assert ms.finish_times([[1, 1], [1, 1], [2]], 2, "fifo") == pytest.approx([2, 3, 3])
    assert ms.finish_times([[1], [], [1, 1, 1]], 2, "longest_first") == pytest.approx([1, 0, 3])


def _entry(
    arrived: float, path: str, target: str | None = None, delay: float = 0.1
) -> dict[str, object]:
    return {
        "operation": "x",
        "path": path,
        "target": target,
        "delay": delay,
        "arrived": arrived,
        "answered": arrived + delay + 0.01,
    }


def test_chains_from_the_request_log() -> None:
    aliases = {"csi-a": "csi-a", "tmp-grow-a": "csi-a", "uuid-a": "csi-a", "csi-b": "csi-b"}
    entries = [
        _entry(5.0, "/v1/instances/i1/disks/attach", target="uuid-a", delay=0.5),
        _entry(1.0, "/v1/snapshots/tmp-grow-a", delay=0.02),
        _entry(2.0, "/v1/disks", target="csi-a", delay=0.4),
        _entry(2.5, "/v1/disks", target="csi-b", delay=0.3),
        _entry(3.0, "/v1/disks/csi-a", delay=0.03),
        _entry(3.5, "/v1/utilization"),  # nobody's
        _entry(0.5, "/v1/disks/csi-a"),  # before the window
        _entry(9.5, "/v1/disks/csi-b"),  # after it
    ]
    chains, unclaimed = ms.chains_from_log(entries, aliases, 1.0, 9.0)
    assert set(chains) == {"csi-a", "csi-b"}
    assert [e["arrived"] for e in chains["csi-a"]] == [1.0, 2.0, 3.0, 5.0]
    assert ms.durations(chains["csi-a"]) == [0.02, 0.4, 0.03, 0.5]
    assert ms.durations(chains["csi-b"], served=True) == pytest.approx([0.31])
    assert unclaimed == 1
    with pytest.raises(ValueError, match="without a number 'arrived'"):
        ms.chains_from_log([{"path": "/v1/disks"}], aliases, 0, 1)


def test_minimum_adds_each_chains_tail_after_its_last_answer() -> None:
    chains = [[1, 1], [1, 1], [2]]
    plain = ms.minimum(chains, 2)
    assert (plain.fifo, plain.longest_first, plain.bound) == pytest.approx((3, 3, 3))
    # Chain 0 ends at 2 (first come): a tail of 1.5 there ends the burst at 3.5; the bound
    # grows to that chain's 2 + 1.5.
    tailed = ms.minimum(chains, 2, [1.5, 0, 0])
    assert tailed.fifo == pytest.approx(3.5)
    assert tailed.bound == pytest.approx(3.5)
    assert tailed.best == min(tailed.fifo, tailed.longest_first)
    with pytest.raises(ValueError, match="one duration >= 0 per chain"):
        ms.minimum(chains, 2, [1.0])
    with pytest.raises(ValueError, match="one duration >= 0 per chain"):
        ms.minimum(chains, 2, [1.0, -1.0, 0])
