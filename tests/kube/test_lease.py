"""Leader election against the fake API server: replicas with clocks five times faster than real
time (an 8 s lease lasts 1.6 s), each with its own ``KubeClient``. Conditions are waited for with a
generous bound that only stops a hung test; the assertions are on order and state, never on how
long anything took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from csi_oxide.kube.client import KubeClient, KubeConfig
from csi_oxide.kube.lease import (
    Lead,
    LeaderElector,
    LeaseRecord,
    LeaseTimings,
    format_micro_time,
    lease_path,
    parse_micro_time,
)
from tests.kube.clocks import FastClock
from tests.kube.fake_api import MICRO_TIME_RE, TOKEN, FakeKubeApi, micro_time

NS, NAME = "kube-system", "csi-oxide-controller"
# Seconds of the replicas' (fast) clocks.
# Renewals every 0.05 s of real time; a leader stops after 1.2 s without one, well before the
# 1.6 s after which another takes over (a busy machine can stall the loop for a while: a leader
# that misses its renewals for long enough rightly stops, but then a test of something else fails).
TIMINGS = LeaseTimings(lease_duration=8.0, renew_deadline=6.0, retry_period=0.25)
BOUND = 30.0  # real seconds after which a condition that never came fails the test


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        await asyncio.sleep(0.005)


class Leads:
    """The replicas' ``lead`` functions: who started and stopped leading, in order, and whether
    one started while another still ran."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.running: list[str] = []
        self.overlaps: list[tuple[str, list[str]]] = []

    def of(self, who: str) -> Lead:
        async def lead() -> None:
            if self.running:
                self.overlaps.append((who, list(self.running)))
            self.running.append(who)
            self.events.append(("start", who))
            try:
                await asyncio.Event().wait()
            finally:
                self.running.remove(who)
                self.events.append(("stop", who))

        return lead


class Replicas:
    """Controller replicas electing a leader on one Lease of the fake API."""

    def __init__(self, api: FakeKubeApi) -> None:
        self.api = api
        self.leads = Leads()
        self.electors: dict[str, LeaderElector] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        who: str,
        *,
        timings: LeaseTimings = TIMINGS,
        clock: FastClock | None = None,
        timeout: float = 2.0,
    ) -> LeaderElector:
        client = KubeClient(KubeConfig.explicit(self.api.url, TOKEN, timeout=timeout))
        elector = LeaderElector(
            client,
            namespace=NS,
            name=NAME,
            identity=who,
            timings=timings,
            clock=clock if clock is not None else FastClock(),
        )
        self.electors[who] = elector
        self.tasks[who] = asyncio.create_task(elector.run(self.leads.of(who)))
        return elector

    async def stop(self, who: str) -> None:
        """Shut a replica down (``run`` cancelled, as at SIGTERM)."""
        task = self.tasks.pop(who)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self) -> None:
        for who in list(self.tasks):
            await self.stop(who)

    def writes(self, who: str, status: int | None = 200) -> list[Any]:
        """The Lease writes (PUT) carrying ``who`` as holder, answered ``status`` (None: any)."""
        return [s for s in self.api.requests("PUT", who) if status is None or s.status == status]

    def spec(self) -> dict[str, Any]:
        lease = self.api.lease(NS, NAME)
        assert lease is not None
        spec: dict[str, Any] = lease["spec"]
        return spec

    async def renewals(self, who: str, count: int) -> None:
        """Wait until ``who`` has renewed ``count`` more times."""
        target = len(self.writes(who)) + count
        await until(lambda: len(self.writes(who)) >= target, f"{count} renewals by {who}")


@pytest.fixture
async def replicas(api: FakeKubeApi) -> AsyncIterator[Replicas]:
    group = Replicas(api)
    try:
        yield group
    finally:
        await group.close()


# ---- acquiring ----


async def test_an_absent_lease_is_created_and_its_creator_leads(replicas: Replicas) -> None:
    replicas.start("a")
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    assert next(s.method for s in replicas.api.requests() if s.method != "GET") == "POST"
    first = replicas.spec()
    assert first["holderIdentity"] == "a"
    assert first["leaseDurationSeconds"] == 8 and isinstance(first["leaseDurationSeconds"], int)
    assert first["leaseTransitions"] == 0
    assert MICRO_TIME_RE.match(first["acquireTime"]) and MICRO_TIME_RE.match(first["renewTime"])
    await replicas.renewals("a", 3)
    later = replicas.spec()
    assert later["acquireTime"] == first["acquireTime"]  # renewals keep it
    assert parse_micro_time(later["renewTime"]) > parse_micro_time(first["renewTime"])
    assert later["leaseTransitions"] == 0
    assert replicas.electors["a"].is_leader


async def test_two_replicas_never_lead_at_once(replicas: Replicas) -> None:
    replicas.start("a")
    replicas.start("b")
    await until(lambda: bool(replicas.leads.running), "somebody leads")
    first = replicas.leads.running[0]
    second = "b" if first == "a" else "a"
    await replicas.renewals(first, 40)  # more than a lease duration
    assert replicas.leads.events == [("start", first)]
    assert not replicas.electors[second].is_leader
    assert replicas.electors[second].observed_holder == first
    assert replicas.writes(second, status=None) == []  # it never wrote over a valid lease

    await replicas.stop(first)
    await until(lambda: replicas.leads.running == [second], f"{second} leads")
    assert replicas.leads.events == [("start", first), ("stop", first), ("start", second)]
    assert replicas.leads.overlaps == []
    assert replicas.spec()["leaseTransitions"] == 1


@pytest.mark.parametrize(
    "renewed", [timedelta(hours=-1), timedelta(days=1)], ids=["past", "future"]
)
async def test_a_dead_holders_lease_is_taken_once_it_stayed_unchanged(
    replicas: Replicas, renewed: timedelta
) -> None:
    """Whether the dead holder's renewTime is long past or (its clock was wrong) a day ahead of
    ours, the lease is taken after it has stayed the same for its duration by OUR clock."""
    stamp = micro_time(datetime.now(UTC) + renewed)
    replicas.api.put_lease(
        NS,
        NAME,
        {
            "holderIdentity": "dead",
            "leaseDurationSeconds": 8,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 3,
        },
    )
    replicas.start("b")
    await until(lambda: replicas.leads.running == ["b"], "b leads")
    spec = replicas.spec()
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 4)
    assert spec["acquireTime"] != stamp
    methods = [s.method for s in replicas.api.requests()]
    # It watched the lease (several reads) before it wrote: an old renewTime is no proof of death.
    assert methods.index("PUT") >= 3
    assert set(methods[: methods.index("PUT")]) == {"GET"}


@pytest.mark.parametrize("skew", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
async def test_a_live_holder_with_a_skewed_clock_keeps_its_lease(
    replicas: Replicas, skew: timedelta
) -> None:
    replicas.start("a", clock=FastClock(skew=skew))
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    replicas.start("b")
    await until(lambda: replicas.electors["b"].observed_holder == "a", "b sees a")
    await replicas.renewals("a", 40)  # renewTime an hour off by b's clock, all along
    assert replicas.leads.events == [("start", "a")]

    replicas.api.refused_holders.add("a")  # a can no longer renew: it stops, b takes over
    await until(lambda: replicas.leads.running == ["b"], "b leads")
    assert replicas.leads.events == [("start", "a"), ("stop", "a"), ("start", "b")]


# ---- losing ----


async def test_a_leader_whose_renewals_fail_stops_before_the_other_takes_over(
    replicas: Replicas, logs: list[MutableMapping[str, Any]]
) -> None:
    replicas.api.echo_authorization = True  # its error messages repeat the bearer token
    a = replicas.start("a")
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    b = replicas.start("b")
    await until(lambda: b.observed_holder == "a", "b sees a")

    replicas.api.refused_holders.add("a")
    await until(lambda: replicas.leads.running == ["b"], "b leads")
    assert replicas.leads.events == [("start", "a"), ("stop", "a"), ("start", "b")]
    assert replicas.leads.overlaps == []
    assert not a.is_leader and not replicas.tasks["a"].done()  # a is trying again
    assert replicas.spec()["leaseTransitions"] == 1

    written_by_a = len(replicas.writes("a"))
    replicas.api.refused_holders.clear()  # a could write again, but b's lease is valid
    await replicas.renewals("b", 20)
    assert replicas.leads.events[-1] == ("start", "b")
    assert len(replicas.writes("a")) == written_by_a  # a wrote nothing since (a late one: 409)
    assert replicas.spec()["holderIdentity"] == "b"

    transitions = [
        (e["event"], e["identity"]) for e in logs if e["event"] in ("leading", "leadership lost")
    ]
    assert transitions[:3] == [("leading", "a"), ("leadership lost", "a"), ("leading", "b")]
    assert any(e["event"] == "lease request failed" for e in logs)
    assert TOKEN not in repr(logs)


async def test_a_renewal_that_hangs_is_abandoned_at_the_renew_deadline(replicas: Replicas) -> None:
    replicas.start("a", timeout=1.0)
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    b = replicas.start("b")
    await until(lambda: b.observed_holder == "a", "b sees a")

    replicas.api.stalled_holders.add("a")  # a's writes get no answer at all
    await until(lambda: replicas.leads.running == ["b"], "b leads")
    assert replicas.leads.events == [("start", "a"), ("stop", "a"), ("start", "b")]
    replicas.api.unstall()
    await replicas.renewals("b", 4)  # a's late writes, stale, change nothing
    assert replicas.spec()["holderIdentity"] == "b"
    assert replicas.leads.events[-1] == ("start", "b")


async def test_a_write_in_between_is_read_again_and_leadership_kept(replicas: Replicas) -> None:
    conflicts: list[int] = []

    def another_writer(method: str, _path: str) -> None:
        if method == "PUT" and len(conflicts) < 2:  # a label changes just before a's renewal
            conflicts.append(1)
            replicas.api.label_lease(NS, NAME, "touched", str(len(conflicts)))

    replicas.start("a")
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    replicas.api.before_write = another_writer
    await until(lambda: len(replicas.writes("a", status=409)) == 2, "two conflicts")
    await replicas.renewals("a", 4)
    assert replicas.leads.events == [("start", "a")]  # never stopped leading
    lease = replicas.api.lease(NS, NAME)
    assert lease is not None and lease["metadata"]["labels"] == {"touched": "2"}  # kept


async def test_a_lease_deleted_under_the_leader_ends_its_leadership(replicas: Replicas) -> None:
    """Its next renewal finds no Lease: it stops leading, and one replica leads afterwards. (Who
    creates the Lease anew leads at once, maybe before the old leader noticed: as in Kubernetes,
    deleting the Lease of a running election is not safe; see the module docstring.)"""
    replicas.start("a")
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    b = replicas.start("b")
    await until(lambda: b.observed_holder == "a", "b sees a")
    replicas.api.delete_lease(NS, NAME)  # somebody ran kubectl delete lease
    await until(lambda: ("stop", "a") in replicas.leads.events, "a stops")
    await until(lambda: len(replicas.leads.running) == 1, "one leads again")
    leader = replicas.leads.running[0]
    await replicas.renewals(leader, 4)
    assert replicas.leads.running == [leader]
    assert replicas.spec()["holderIdentity"] == leader


# ---- giving up ----


async def test_a_leader_shut_down_releases_and_the_other_takes_over_at_once(
    replicas: Replicas,
) -> None:
    # a's lease would last an hour: only the release lets b in before the test's bound.
    hour = LeaseTimings(lease_duration=3600.0, renew_deadline=6.0, retry_period=0.25)
    replicas.start("a", timings=hour)
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    assert replicas.spec()["leaseDurationSeconds"] == 3600
    b = replicas.start("b")
    await until(lambda: b.observed_holder == "a", "b sees a")

    await replicas.stop("a")
    released = replicas.writes("", status=200)
    assert len(released) == 1
    assert released[0].body["spec"]["leaseDurationSeconds"] == 1
    assert replicas.leads.events == [("start", "a"), ("stop", "a")]
    await until(lambda: replicas.leads.running == ["b"], "b leads")
    assert replicas.spec()["holderIdentity"] == "b"


async def test_a_replica_shut_down_while_waiting_releases_nothing(replicas: Replicas) -> None:
    replicas.start("a")
    await until(lambda: replicas.leads.running == ["a"], "a leads")
    b = replicas.start("b")
    await until(lambda: b.observed_holder == "a", "b sees a")
    await replicas.stop("b")
    assert replicas.writes("", status=None) == []
    assert replicas.spec()["holderIdentity"] == "a"


def elector_of(api: FakeKubeApi, who: str) -> LeaderElector:
    client = KubeClient(KubeConfig.explicit(api.url, TOKEN, timeout=2.0))
    return LeaderElector(
        client, namespace=NS, name=NAME, identity=who, timings=TIMINGS, clock=FastClock()
    )


async def test_when_lead_returns_the_lease_is_released_and_run_returns(api: FakeKubeApi) -> None:
    done: list[str] = []

    async def lead() -> None:
        done.append("led")

    await asyncio.wait_for(elector_of(api, "a").run(lead), BOUND)
    assert done == ["led"]
    lease = api.lease(NS, NAME)
    assert lease is not None and lease["spec"]["holderIdentity"] == ""


async def test_what_lead_raises_comes_out_of_run_after_the_release(api: FakeKubeApi) -> None:
    async def lead() -> None:
        raise RuntimeError("the reconciler broke")

    with pytest.raises(RuntimeError, match="reconciler broke"):
        await asyncio.wait_for(elector_of(api, "a").run(lead), BOUND)
    lease = api.lease(NS, NAME)
    assert lease is not None and lease["spec"]["holderIdentity"] == ""


# ---- the pieces ----


def test_micro_time_is_rfc_3339_in_utc_with_microseconds() -> None:
    when = datetime(2026, 12, 7, 2, 50, 0, 123456, tzinfo=UTC)
    assert format_micro_time(when) == "2026-12-07T02:50:00.123456Z"
    assert (
        format_micro_time(when.astimezone(timezone(timedelta(hours=2))))
        == "2026-12-07T02:50:00.123456Z"
    )
    assert parse_micro_time("2026-12-07T02:50:00.123456Z") == when
    assert parse_micro_time("2026-12-07T04:50:00.123456+02:00") == when
    assert parse_micro_time("2026-12-07T02:50:00Z") == when.replace(microsecond=0)
    for bad in ("2026-12-07 02:50:00Z", "2026-12-07T02:50:00", "yesterday", ""):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_micro_time(bad)


def test_a_lease_record_reads_what_the_api_leaves_out_as_empty() -> None:
    assert LeaseRecord.from_spec({}) == LeaseRecord("", 0, None, None, 0)
    assert LeaseRecord.from_spec(None) == LeaseRecord("", 0, None, None, 0)
    record = LeaseRecord.from_spec(
        {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-12-07T02:50:00Z"}
    )
    assert record.to_spec() == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": None,
        "renewTime": "2026-12-07T02:50:00.000000Z",
        "leaseTransitions": 0,
    }
    for bad in ({"holderIdentity": 3}, {"leaseDurationSeconds": "15"}, {"renewTime": 1}):
        with pytest.raises(ValueError, match="Lease"):
            LeaseRecord.from_spec(bad)


def test_timings_must_leave_the_leader_time_to_stop_first() -> None:
    assert LeaseTimings() == LeaseTimings(15.0, 10.0, 2.0)
    assert LeaseTimings(0.5, 0.3, 0.1).duration_s == 1  # the API counts whole seconds
    for lease, renew, retry in ((10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)):
        with pytest.raises(ValueError, match="renew_deadline"):
            LeaseTimings(lease, renew, retry)


def test_names_are_encoded_in_the_lease_path() -> None:
    assert lease_path("kube-system", "csi-oxide") == (
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/csi-oxide"
    )
    assert lease_path("ns", "a/b") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/a%2Fb"
