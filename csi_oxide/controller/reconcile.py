"""The reconciler: finishes or rolls back what a crash left behind, at start and periodically.

It looks only at temporary snapshots (``tmp-grow-``, ``tmp-clone-``, ``tmp-image-``) that are
this cluster's (``controller.owner``: our marker and a record naming that very snapshot) and are
older than ``stale_after``, so it never races an operation still running in this or another
controller replica. For each it takes the volume's (or image's) guard (skipping it when an RPC
holds it) and then:

- expansion snapshot: finishes the expansion (re-creates a missing disk from it) or deletes it
  when the disk provably holds the data (``Expander.settle_aside``, which takes the guard as
  ``controller.expand`` says every caller that meets a volume on the side does);
- clone snapshot, image snapshot: deletes it (CreateVolume or CreateSnapshot re-makes it if
  retried).
"""

from __future__ import annotations

import asyncio
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from csi_oxide.controller import owner, record
from csi_oxide.controller.expand import Expander
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import AbortedError, CsiOxideError
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import OxideNotFoundError
from csi_oxide.oxide.types import Snapshot

log = structlog.get_logger(__name__)

DEFAULT_STALE_AFTER = timedelta(minutes=10)
# A pass that has not ended after this long is cut (its repairs are resumable like any other).
DEFAULT_PASS_LIMIT = 900.0
MAX_BACKOFF = 3600.0


@dataclass
class Pass:
    """What one reconciler pass did (for logs and tests)."""

    finished: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Reconciler:
    """Repairs leftovers of interrupted controller operations of one cluster."""

    def __init__(
        self,
        api: OxideApi,
        *,
        cluster: str,
        inflight: InFlight,
        expander: Expander,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._api = api
        self._cluster = cluster
        self._inflight = inflight
        self._expander = expander
        self._stale_after = stale_after
        self._now = now

    async def run_once(self) -> Pass:
        """One pass over the project's temporary snapshots."""
        result = Pass()
        for snap in await self._api.snapshot_list():
            rec = self._stale_record(snap)
            if rec is None:
                continue
            try:
                await self._repair(snap, rec, result)
            except AbortedError:
                result.skipped.append(snap.name)
            except CsiOxideError as exc:
                result.failed.append(snap.name)
                log.warning("reconcile failed", snapshot=snap.name, error=str(exc))
        if result.finished or result.deleted or result.failed:
            log.info("reconcile pass", **vars(result))
        return result

    async def run_forever(
        self,
        interval: float,
        *,
        pass_limit: float = DEFAULT_PASS_LIMIT,
        max_backoff: float = MAX_BACKOFF,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """Pass after pass, ``interval`` seconds apart; errors are logged, never fatal (an
        unexpected exception too: it is logged with its traceback and backed off like a failure).

        Each pass is bounded: cut after ``pass_limit`` seconds (whatever the API does, a pass
        never runs on by itself). After a failed or cut pass the pause doubles, up to
        ``max_backoff`` (with jitter, so replicas do not beat in step), and returns to
        ``interval`` after a pass that worked: a sick API is asked less often, never in a loop.
        """
        failures = 0
        while True:
            try:
                async with asyncio.timeout(pass_limit):
                    await self.run_once()
            except TimeoutError:
                failures += 1
                log.warning("reconcile pass cut", after_s=pass_limit, failures=failures)
            except CsiOxideError as exc:
                failures += 1
                log.warning("reconcile pass failed", error=str(exc), failures=failures)
            except Exception:  # a bug in one pass must not end all later ones
                failures += 1
                log.exception("reconcile pass crashed", failures=failures)
            else:
                failures = 0
            pause = interval
            if failures:
                pause = min(max_backoff, interval * 2.0 ** min(failures - 1, 30))
                pause *= 0.75 + 0.5 * random()
            await sleep(pause)

    def _stale_record(self, snap: Snapshot) -> record.Record | None:
        if not record.is_temporary_snapshot_name(snap.name):
            return None
        if self._now() - snap.time_created < self._stale_after:
            return None
        # Ours by the one rule: our marker AND a record that names this very snapshot.
        return owner.of_snapshot(snap, self._cluster).record

    async def _repair(self, snap: Snapshot, rec: record.Record, result: Pass) -> None:
        if snap.name.startswith(record.GROW_PREFIX):
            # Ours, so its record derives its name (``expand.leftover_name``): it is the volume's.
            disk_name = rec.disk_name()
            await self._expander.settle_aside(self._inflight, disk_name, "reconcile expansion")
            result.finished.append(disk_name)
            return
        await self._inflight.run([rec.clone_target], "reconcile clone", self._delete(snap))
        result.deleted.append(snap.name)

    async def _delete(self, snap: Snapshot) -> None:
        try:
            await self._api.snapshot_delete(snap.id)  # by UUID: never one made since the listing
        except OxideNotFoundError:
            return
