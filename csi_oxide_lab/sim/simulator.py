"""The simulated Oxide rack: its state behind a lock, its knobs (latency, faults, random 503s,
lost and slow answers) and the ASGI app that serves it.

The app (``app.py``) knows the simulator only through the ``Served`` protocol it declares, so the
import goes one way; the in-process test helpers are in ``inprocess.py``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from typing import TextIO, TypeVar

from starlette.applications import Starlette

from csi_oxide_lab.sim.app import build_app
from csi_oxide_lab.sim.backing import Backing
from csi_oxide_lab.sim.backings import make_backing
from csi_oxide_lab.sim.config import OPERATIONS, SimConfig, op_latency_for
from csi_oxide_lab.sim.faults import Faults
from csi_oxide_lab.sim.handlers import Call, Handler, Reply
from csi_oxide_lab.sim.model import BlankSource, SimState
from csi_oxide_lab.sim.spec import GIB, DiskState

T = TypeVar("T")


def new_token() -> str:
    """A fresh token in the real format: ``oxide-token-`` + 40 hex characters."""
    return "oxide-token-" + secrets.token_hex(20)


class Simulator:
    """A simulated Oxide rack: one silo, one project, the local instance (``config.local_instances``
    of them, ``local_instance_ids``; the first is ``local_instance_id``) plus ``config.instances``
    more, all running. The local instance has no boot disk, so all 12 disk slots are usable
    (with ``guest`` backing it is a qemu guest with a boot disk: 11 slots are left).

    Serve it with ``asgi_app()`` (in-process with ``csi_oxide_lab.asgi``, or under uvicorn);
    tests that also look inside or force states use ``inprocess.InProcessSimulator``.
    ``request_counts`` counts routed requests per operationId; ``faults`` scripts failures;
    ``contract_violations`` lists every request or response that broke the published document
    (validate mode only). Instance start and stop answer ``starting``/``stopping`` and complete on
    the next request that reads the instance. Call ``close()`` to release the backing (loop
    backing without ``state_dir`` works in a temporary directory that ``close()`` removes).
    """

    def __init__(self, config: SimConfig) -> None:
        if not 0.0 <= config.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if not 0.0 <= config.slow_rate <= 1.0 or config.slow_byte_ms < 0:
            raise ValueError("slow_rate must be between 0 and 1, slow_byte_ms not negative")
        keys = [entry.key for entry in config.op_latency]
        if len(keys) != len(set(keys)):
            raise ValueError(f"op_latency names an operation or class twice: {keys}")
        self.config = config
        self.token = config.token if config.token is not None else new_token()
        if config.local_instances < 1:
            raise ValueError("local_instances must be at least 1")
        self.backing: Backing = make_backing(
            config.backing, config.state_dir, config.local_instances
        )
        self._state = SimState(
            project=config.project,
            backing=self.backing,
            hotplug=config.hotplug,
            quota_bytes=config.quota_gib * GIB,
            extra_instances=config.instances,
            local_instances=config.local_instances,
        )
        self.project_id = self._state.project_id
        self.local_instance_id = self._state.local_instance_id
        self.local_instance_ids = list(self._state.local_instance_ids)
        if config.backing == "guest":
            self._boot_guest()
        self.instance_ids = list(self._state.instances)
        self.contract_violations: list[str] = []
        self.request_counts: Counter[str] = Counter()
        self.faults = Faults()
        self._random = random.Random(config.seed)  # noqa: S311 (fault injection, not crypto)
        self._lock = threading.Lock()
        self._op_latency = {
            op: entry
            for op in OPERATIONS
            if (entry := op_latency_for(config.op_latency, op)) is not None
        }
        # Line-buffered: a reader sees every answered request while the simulator runs.
        self._request_log: TextIO | None = (
            None
            if config.request_log is None
            else open(config.request_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        )

    def __repr__(self) -> str:
        return f"Simulator(project={self.config.project!r}, backing={self.config.backing!r})"

    def asgi_app(self, *, validate: bool = False) -> Starlette:
        """A Starlette app serving this simulator; ``validate`` checks every request and
        response against the published document and records what breaks it."""
        return build_app(self, validate=validate)

    def _boot_guest(self) -> None:
        """Guest backing: give the local instance a (non-CSI) boot disk, then boot the guest as
        that instance with the boot disk cold-plugged; attach and detach are NVMe hot-plug."""
        from csi_oxide_lab.sim.guest_backing import GuestBacking

        backing = self.backing
        assert isinstance(backing, GuestBacking)
        inst = self._state.instances[self.local_instance_id]
        boot = self._state.create_disk(
            f"{inst.name}-boot", "boot disk of the guest", GIB, BlankSource(block_size=512)
        )
        boot.state, boot.instance_id = DiskState.ATTACHED, inst.id
        inst.boot_disk_id = boot.id
        try:
            backing.boot(inst.id, boot.name)
        except BaseException:
            backing.close()
            raise

    # ---- used by the app ----

    def token_matches(self, token: str) -> bool:
        """Constant-time comparison with the simulator's token."""
        return hmac.compare_digest(token.encode(), self.token.encode())

    def draw_failure(self) -> bool:
        """True when the random 503 of ``fail_rate`` strikes this request."""
        return self.config.fail_rate > 0 and self._random.random() < self.config.fail_rate

    def draw_lost(self) -> bool:
        """True when this request's answer is lost (``lost_rate``)."""
        return self.config.lost_rate > 0 and self._random.random() < self.config.lost_rate

    def draw_slow(self) -> float:
        """Seconds between single bytes of this request's answer (0: sent at once)."""
        if self.config.slow_rate > 0 and self._random.random() < self.config.slow_rate:
            return self.config.slow_byte_ms / 1000
        return 0.0

    def draw_delay(self, operation_id: str | None = None) -> float:
        """Seconds to hold this request: the latency plus a random share of the jitter, plus the
        latency drawn for its operation (``op_latency``; None: a request no route matched)."""
        jitter = self._random.uniform(0, self.config.jitter_ms) if self.config.jitter_ms else 0.0
        extra = 0.0
        entry = self._op_latency.get(operation_id) if operation_id is not None else None
        if entry is not None:
            extra = self._random.uniform(entry.low_ms, entry.high_ms)
        return (self.config.latency_ms + jitter + extra) / 1000

    @property
    def logs_requests(self) -> bool:
        """Whether there is a request log to write to."""
        return self._request_log is not None

    def record_request(self, entry: dict[str, object]) -> None:
        """One answered request as a JSON line in ``request_log`` (when there is one): its
        ``operation`` (None when no route matched), ``method``, ``path``, ``target`` (the
        ``disk`` or ``name`` of its body, if any), ``status``, ``delay`` (the latency drawn for it,
        seconds), ``arrived`` and ``answered`` (``time.monotonic()`` when it reached the app and
        when its answer was ready; CLOCK_MONOTONIC, comparable across processes on the host)."""
        if self._request_log is not None:
            self._request_log.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def record_violation(self, message: str) -> None:
        """Note a contract violation (validate mode)."""
        self.contract_violations.append(message)

    async def apply(self, handler: Handler, call: Call, *, reads: bool = False) -> Reply:
        """Run one operation under the lock: in a worker thread when the backing does I/O,
        unless it ``reads`` only (a GET: no backing call) and the lock is free at once. A read
        then costs no thread hop (under a burst, hundreds of hops queue for a handful of
        workers and the GIL, and a 0.1 ms view waited tens of milliseconds); a read that finds
        the lock taken waits for it in a thread, never on the event loop."""
        if not self.backing.blocking:
            return self._locked(lambda: handler(self._state, call))
        if reads and self._lock.acquire(blocking=False):
            try:
                return handler(self._state, call)
            finally:
                self._lock.release()
        return await asyncio.to_thread(self._locked, lambda: handler(self._state, call))

    def _locked(self, fn: Callable[[], T]) -> T:
        with self._lock:
            return fn()

    def close(self) -> None:
        """Release the backing (loop devices; a temporary state directory); close the request
        log."""
        if self._request_log is not None:
            self._request_log.close()
            self._request_log = None
        self._locked(self.backing.close)
