"""The API-bound minimum of a burst: how long given chains of requests take with no time spent
anywhere but in the API, under a cap on the requests in flight.

A chain is one volume's requests, each sent the moment the one before it is answered; a
request holds one of ``cap`` slots for its whole duration (the driver's cap on concurrent
Oxide requests). The makespan is when the last chain's last request is answered, every chain
starting at time 0. Two schedules are computed, both achievable with zero overhead:

- ``fifo``: a free slot goes to the request that has waited longest (ties: lower chain index
  first), as the driver's request semaphore hands them out;
- ``longest_first``: a free slot goes to the request whose chain has the most work left
  (the classic critical-path rule; it knows every duration in advance).

The best possible schedule lies between ``lower_bound`` (total work over ``cap``, or the
longest chain, whichever is longer) and the shorter of the two.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

POLICIES = ("fifo", "longest_first")


def _check(chains: Sequence[Sequence[float]], cap: int) -> None:
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    for i, chain in enumerate(chains):
        for duration in chain:
            if not duration >= 0:  # also catches nan
                raise ValueError(f"chain {i} has a duration that is not >= 0: {duration!r}")


def lower_bound(chains: Sequence[Sequence[float]], cap: int) -> float:
    """No schedule under ``cap`` is shorter: the work spread evenly over the slots, or the
    longest chain, whichever is longer."""
    _check(chains, cap)
    total = sum(sum(chain) for chain in chains)
    return max([total / cap] + [sum(chain) for chain in chains])


def makespan(chains: Sequence[Sequence[float]], cap: int, policy: str = "fifo") -> float:
    """When the last request of ``chains`` is answered under ``policy`` (see the module's
    docstring), no request waiting while a slot is free."""
    return max(finish_times(chains, cap, policy), default=0.0)


def finish_times(chains: Sequence[Sequence[float]], cap: int, policy: str = "fifo") -> list[float]:
    """When each chain's last request is answered under ``policy`` (0 for an empty chain)."""
    _check(chains, cap)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    remaining = [sum(chain) for chain in chains]
    # Waiting requests as (priority, arrival number, chain, step); running as (end, chain, step).
    waiting: list[tuple[float, int, int, int]] = []
    running: list[tuple[float, int, int]] = []
    arrivals = 0

    def wait(chain: int, step: int) -> None:
        nonlocal arrivals
        priority = -remaining[chain] if policy == "longest_first" else 0.0
        heapq.heappush(waiting, (priority, arrivals, chain, step))
        arrivals += 1

    for i, chain in enumerate(chains):
        if chain:
            wait(i, 0)
    now = 0.0
    finished = [0.0] * len(chains)
    while waiting or running:
        while waiting and len(running) < cap:
            _, _, i, step = heapq.heappop(waiting)
            remaining[i] -= chains[i][step]
            heapq.heappush(running, (now + chains[i][step], i, step))
        now, i, step = heapq.heappop(running)
        if step + 1 < len(chains[i]):
            wait(i, step + 1)
        else:
            finished[i] = now
    return finished


def chains_from_log(
    entries: Sequence[Mapping[str, object]],
    aliases: Mapping[str, str],
    start: float,
    end: float,
) -> tuple[dict[str, list[Mapping[str, object]]], int]:
    """The simulator's request log (``csi-oxide sim --request-log``) as one chain per volume:
    the entries that arrived between ``start`` and ``end`` (``time.monotonic()``) whose body
    ``target`` or a path segment is one of ``aliases`` (a disk's name or ID, or another name
    that belongs to the volume, mapped to the volume), each volume's in the order they arrived;
    and how many entries of the window belong to no volume."""
    chains: dict[str, list[Mapping[str, object]]] = {}
    unclaimed = 0
    for entry in sorted(entries, key=lambda e: seconds(e, "arrived")):
        if not start <= seconds(entry, "arrived") <= end:
            continue
        words = [str(entry.get("target") or ""), *str(entry.get("path", "")).split("/")]
        volume = next((aliases[w] for w in words if w in aliases), None)
        if volume is None:
            unclaimed += 1
        else:
            chains.setdefault(volume, []).append(entry)
    return chains, unclaimed


def seconds(entry: Mapping[str, object], key: str) -> float:
    """The number ``key`` of a request log entry; ValueError when it is not one."""
    value = entry.get(key)
    if not isinstance(value, int | float):
        raise ValueError(f"request log entry without a number {key!r}: {dict(entry)!r}")
    return float(value)


def durations(chain: Sequence[Mapping[str, object]], served: bool = False) -> list[float]:
    """Each request's latency as drawn by the simulator, or with ``served`` the time it spent
    in the simulator (arrival to answer: the drawn latency plus the handling)."""
    if served:
        return [seconds(e, "answered") - seconds(e, "arrived") for e in chain]
    return [seconds(e, "delay") for e in chain]


@dataclass(frozen=True, slots=True)
class Minimum:
    """The zero-overhead schedules of a burst: first-come, longest-first, the shorter of the
    two (``best``, achievable, so at least the optimum) and ``bound`` (at most the optimum)."""

    fifo: float
    longest_first: float
    bound: float

    @property
    def best(self) -> float:
        return min(self.fifo, self.longest_first)


def minimum(
    chains: Sequence[Sequence[float]], cap: int, tails: Sequence[float] | None = None
) -> Minimum:
    """The API-bound minimum of ``chains`` under ``cap``; ``tails[i]`` is work after chain
    ``i``'s last answer that holds no slot (the node's mkfs and mount of a volume staged here;
    0 for the others), so a chain ends ``tails[i]`` after its last request."""
    tails = list(tails) if tails is not None else [0.0] * len(chains)
    if len(tails) != len(chains) or not all(t >= 0 for t in tails):
        raise ValueError("tails wants one duration >= 0 per chain")

    def ending(policy: str) -> float:
        finished = finish_times(chains, cap, policy)
        return max((f + t for f, t in zip(finished, tails, strict=True)), default=0.0)

    longest_tail = max((sum(c) + t for c, t in zip(chains, tails, strict=True)), default=0.0)
    return Minimum(
        ending("fifo"), ending("longest_first"), max(lower_bound(chains, cap), longest_tail)
    )
