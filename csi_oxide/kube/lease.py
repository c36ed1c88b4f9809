"""Leader election on a ``coordination.k8s.io/v1`` Lease, with Kubernetes' semantics.

A replica may take the Lease when it is absent (it creates it), when it holds it already, when
its holder released it (``holderIdentity`` empty), or when it has expired. Expiry is judged by
this replica's own monotonic clock, never by the times written in the Lease: the elector notes
when it last saw the Lease's record change, and the record has expired once it has stayed the
same for its ``leaseDurationSeconds`` since. Clocks of other replicas may be skewed by hours
without effect: a ``renewTime`` in the future, or far in the past, only matters as a change.

Every write is a PUT of the object as read, with its ``resourceVersion``: a 409 means somebody
else wrote in between, and the next attempt reads again. The leader renews every
``retry_period``; when no renewal has succeeded for ``renew_deadline`` (shorter than the lease
duration, so before anybody else may take over), or a read shows another holder, it has lost the
Lease: its ``lead`` task is cancelled at once, and the elector goes back to trying. An attempt
that hangs is abandoned at the renew deadline.

Deleting the Lease under a running election is not safe (as in Kubernetes): a replica that
finds it absent creates it and leads at once, and the old leader stops only when its next renewal
(a retry period later) finds the Lease gone or held by another.

On shutdown (``run`` cancelled) a leader releases the Lease, as client-go's ``ReleaseOnCancel``
does: ``holderIdentity`` empty and ``leaseDurationSeconds`` 1, so that another replica takes over
at its next attempt instead of a lease duration later.

The API calls are synchronous (``KubeClient``) and run in threads; all timing goes through an
injectable ``Clock`` (monotonic time, wall time for the Lease's MicroTime stamps, and sleeping).
"""

from __future__ import annotations

import asyncio
import math
import random as _random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from urllib.parse import quote

import structlog

from csi_oxide.kube.client import JsonObject, KubeClient, KubeError

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

API_VERSION = "coordination.k8s.io/v1"
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
# The pauses of a replica trying to acquire are stretched by up to this fraction, at random, so
# that replicas do not ask in step.
JITTER = 0.2

_MICRO_TIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


def leases_path(namespace: str) -> str:
    """The collection of Leases in ``namespace``."""
    return f"/apis/{API_VERSION}/namespaces/{quote(namespace, safe='')}/leases"


def lease_path(namespace: str, name: str) -> str:
    """The Lease ``name`` in ``namespace``."""
    return f"{leases_path(namespace)}/{quote(name, safe='')}"


def format_micro_time(when: datetime) -> str:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds (``2026-12-07T02:50:00.123456Z``).
    A naive ``when`` is taken as UTC."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str) -> datetime:
    """The instant of an RFC 3339 time (``ValueError`` for anything else); aware, in UTC."""
    if not _MICRO_TIME_RE.match(text):
        raise ValueError(f"not an RFC 3339 time: {text[:64]!r}")
    return datetime.fromisoformat(text.upper()).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A Lease's ``spec`` as leader election reads and writes it."""

    holder: str
    duration_s: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int

    @classmethod
    def from_spec(cls, spec: object) -> LeaseRecord:
        """The record of a Lease's ``spec`` (absent fields empty or zero, as the API leaves them);
        ``ValueError`` when a field has the wrong type."""
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ValueError("the Lease's spec is not an object")
        holder = spec.get("holderIdentity") or ""
        duration = spec.get("leaseDurationSeconds") or 0
        transitions = spec.get("leaseTransitions") or 0
        if not isinstance(holder, str):
            raise ValueError("the Lease's holderIdentity is not a string")
        for name, number in (("leaseDurationSeconds", duration), ("leaseTransitions", transitions)):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise ValueError(f"the Lease's {name} is not a non-negative integer")
        return cls(
            holder=holder,
            duration_s=int(duration),
            acquire_time=_time_field(spec, "acquireTime"),
            renew_time=_time_field(spec, "renewTime"),
            transitions=int(transitions),
        )

    def to_spec(self) -> JsonObject:
        """The ``spec`` fields of this record (times as MicroTime, absent ones null)."""
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": _time_text(self.acquire_time),
            "renewTime": _time_text(self.renew_time),
            "leaseTransitions": self.transitions,
        }


def _time_field(spec: dict[str, object], name: str) -> datetime | None:
    value = spec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"the Lease's {name} is not a string")
    return parse_micro_time(value)


def _time_text(when: datetime | None) -> str | None:
    return None if when is None else format_micro_time(when)


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """The election's durations, in seconds of the elector's clock. ``lease_duration`` is what
    the Lease promises others (written rounded up to whole seconds, the API's unit);
    ``renew_deadline`` how long a leader goes without a successful renewal before it stops
    leading; ``retry_period`` the pause between attempts."""

    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, got "
                f"{self.retry_period}, {self.renew_deadline}, {self.lease_duration}"
            )

    @property
    def duration_s(self) -> int:
        """``leaseDurationSeconds`` as written: the lease duration rounded up, at least 1."""
        return max(1, math.ceil(self.lease_duration))


class Clock(Protocol):
    """The elector's time: ``monotonic`` for its judgements, ``now`` (aware, UTC) for the stamps
    it writes into the Lease, ``sleep`` for its pauses. All three in the same seconds."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        ...

    def now(self) -> datetime:
        """The wall-clock time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock."""
        ...


class SystemClock:
    """The process's clocks and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


Lead = Callable[[], Awaitable[None]]


class LeaderElector:
    """Leader election among replicas that share the Lease ``namespace``/``name``, each with its
    own ``identity`` (the pod's name, say). See the module docstring; ``run`` is the API."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaseTimings | None = None,
        clock: Clock | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not identity:
            raise ValueError("a leader elector needs a non-empty identity")
        self._client = client
        self._path = lease_path(namespace, name)
        self._collection = leases_path(namespace)
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._timings = timings if timings is not None else LeaseTimings()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._random = random
        # Given with every line (not bound once: a logger bound now would keep the logging
        # configuration of now).
        self._fields = {"lease": f"{namespace}/{name}", "identity": identity}
        # What this replica last saw of the Lease, and when (its monotonic clock) that changed.
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._leading = False
        self._renewed_at = 0.0  # when the last successful acquire or renewal was started
        self._problem: str | None = None  # the failure being reported, logged once per streak

    @property
    def identity(self) -> str:
        """This replica's holder identity."""
        return self._identity

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads now (its ``lead`` task runs)."""
        return self._leading

    @property
    def observed_holder(self) -> str:
        """The holder of the Lease as last read ("" for none, or not read yet)."""
        return self._observed.holder if self._observed is not None else ""

    async def run(self, lead: Lead) -> None:
        """Wait to acquire the Lease, then run ``lead()`` as a task while leading; cancel it the
        moment leadership is lost and try again. Runs until cancelled (then a leader releases the
        Lease), or until ``lead`` ends by itself: then the Lease is released and ``run`` returns,
        or raises what ``lead`` raised. One ``run`` at a time per elector."""
        try:
            while True:
                await self._acquire()
                task = asyncio.ensure_future(lead())
                try:
                    # A lead that ended while leadership was being lost ended by itself too.
                    ended = await self._keep(task) or task.done()
                finally:
                    await _cancel(task)
                if ended:
                    await self._release()
                    task.result()  # raises what lead raised
                    log.info("leading ended: lead returned", **self._fields)
                    return
        except asyncio.CancelledError:
            if self._leading:
                await self._release()
            raise

    # ---- the phases ----

    async def _acquire(self) -> None:
        """Return once this replica holds the Lease."""
        log.info("trying to acquire the lease", **self._fields)
        while True:
            started = self._clock.monotonic()
            if await self._bounded(self._attempt, self._timings.renew_deadline):
                self._renewed_at = started
                self._leading = True
                log.info("leading", **self._fields, transitions=self._transitions())
                return
            pause = self._timings.retry_period * (1.0 + JITTER * self._random())
            await self._clock.sleep(pause)

    async def _keep(self, task: asyncio.Future[None]) -> bool:
        """Renew while ``task`` runs: True when it ended by itself, False when leadership was
        lost (``task`` is cancelled by the caller)."""
        timings = self._timings
        while True:
            pause = asyncio.ensure_future(self._clock.sleep(timings.retry_period))
            try:
                await asyncio.wait({task, pause}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel(pause)
            if task.done():
                return True
            started = self._clock.monotonic()
            remaining = self._renewed_at + timings.renew_deadline - started
            if remaining > 0 and await self._bounded(self._renew, remaining):
                self._renewed_at = started
                continue
            holder = self.observed_holder
            if holder != self._identity:
                self._lost("the lease has another holder, or none", holder=holder or None)
                return False
            if self._clock.monotonic() - self._renewed_at >= timings.renew_deadline:
                self._lost("no renewal succeeded within the renew deadline")
                return False

    def _lost(self, why: str, **fields: object) -> None:
        self._leading = False
        log.warning("leadership lost", **self._fields, why=why, **fields)

    async def _release(self) -> None:
        """Give the Lease up if this replica still holds it (bounded; a failure is only logged:
        the Lease then expires by itself)."""
        self._leading = False
        if not await self._bounded(self._give_up, self._timings.renew_deadline):
            log.warning("lease not released: it expires by itself", **self._fields)

    # ---- one attempt ----

    async def _bounded(self, attempt: Callable[[], Awaitable[bool]], seconds: float) -> bool:
        """``attempt()``'s answer, or False when it took longer than ``seconds`` of the clock (it
        is then abandoned: a request in flight may still land, which the next read sees)."""
        work = asyncio.ensure_future(attempt())
        timer = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: neither outlives the caller
            await _cancel(timer)
            await _cancel(work)
            raise
        await _cancel(timer)
        if not work.done():
            await _cancel(work)
            self._failed("no answer in time: the request was abandoned")
            return False
        return work.result()

    async def _attempt(self, *, renewing: bool = False) -> bool:
        """One read and, when this replica may hold the Lease, one write: whether it holds it.
        ``renewing``: only a Lease this replica holds is written (a leader that finds another
        holder, or no Lease at all, has lost, even if it could take the Lease again)."""
        stamp = self._clock.now()
        try:
            current = await asyncio.to_thread(self._client.get, self._path)
        except KubeError as exc:
            if exc.not_found and renewing:  # deleted under the leader: start afresh, as all do
                self._succeeded()
                self._observed = None
                return False
            if exc.not_found:
                return await self._create(stamp)
            self._failed(str(exc))
            return False
        try:
            record = self._observe(current)
        except ValueError as exc:
            self._failed(f"the lease cannot be read: {exc}")
            return False
        ours = record.holder == self._identity
        if renewing and not ours:
            self._succeeded()
            return False
        if record.holder and not ours and not self._expired(record):
            self._succeeded()
            return False
        spec = LeaseRecord(
            holder=self._identity,
            duration_s=self._timings.duration_s,
            acquire_time=(record.acquire_time or stamp) if ours else stamp,
            renew_time=stamp,
            transitions=record.transitions if ours else record.transitions + 1,
        )
        if not ours:
            log.info("taking the lease", **self._fields, previous=record.holder or None)
        return await self._write(current, spec)

    async def _renew(self) -> bool:
        return await self._attempt(renewing=True)

    async def _give_up(self) -> bool:
        """Release: the Lease without holder, for one second (only if this replica holds it)."""
        try:
            current = await asyncio.to_thread(self._client.get, self._path)
            record = self._observe(current)
        except (KubeError, ValueError) as exc:
            self._failed(str(exc))
            return False
        if record.holder != self._identity:
            return True  # nothing of ours to give up
        stamp = self._clock.now()
        released = replace(record, holder="", duration_s=1, acquire_time=stamp, renew_time=stamp)
        if await self._write(current, released):
            log.info("lease released", **self._fields)
            return True
        return False

    async def _create(self, stamp: datetime) -> bool:
        spec = LeaseRecord(self._identity, self._timings.duration_s, stamp, stamp, 0)
        body: JsonObject = {
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": spec.to_spec(),
        }
        if not await self._send(
            lambda: self._client.create(self._collection, body),
            raced="lease created by another replica first",
        ):
            return False
        log.info("lease created", **self._fields)
        return True

    async def _write(self, current: JsonObject, record: LeaseRecord) -> bool:
        """PUT ``current`` (as read: its resourceVersion, and whatever else it holds) with
        ``record`` in its spec."""
        spec = current.get("spec")
        body = {**current, "spec": {**(spec if isinstance(spec, dict) else {}), **record.to_spec()}}
        return await self._send(
            lambda: self._client.replace(self._path, body),
            raced="lease changed since it was read",
        )

    async def _send(self, write: Callable[[], JsonObject], *, raced: str) -> bool:
        """Run ``write`` (a create or a replace) and observe the Lease it answers; whether it
        was written. A 409 means another writer came first: no failure (``raced`` is logged),
        the Lease is read again at the next attempt."""
        try:
            self._observe(await asyncio.to_thread(write))
        except KubeError as exc:
            if exc.conflict:
                self._succeeded()
                log.debug(raced, **self._fields)
            else:
                self._failed(str(exc))
            return False
        except ValueError as exc:
            self._failed(f"the lease cannot be read: {exc}")
            return False
        self._succeeded()
        return True

    # ---- what this replica has seen ----

    def _observe(self, lease: JsonObject) -> LeaseRecord:
        """The record of ``lease``; the observation time moves when it differs from the last."""
        record = LeaseRecord.from_spec(lease.get("spec"))
        if record != self._observed:
            if self._observed is None or record.holder != self._observed.holder:
                log.info("lease holder observed", **self._fields, holder=record.holder or None)
            self._observed = record
            self._observed_at = self._clock.monotonic()
        return record

    def _expired(self, record: LeaseRecord) -> bool:
        """Whether ``record`` (the one last observed) has not changed for its duration."""
        return self._observed_at + record.duration_s <= self._clock.monotonic()

    def _transitions(self) -> int:
        return self._observed.transitions if self._observed is not None else 0

    def _failed(self, problem: str) -> None:
        if problem != self._problem:
            log.warning("lease request failed", **self._fields, error=problem)
        self._problem = problem

    def _succeeded(self) -> None:
        if self._problem is not None:
            log.info("lease requests work again", **self._fields)
        self._problem = None


async def _cancel(task: asyncio.Future[_T]) -> None:
    """Cancel ``task`` and wait until it has ended (its outcome stays in it)."""
    if not task.done():
        task.cancel()
    await asyncio.wait({task})
