"""Paged listings: one listing per walk, correct answers when a walk is gone, bounded memory,
listings shared by concurrent calls.

The listing is a plain in-memory list of IDs standing in for the Oxide project (what ``Walks``
receives is just an async function); the clock is a settable number, so expiry is exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract.volumes import is_volume_name
from csi_oxide.controller.ops import VolumeInfo
from csi_oxide.controller.pages import MAX_WALKS, WALK_TTL, Page, Walks
from csi_oxide.daemon.health import Health
from csi_oxide.errors import AbortedError, InvalidArgumentError
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.controller import ControllerService
from csi_oxide.server.identity import IdentityService
from tests.controller.controller_helpers import controller_env, new


def vid(i: int) -> str:
    return f"csi-{i:016x}"


class Project:
    """The listing source: sorted IDs that a test changes between pages."""

    def __init__(self, count: int) -> None:
        self.ids = {vid(i * 10) for i in range(count)}

    async def list(self) -> list[str]:
        return sorted(self.ids)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def walks(clock: Clock | None = None) -> Walks[str]:
    return Walks(lambda s: s, is_volume_name, clock=clock or Clock())


async def walk_all(w: Walks[str], project: Project, size: int, token: str = "") -> list[str]:
    seen: list[str] = []
    while True:
        page: Page[str] = await w.page(project.list, token, size)
        seen += page.entries
        token = page.next_token
        if not token:
            return seen


async def test_follow_on_pages_do_not_relist() -> None:
    project, w = Project(100), walks()
    assert await walk_all(w, project, 7) == sorted(project.ids)
    assert w.listings == 1  # 15 pages, one listing
    assert len(w) == 0  # the last page dropped the walk
    assert await walk_all(w, project, 0) == sorted(project.ids)  # unpaged: one more listing
    assert w.listings == 2


async def test_an_expired_walk_resumes_on_a_fresh_listing() -> None:
    clock = Clock()
    project, w = Project(10), walks(clock)
    first = await w.page(project.list, "", 4)
    assert first.entries == [vid(i * 10) for i in range(4)]
    clock.now += WALK_TTL  # the walk is gone
    assert len(w) == 0
    project.ids.discard(vid(40))  # the next entry to serve was deleted meanwhile
    project.ids.discard(vid(10))  # one already served was deleted
    project.ids.add(vid(55))  # one was added after the resume point
    project.ids.add(vid(5))  # and one before it (already passed: not served)
    rest = await walk_all(w, project, 4, first.next_token)
    assert rest == [vid(50), vid(55), vid(60), vid(70), vid(80), vid(90)]
    assert w.listings == 2  # the first page; the resumed page, whose listing the rest is cut from


async def test_a_volume_created_mid_walk_does_not_break_the_walk() -> None:
    project, w = Project(20), walks()
    before = sorted(project.ids)
    page = await w.page(project.list, "", 5)
    seen = list(page.entries)
    project.ids.add(vid(1))  # sorts before the resume point
    project.ids.add(vid(151))  # sorts after it
    project.ids.discard(vid(190))  # deleted after the walk began
    seen += await walk_all(w, project, 5, page.next_token)
    # The walk answers the project as it was when it began, like one unpaged call then: no entry
    # twice, none skipped, no error.
    assert seen == before
    assert w.listings == 1
    again = await walk_all(w, project, 5)  # a new walk sees the change
    assert again == sorted(project.ids)
    assert vid(151) in again and vid(190) not in again


async def test_memory_is_bounded_and_an_evicted_walk_still_answers() -> None:
    clock = Clock()
    project, w = Project(50), walks(clock)
    tokens = [(await w.page(project.list, "", 10)).next_token for _ in range(MAX_WALKS + 5)]
    assert len(w) == MAX_WALKS
    # The oldest walks were pushed out: their tokens resume on a fresh listing, correctly.
    listings = w.listings
    rest = await walk_all(w, project, 10, tokens[0])
    assert rest == sorted(project.ids)[10:]
    assert w.listings > listings
    assert len(w) == MAX_WALKS - 1  # the resumed walk pushed one out, then ended
    clock.now += WALK_TTL
    assert len(w) == 0  # expired walks are dropped


async def test_a_token_of_another_scope_does_not_continue_the_walk() -> None:
    project, w = Project(10), walks()
    page = await w.page(project.list, "", 3, scope="source=a")
    other = Project(10)
    other.ids = {vid(i) for i in range(100, 110)}
    rest = await w.page(other.list, page.next_token, 0, scope="source=b")
    # Resumed at the token's key on the other scope's own listing, not cut from scope a's.
    assert rest.entries == sorted(i for i in other.ids if i >= vid(30))
    assert w.listings == 2


async def test_bare_key_tokens_of_earlier_releases_still_work() -> None:
    project, w = Project(10), walks()
    page = await w.page(project.list, vid(70), 0)
    assert page.entries == [vid(70), vid(80), vid(90)]
    assert page.next_token == ""


@pytest.mark.parametrize(
    "token",
    ["garbage", "0123456789ab.3.garbage", "0123456789ab.3.", "not a token at all"],
)
async def test_invalid_tokens_are_aborted(token: str) -> None:
    project, w = Project(10), walks()
    with pytest.raises(AbortedError, match="starting_token"):
        await w.page(project.list, token, 2)


async def test_negative_max_entries_is_invalid() -> None:
    project, w = Project(3), walks()
    with pytest.raises(InvalidArgumentError, match="max_entries"):
        await w.page(project.list, "", -1)
    assert w.listings == 0


async def test_a_forged_offset_falls_back_to_the_key() -> None:
    project, w = Project(10), walks()
    page = await w.page(project.list, "", 3)
    walk_id = page.next_token.split(".")[0]
    forged = f"{walk_id}.7.{vid(30)}"  # offset 7 holds vid(70), not the key: not trusted
    rest = await w.page(project.list, forged, 2)
    assert rest.entries == [vid(30), vid(40)]


class GatedProject(Project):
    """A listing that takes its snapshot of the IDs when it begins and answers once ``gate`` is
    set (or raises ``error``): a slow Oxide listing, with the moment it began made exact."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.gate = asyncio.Event()
        self.begun = 0
        self.began = asyncio.Event()
        self.error: Exception | None = None

    async def list(self) -> list[str]:
        self.begun += 1
        self.began.set()
        ids = sorted(self.ids)
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return ids


async def test_concurrent_first_pages_share_a_listing_begun_after_they_asked() -> None:
    project, w = GatedProject(50), walks()
    first = asyncio.ensure_future(w.page(project.list, "", 0))
    await project.began.wait()
    project.ids.add(vid(5))  # created while the first listing is on its way
    rest = [asyncio.ensure_future(w.page(project.list, "", 7)) for _ in range(1000)]
    await asyncio.sleep(0)
    project.gate.set()
    pages = await asyncio.gather(*rest)
    assert vid(5) not in (await first).entries  # that listing began before the volume existed
    # The 1,000 later calls waited for one listing begun after they asked: it has the volume.
    assert all(page.entries == sorted(project.ids)[:7] for page in pages)
    assert w.listings == project.begun == 2
    # Their walks share that listing: follow-on pages are cut from it (of the newest walks: only
    # MAX_WALKS are kept), no more listings.
    assert len(await walk_all(w, project, 7, pages[-1].next_token)) == 51 - 7
    assert w.listings == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_listing() -> None:
    project, w = GatedProject(5), walks()
    leaving = asyncio.ensure_future(w.page(project.list, "", 0))
    staying = asyncio.ensure_future(w.page(project.list, "", 0))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    project.gate.set()
    assert (await staying).entries == sorted(project.ids)
    assert leaving.cancelled()
    assert w.listings == 1


async def test_a_failed_listing_fails_its_callers_only() -> None:
    project, w = GatedProject(5), walks()
    project.error = RuntimeError("Oxide unreachable")
    calls = [asyncio.ensure_future(w.page(project.list, "", 0)) for _ in range(3)]
    project.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    project.error = None
    assert (await w.page(project.list, "", 0)).entries == sorted(project.ids)  # a fresh listing
    assert w.listings == 2


class Arrivals:
    """An RPC observer that sets ``all_in`` once ``expected`` calls have started."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = 0
        self.all_in = asyncio.Event()

    def rpc_started(self, method: str) -> None:
        self.started += 1
        if self.started == self.expected:
            self.all_in.set()

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        pass


async def test_concurrent_list_volumes_over_grpc_make_two_oxide_listings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real gRPC server and simulator. The first listing is held until every call has arrived,
    # so all but the first call wait for the same second listing: 200 calls, 2 listings.
    calls = 200
    env = controller_env(quota_gib=100)
    arrivals = Arrivals(calls)
    list_volumes = env.ops.list_volumes

    async def held_until_all_arrived() -> list[VolumeInfo]:
        await arrivals.all_in.wait()
        return await list_volumes()

    monkeypatch.setattr(env.ops, "list_volumes", held_until_all_arrived)
    services = Services(
        identity=IdentityService(Health()),
        controller=ControllerService(env.ops),
        observers=[arrivals],
    )
    server = CsiServer(f"unix://{tmp_path}/c.sock", services)
    try:
        volumes = sorted(
            [(await env.ops.create_volume(new(f"pvc-{i}"))).volume_id for i in range(30)]
        )
        before = dict(env.sim.request_counts)
        await server.start()
        async with grpc.aio.insecure_channel(f"unix://{tmp_path}/c.sock") as channel:
            stub = csi_grpc.ControllerStub(channel)
            answers = await asyncio.wait_for(
                asyncio.gather(*(stub.ListVolumes(csi.ListVolumesRequest()) for _ in range(calls))),
                60,
            )
    finally:
        await server.stop(grace=1)
        await env.api.aclose()
    assert all([e.volume.volume_id for e in a.entries] == volumes for a in answers)
    made = {
        op: env.sim.request_counts[op] - before.get(op, 0) for op in ("disk_list", "snapshot_list")
    }
    # Per listing: one snapshot page (there are none) and two disk pages (the 30 disks, then the
    # empty page that ends an Oxide scan). One listing per call would have been 200 and 400.
    assert made == {"disk_list": 4, "snapshot_list": 2}
