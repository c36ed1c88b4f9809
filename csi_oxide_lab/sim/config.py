"""The simulator's start-up settings, and the parser of its per-operation latency."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csi_oxide_lab.sim.handlers import ROUTES

# The operation classes ``op_latency_ms`` accepts besides operationIds: ``read`` is every GET
# (views, lists: fast on a rack), ``mutation`` every other served operation (disk create and
# delete, attach, detach, snapshots, instance start and stop: sagas, the slow ones).
READ, MUTATION = "read", "mutation"
OPERATION_CLASSES: dict[str, frozenset[str]] = {
    READ: frozenset(op for method, _, op, _ in ROUTES if method == "GET"),
    MUTATION: frozenset(op for method, _, op, _ in ROUTES if method != "GET"),
}
OPERATIONS = OPERATION_CLASSES[READ] | OPERATION_CLASSES[MUTATION]
# The longest latency one entry may ask for: an hour is no longer a latency but a hang (and a
# typo such as 3000000 for 300 is caught).
MAX_OP_LATENCY_MS = 3_600_000.0


@dataclass(frozen=True, slots=True)
class OpLatency:
    """Extra latency for the operations ``key`` names (an operationId, or ``read`` or
    ``mutation``): ``low_ms`` plus up to ``high_ms - low_ms`` more, uniformly drawn."""

    key: str
    low_ms: float
    high_ms: float

    def __post_init__(self) -> None:
        if self.key not in OPERATIONS and self.key not in OPERATION_CLASSES:
            raise ValueError(
                f"{self.key!r} is neither an operation class ({', '.join(OPERATION_CLASSES)}) "
                "nor an operationId the simulator serves (" + ", ".join(sorted(OPERATIONS)) + ")"
            )
        if not 0.0 <= self.low_ms <= self.high_ms <= MAX_OP_LATENCY_MS:
            raise ValueError(
                f"latency of {self.key}: want 0 <= LOW <= HIGH <= {MAX_OP_LATENCY_MS:.0f} "
                f"milliseconds, got {self.low_ms:g}:{self.high_ms:g}"
            )

    def covers(self, operation_id: str) -> bool:
        """Whether this entry applies to ``operation_id``."""
        return self.key == operation_id or operation_id in OPERATION_CLASSES.get(self.key, ())


def _milliseconds(text: str, entry: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{entry!r}: {text!r} is not a number of milliseconds") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise ValueError(f"{entry!r}: {text!r} is not a finite number of milliseconds")
    return value


def parse_op_latency(text: str) -> tuple[OpLatency, ...]:
    """``KEY=LOW:HIGH`` or ``KEY=MS`` entries, comma-separated, as ``OpLatency`` values (each
    key once; ``KEY`` an operationId or ``read``/``mutation``); ValueError with the reason for
    anything else. An empty text is no entry."""
    entries: list[OpLatency] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            if text.strip():
                raise ValueError(f"an empty entry in {text!r}")
            continue
        key, sep, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{entry!r}: want KEY=LOW:HIGH or KEY=MS")
        low_text, colon, high_text = value.partition(":")
        low = _milliseconds(low_text, entry)
        high = _milliseconds(high_text, entry) if colon else low
        if any(e.key == key for e in entries):
            raise ValueError(f"{key!r} is given twice")
        entries.append(OpLatency(key, low, high))
    return tuple(entries)


def op_latency_for(entries: tuple[OpLatency, ...], operation_id: str) -> OpLatency | None:
    """The entry that applies to ``operation_id``: the one naming it, else its class's, else
    None."""
    named = [e for e in entries if e.key == operation_id]
    if named:
        return named[0]
    return next((e for e in entries if e.covers(operation_id)), None)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything fixed when a simulator starts (restart it to change any of these).

    The simulated rack has one silo holding one project, ``project``. ``token`` is the only bearer
    token it accepts (generated when None). ``hotplug`` off means today's platform: disks attach and
    detach only while their instance is stopped. ``backing`` is ``memory`` (no data, a content token
    per disk) or ``loop`` (sparse files under ``state_dir`` and loop devices for the local
    instance) or ``guest`` (the same files; the local instance is a qemu guest and attach is
    NVMe hot-plug). ``local_instances`` is how many instances run on this machine (loop backing:
    each sees the disks attached to it as loop devices in a device folder of its own; the guest
    backing has one); ``instances`` adds that many running instances besides the local ones.
    ``latency_ms`` is added to every request, plus up to ``jitter_ms`` more; ``op_latency``
    adds, per operation, the latency of the entry naming its operationId, else that of its class
    (``read``: GET, ``mutation``: the rest), else nothing; ``request_log`` is a file that gets
    one JSON line per request answered (see ``Simulator.record_request``); ``fail_rate`` is the
    probability that a request is answered 503 before it is handled, ``lost_rate`` that it is
    handled but its answer is lost (a 503, as a dropped connection looks to a client that retries);
    ``slow_rate`` is the probability that a request is handled but its answer trickles out one
    byte every ``slow_byte_ms`` (a stalled network or overloaded API: a client without a total
    deadline waits for minutes);
    all drawn from a generator seeded with ``seed``.
    ``quota_gib`` is the silo's storage quota.
    """

    project: str = "csi"
    token: str | None = None
    hotplug: bool = False
    backing: str = "memory"
    state_dir: Path | None = None
    instances: int = 0
    local_instances: int = 1
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    op_latency: tuple[OpLatency, ...] = ()
    request_log: Path | None = None
    fail_rate: float = 0.0
    lost_rate: float = 0.0
    slow_rate: float = 0.0
    slow_byte_ms: float = 200.0
    quota_gib: int = 10240
    seed: int | None = None

    def __repr__(self) -> str:
        # The token is a credential: never print it.
        token = None if self.token is None else "<redacted>"
        return (
            f"SimConfig(project={self.project!r}, token={token}, hotplug={self.hotplug}, "
            f"backing={self.backing!r}, state_dir={self.state_dir!r}, instances={self.instances}, "
            f"local_instances={self.local_instances}, "
            f"latency_ms={self.latency_ms}, jitter_ms={self.jitter_ms}, "
            f"op_latency={self.op_latency!r}, request_log={self.request_log!r}, "
            f"fail_rate={self.fail_rate}, lost_rate={self.lost_rate}, "
            f"slow_rate={self.slow_rate}, slow_byte_ms={self.slow_byte_ms}, "
            f"quota_gib={self.quota_gib}, seed={self.seed})"
        )
