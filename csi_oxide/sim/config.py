"""The simulator's start-up settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything fixed when a simulator starts (restart it to change any of these).

    The simulated rack has one silo holding one project, ``project``. ``token`` is the only bearer
    token it accepts (generated when None). ``hotplug`` off means today's platform: disks attach and
    detach only while their instance is stopped. ``backing`` is ``memory`` (no data, a content token
    per disk) or ``loop`` (sparse files under ``state_dir`` and loop devices for the local
    instance) or ``guest`` (the same files; the local instance is a qemu guest and attach is
    NVMe hot-plug). ``instances`` adds that many running instances besides the local one.
    ``latency_ms`` is added to every request, plus up to ``jitter_ms`` more; ``fail_rate`` is the
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
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
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
            f"latency_ms={self.latency_ms}, jitter_ms={self.jitter_ms}, "
            f"fail_rate={self.fail_rate}, lost_rate={self.lost_rate}, "
            f"slow_rate={self.slow_rate}, slow_byte_ms={self.slow_byte_ms}, "
            f"quota_gib={self.quota_gib}, seed={self.seed})"
        )
