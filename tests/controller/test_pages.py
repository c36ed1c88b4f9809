"""Paged listings: one listing per walk, correct answers when a walk is gone, bounded memory.

The listing is a plain in-memory list of IDs standing in for the Oxide project (what ``Walks``
receives is just an async function); the clock is a settable number, so expiry is exact."""

from __future__ import annotations

import pytest

from csi_oxide.controller.pages import MAX_WALKS, WALK_TTL, Page, Walks
from csi_oxide.errors import AbortedError, InvalidArgumentError
from csi_oxide.volumes import is_volume_name


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
