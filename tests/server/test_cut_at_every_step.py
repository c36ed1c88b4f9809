"""Every multi-step controller operation, cut at every one of its Oxide calls, then retried.

A CO's deadline can expire at any await point: the controller then cuts the work there (``InFlight``
cancels it once the deadline and a grace have passed); or an answer is lost after Oxide applied
the request (the client raises "no answer"). For each operation this runs it once cleanly to count
its Oxide calls, then, for each call ``k``, runs it on a fresh simulator with the ``k``-th call cut
BEFORE it is sent or AFTER it was applied, either by the controller's cut (the call stalls, and the
operation is cancelled at that await the way ``InFlight`` cancels work that outlived its time) or
as an Oxide "no answer" error (which the operation's own clean-up paths see), and then retries the
same RPC once. The retry must succeed with the right data and size, and leave no temporary
snapshot behind. Over real gRPC against the simulator (the cut is injected between the driver and
its HTTP client: ``World.each``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.controller import record
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.oxide.errors import OxideUnavailableError
from tests.units import GIB

from .controller_world import Cluster, Code, World, code_of, serve

DATA = b"precious user data"
Operation = Callable[[World, Cluster, str, str], Awaitable[object]]
T = TypeVar("T")

# The guard's own time limit: longer than pytest-timeout lets a test run, so it never fires and
# no step, however slow the machine, is cut by time. The cut comes from the stall (``_cut_here``).
NEVER = 3600.0

# The cut of the guarded operation the current task runs (set by ``_cuttable``).
_CUT: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "test_cut", default=None
)


class CutOnStall(InFlight):
    """The controller's guard in these runs. It cuts an operation the way its limit would (the
    work is cancelled where it waits, ``InFlight`` answers UNAVAILABLE and frees the keys), but at
    the moment the operation's Oxide call stalls (``_cut_here``) instead of after a time: slowness
    can neither cut a step early nor keep the stalled one waiting."""

    def __init__(self) -> None:
        super().__init__(limit=NEVER)

    async def run(self, keys: Iterable[str], what: str, work: Awaitable[T]) -> T:
        wanted = list(keys)
        if any(self.busy(key) for key in wanted):
            return await super().run(wanted, what, work)  # ABORTED (and ``work`` closed)
        return await super().run(wanted, what, _cuttable(work))


async def _cuttable(work: Awaitable[T]) -> T:
    """``work`` inside a timeout with no deadline, which ``_cut_here`` makes expire. Its
    TimeoutError leaves through ``InFlight``'s own cut handling, as the limit's would."""
    async with asyncio.timeout(None) as cut:
        token = _CUT.set(cut)
        try:
            return await work
        finally:
            _CUT.reset(token)


def _cut_here() -> None:
    """Cut the guarded operation this task runs, at its next await."""
    cut = _CUT.get()
    assert cut is not None, "an Oxide call stalled outside the controller's guard"
    cut.reschedule(asyncio.get_running_loop().time())


@dataclass
class Cut:
    """Cut the ``at``-th Oxide call (0-based), ``after`` it was applied or before it was sent.
    (The operations here make their calls one after another, never two at once.)"""

    at: int
    after: bool
    kind: str  # "stall" (the controller's cut) or "no-answer" (OxideUnavailableError)
    calls: int = 0
    fired: bool = False

    async def __call__(self, operation: str, done: bool) -> None:
        if not done:
            self.calls += 1
        if self.fired or done != self.after or self.calls - 1 != self.at:
            return
        self.fired = True
        if self.kind == "stall":
            _cut_here()
            await asyncio.Event().wait()  # the cut cancels the operation at this await
        raise OxideUnavailableError("no complete answer (cut by the test)", operation=operation)


async def _expand(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.expand(vol, 2 * GIB)


async def _clone(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.create("pvc-clone", 2 * GIB, volume=vol)


async def _restore(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.create("pvc-restored", 2 * GIB, snapshot=snap)


async def _snapshot(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.snapshot("snap-2", vol)


async def _image(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.snapshot("image-2", vol, {"snapshotType": "image"})


async def _restore_image(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    image = await ctl.snapshot("image-1", vol, {"snapshotType": "image"})
    return await ctl.create("pvc-restored", 2 * GIB, snapshot=image.snapshot_id)


async def _delete_image(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    image = record.image_name("image-1")
    if image not in world.sim.image_names():
        await ctl.snapshot("image-1", vol, {"snapshotType": "image"})
    return await ctl.stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=image))


async def _delete(world: World, ctl: Cluster, vol: str, snap: str) -> object:
    return await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))


OPERATIONS: dict[str, Operation] = {
    "expand": _expand,
    "clone": _clone,
    "restore": _restore,
    "snapshot": _snapshot,
    "image": _image,
    "restore-image": _restore_image,
    "delete-image": _delete_image,
    "delete": _delete,
}


async def _check(world: World, name: str, vol: str) -> None:
    temporary = [n for n in world.sim.snapshot_names() if record.is_temporary_snapshot_name(n)]
    assert temporary == [], "no temporary snapshot is left once the operation succeeded"
    if name == "expand":
        assert (await world.api.disk_view(vol)).size == 2 * GIB
        assert world.sim.read_content(vol) == DATA
    elif name in ("clone", "restore", "restore-image"):
        made = record.volume_name("pvc-clone" if name == "clone" else "pvc-restored")
        assert (await world.api.disk_view(made)).size == 2 * GIB
        assert world.sim.read_content(made) == DATA
    elif name == "snapshot":
        assert record.snapshot_name("snap-2") in world.sim.snapshot_names()
    elif name == "image":
        assert world.sim.image_names() == [record.image_name("image-2")]
    elif name == "delete-image":
        assert world.sim.image_names() == []
    else:
        assert vol not in world.sim.disk_names()


async def _meet(world: World, ctl: Cluster, vol: str, meeting: str) -> None:
    """Another RPC meets what the cut expansion left: it finishes the expansion or refuses,
    and never answers with a wrong value or builds on a blank disk."""
    if meeting == "get":
        request = csi.ControllerGetVolumeRequest(volume_id=vol)
        got = await ctl.stub.ControllerGetVolume(request)
        assert got.volume.capacity_bytes in (GIB, 2 * GIB)
    elif meeting == "publish":
        await ctl.publish(vol, world.node)
        assert world.sim.read_content(vol) == DATA
        await ctl.unpublish(vol, world.node)
    elif meeting == "snapshot":
        await ctl.snapshot("snap-3", vol)
    elif meeting == "clone":
        made = (await ctl.create("pvc-c", volume=vol)).volume_id
        assert world.sim.read_content(made) == DATA
    elif meeting == "list":
        assert vol in await ctl.listed_volumes()
    elif meeting == "create-again":
        assert (await ctl.create("pvc-1")).volume_id == vol
        assert world.sim.read_content(vol) == DATA


async def _run(tmp_path: Path, name: str, cut: Cut | None, meeting: str = "") -> int:
    """One run on a fresh simulator; the number of Oxide calls the (first) operation made.
    ``meeting``: another RPC that meets the leftovers before the retry."""
    where = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    where.mkdir()
    worlds = serve(where, hotplug=True, instances=1, quota_gib=100, inflight=CutOnStall)
    async with contextlib.aclosing(worlds) as run:
        async for world in run:
            ctl = world.clusters["test"]
            vol = (await ctl.create("pvc-1")).volume_id
            world.sim.write_content(vol, DATA)
            snap = (await ctl.snapshot("snap-1", vol)).snapshot_id
            counter = cut or Cut(at=-1, after=False, kind="no-answer")
            world.each = counter
            first = await code_of(OPERATIONS[name](world, ctl, vol, snap))
            world.each = None
            if cut is None:
                assert first == Code.OK
            else:
                assert cut.fired
                if cut.kind == "stall":
                    assert first == Code.UNAVAILABLE, "the guard cut the operation at the stall"
                if meeting:
                    await _meet(world, ctl, vol, meeting)
                retried = await code_of(OPERATIONS[name](world, ctl, vol, snap))
                assert retried == Code.OK, (cut, first)
            await _check(world, name, vol)
            return counter.calls
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", list(OPERATIONS))
async def test_cut_at_every_oxide_call_then_retried(tmp_path: Path, name: str) -> None:
    steps = await _run(tmp_path, name, None)
    assert steps >= 1
    for at in range(steps):
        for after in (False, True):
            for kind in ("stall", "no-answer"):
                await _run(tmp_path, name, Cut(at=at, after=after, kind=kind))


@pytest.mark.parametrize("meeting", ["get", "publish", "snapshot", "clone", "list", "create-again"])
async def test_every_rpc_meeting_a_cut_expansion_finishes_it_or_refuses(
    tmp_path: Path, meeting: str
) -> None:
    steps = await _run(tmp_path, "expand", None)
    for at in range(steps):
        for after in (False, True):
            await _run(tmp_path, "expand", Cut(at=at, after=after, kind="no-answer"), meeting)
