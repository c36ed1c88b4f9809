"""Offline expansion against the simulator, including a crash after (and before) every step.

A "crash" is a fault the simulator injects on one Oxide request: with ``after=True`` the request
takes effect and only its answer is lost (the controller died right after it), without it the
request never happens. The simulator's memory backing carries a content token from disk to snapshot
to disk, so every test can check that the data made it through.
"""

from __future__ import annotations

import ast
import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller import expand, owner, record
from csi_oxide.controller.expand import Expander
from csi_oxide.controller.record import Source
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import (
    AbortedError,
    AlreadyExistsError,
    CsiOxideError,
    FailedPreconditionError,
    InternalError,
    NotFoundError,
    ResourceExhaustedError,
)
from csi_oxide.oxide.types import Disk, DiskSpec
from csi_oxide.wiring import build_controller_ops, build_reconciler
from tests.units import GIB

from .controller_helpers import Env, a_disk, a_snapshot, controller_env, new

DATA = b"precious user data"

# Every Oxide request an expansion makes, in order, and the crash points around them.
STEPS = ["snapshot_create", "disk_delete", "disk_create", "snapshot_delete"]
CRASHES = [(op, after) for op in STEPS for after in (False, True)]


async def _volume(env: Env, size: int = GIB) -> str:
    vol = await env.ops.create_volume(new(required=size))
    env.sim.write_content(vol.volume_id, DATA)
    return vol.volume_id


def _temporary(env: Env) -> list[str]:
    return [n for n in env.sim.snapshot_names() if record.is_temporary_snapshot_name(n)]


async def _assert_grown(env: Env, volume_id: str, size: int) -> None:
    disk = await env.api.disk_view(volume_id)
    assert disk.size == size
    assert env.sim.read_content(volume_id) == DATA
    assert _temporary(env) == []
    rec = record.owned_by(disk.description, "test")
    assert rec is not None
    assert rec.matches_name("pvc-1")
    assert (rec.grow_from, rec.grow_to) == (0, 0)


async def test_expand_recreates_larger_with_the_data(env: Env) -> None:
    volume_id = await _volume(env)
    assert await env.ops.expand_volume(volume_id, CapacityRange(3 * GIB - 5)) == 3 * GIB
    await _assert_grown(env, volume_id, 3 * GIB)
    info = await env.ops.get_volume(volume_id)
    assert info.capacity_bytes == 3 * GIB
    # The re-created disk still answers a CreateVolume retry for its name as the same volume.
    assert (await env.ops.create_volume(new(required=GIB))).volume_id == volume_id


async def test_expand_to_a_size_already_reached_changes_nothing(env: Env) -> None:
    volume_id = await _volume(env, 2 * GIB)
    before = env.sim.request_counts["snapshot_create"]
    assert await env.ops.expand_volume(volume_id, CapacityRange(GIB)) == 2 * GIB
    assert await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB)) == 2 * GIB
    assert env.sim.request_counts["snapshot_create"] == before


async def test_attached_volume_is_refused_untouched(env: Env) -> None:
    volume_id = await _volume(env)
    await env.ops.publish(volume_id, env.node)
    with pytest.raises(FailedPreconditionError, match="offline"):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    assert (await env.api.disk_view(volume_id)).size == GIB
    assert _temporary(env) == []


async def test_static_disk_is_refused(env: Env) -> None:
    await env.api.disk_create(
        DiskSpec(name="legacy-data", description="made by hand", size=GIB, block_size=4096)
    )
    with pytest.raises(FailedPreconditionError, match="identity"):
        await env.ops.expand_volume("legacy-data", CapacityRange(2 * GIB))
    assert (await env.api.disk_view("legacy-data")).size == GIB


async def test_missing_volume_is_not_found(env: Env) -> None:
    with pytest.raises(NotFoundError):
        await env.ops.expand_volume(record.volume_name("nope"), CapacityRange(2 * GIB))


async def test_quota_is_checked_before_anything_changes() -> None:
    env = controller_env(quota_gib=3)
    sim, api = env.sim, env.api
    volume_id = await _volume(env)  # 1 GiB used, 2 GiB free: not enough for a 3 GiB disk
    with pytest.raises(ResourceExhaustedError, match="Nothing was changed"):
        await env.ops.expand_volume(volume_id, CapacityRange(3 * GIB))
    assert sim.request_counts["snapshot_create"] == 0
    assert (await api.disk_view(volume_id)).size == GIB
    await api.aclose()


async def test_late_insufficient_capacity_rolls_back_to_the_old_size(env: Env) -> None:
    volume_id = await _volume(env)
    env.sim.faults.inject("disk_create", status=507)
    with pytest.raises(ResourceExhaustedError, match="previous size"):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    await _assert_grown(env, volume_id, GIB)


@pytest.mark.parametrize("restart", [False, True], ids=["retry", "restarted-controller"])
@pytest.mark.parametrize(("operation", "after"), CRASHES)
async def test_a_retry_finishes_after_a_crash_at_any_step(
    env: Env, operation: str, after: bool, restart: bool
) -> None:
    volume_id = await _volume(env)
    env.sim.faults.inject(operation, status=500, after=after)
    with pytest.raises(CsiOxideError):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    # A restarted controller carries nothing over but what is in Oxide.
    ops = build_controller_ops(env.api, cluster="test", inflight=InFlight()) if restart else env.ops
    assert await ops.expand_volume(volume_id, CapacityRange(2 * GIB)) == 2 * GIB
    await _assert_grown(env, volume_id, 2 * GIB)


@pytest.mark.parametrize(("operation", "after"), CRASHES)
async def test_the_reconciler_repairs_after_a_crash(env: Env, operation: str, after: bool) -> None:
    volume_id = await _volume(env)
    env.sim.faults.inject(operation, status=500, after=after)
    with pytest.raises(CsiOxideError):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    reconciler = build_reconciler(
        env.api, cluster="test", inflight=InFlight(), stale_after=timedelta(0)
    )
    result = await reconciler.run_once()
    assert result.failed == []
    disk = await env.api.disk_view(volume_id)  # the volume exists again, whatever the step
    assert disk.size in (GIB, 2 * GIB)
    assert env.sim.read_content(volume_id) == DATA
    assert _temporary(env) == []
    # The resizer's next retry completes the expansion where the crash came before re-creation.
    assert await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB)) == 2 * GIB
    await _assert_grown(env, volume_id, 2 * GIB)


async def _half_expanded(env: Env) -> str:
    """A volume whose disk an expansion deleted before it died: only the snapshot holds it."""
    volume_id = await _volume(env)
    env.sim.faults.inject("disk_create", status=500)
    with pytest.raises(CsiOxideError):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    assert volume_id not in env.sim.disk_names()
    return volume_id


async def test_get_volume_finishes_a_half_done_expansion(env: Env) -> None:
    volume_id = await _half_expanded(env)
    assert (await env.ops.get_volume(volume_id)).capacity_bytes == 2 * GIB
    await _assert_grown(env, volume_id, 2 * GIB)


async def test_publish_finishes_a_half_done_expansion(env: Env) -> None:
    volume_id = await _half_expanded(env)
    await env.ops.publish(volume_id, env.node)
    assert (await env.api.disk_view(volume_id)).instance_id == env.node
    await _assert_grown(env, volume_id, 2 * GIB)


async def test_snapshot_of_a_half_expanded_volume_finishes_it_first(env: Env) -> None:
    volume_id = await _half_expanded(env)
    snap = await env.ops.create_snapshot("backup", volume_id)
    assert snap.size_bytes == 2 * GIB
    await _assert_grown(env, volume_id, 2 * GIB)


async def test_other_calls_wait_while_an_expansion_runs(env: Env) -> None:
    volume_id = await _half_expanded(env)
    inflight = InFlight()
    ops = build_controller_ops(env.api, cluster="test", inflight=inflight)
    pending = asyncio.ensure_future(ops.expand_volume(volume_id, CapacityRange(2 * GIB)))
    await asyncio.sleep(0)  # the expansion now holds the volume's guard
    with pytest.raises(AbortedError):
        await ops.get_volume(volume_id)
    assert await pending == 2 * GIB


async def test_delete_of_a_half_expanded_volume_removes_the_snapshot(env: Env) -> None:
    volume_id = await _half_expanded(env)
    await env.ops.delete_volume(volume_id)
    assert volume_id not in env.sim.disk_names()
    assert _temporary(env) == []


async def test_a_disk_neither_from_nor_before_the_snapshot_is_left_alone(env: Env) -> None:
    volume_id = await _half_expanded(env)
    # Something re-created a disk of that name without the snapshot: the driver must not guess.
    await env.api.disk_create(
        DiskSpec(name=volume_id, description="stray", size=GIB, block_size=4096)
    )
    with pytest.raises(InternalError, match="operator"):
        await env.ops.expand_volume(volume_id, CapacityRange(2 * GIB))
    assert len(_temporary(env)) == 1


async def test_reconciler_leaves_fresh_and_foreign_snapshots(env: Env) -> None:
    volume_id = await _half_expanded(env)
    fresh = await build_reconciler(env.api, cluster="test", inflight=InFlight()).run_once()
    foreign = await build_reconciler(
        env.api, cluster="other", inflight=InFlight(), stale_after=timedelta(0)
    ).run_once()
    assert fresh.finished == foreign.finished == []
    assert volume_id not in env.sim.disk_names()
    assert len(_temporary(env)) == 1


async def test_reconciler_deletes_a_stale_clone_snapshot(env: Env) -> None:
    source = await _volume(env)
    target = record.volume_name("pvc-clone")
    # The controller dies right after taking the temporary snapshot (a failed disk_create would
    # delete it at once; only a crash leaves it for the reconciler).
    env.sim.faults.inject("snapshot_create", status=500, after=True)
    with pytest.raises(CsiOxideError):
        await env.ops.create_volume(
            new("pvc-clone", source=Source(record.SourceKind.VOLUME, source))
        )
    assert _temporary(env) == [record.clone_snapshot_name(target)]
    result = await build_reconciler(
        env.api, cluster="test", inflight=InFlight(), stale_after=timedelta(0)
    ).run_once()
    assert result.deleted == [record.clone_snapshot_name(target)]
    assert _temporary(env) == []


async def test_reconciler_leaves_a_temporary_snapshot_with_a_copied_record(env: Env) -> None:
    """Our marker on a temporary snapshot is not enough: the record must name that snapshot."""
    source = await _volume(env)
    copied = record.Record(
        cluster="test",
        name=record.volume_name("pvc-other"),
        source=record.Source(record.SourceKind.VOLUME, "x"),
    )
    forged = record.clone_snapshot_name(record.volume_name("pvc-clone"))
    await env.api.snapshot_create(forged, copied.encode(), source)
    result = await build_reconciler(
        env.api, cluster="test", inflight=InFlight(), stale_after=timedelta(0)
    ).run_once()
    assert (result.deleted, result.finished, result.failed) == ([], [], [])
    assert _temporary(env) == [forged]


async def test_a_disk_made_by_someone_else_during_re_creation_keeps_the_snapshot(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the look and the re-create, a disk of the volume's name appears (made by hand):
    the driver must not take it for its own re-creation and delete the snapshot with the data."""
    volume_id = await _half_expanded(env)
    real_create = env.api.disk_create

    async def stray_first(spec: DiskSpec) -> Disk:
        if spec.name == volume_id and volume_id not in env.sim.disk_names():
            await real_create(DiskSpec(name=volume_id, description="", size=GIB, block_size=4096))
        return await real_create(spec)

    monkeypatch.setattr(env.api, "disk_create", stray_first)
    with pytest.raises(InternalError, match="operator"):
        await env.ops.get_volume(volume_id)
    assert _temporary(env) == [record.grow_snapshot_name(volume_id)]  # the data is still there


# ---- the expansion's own rule: its records and leftovers (pure: no Oxide) ----

PLAIN = record.Record(cluster="test", name="pvc-1", size=GIB)
GROWING = replace(PLAIN, grow_from=GIB, grow_to=2 * GIB)
LEFTOVER = record.grow_snapshot_name(record.volume_name("pvc-1"))


def test_an_expansion_record_names_its_leftover_and_no_disk_may_carry_it() -> None:
    assert expand.is_expansion_record(GROWING)
    assert expand.leftover_name(GROWING) == LEFTOVER
    assert not expand.is_expansion_record(PLAIN)
    assert expand.leftover_name(PLAIN) == ""
    # The ownership rule asks this module: the volume's disk with an expansion's record is foreign.
    volume = record.volume_name("pvc-1")
    assert owner.of_disk(a_disk(volume, PLAIN.encode()), "test").owner is owner.Owner.OURS
    assert owner.of_disk(a_disk(volume, GROWING.encode()), "test") == owner.FOREIGN


@pytest.mark.parametrize(
    ("name", "description", "ours"),
    [
        (LEFTOVER, GROWING.encode(), True),
        (LEFTOVER, replace(GROWING, cluster="other").encode(), False),
        (LEFTOVER, PLAIN.encode(), False),  # a volume's record: no expansion's
        (LEFTOVER, replace(GROWING, name="pvc-2").encode(), False),  # another volume's, copied
        (LEFTOVER, "made by hand", False),
        (LEFTOVER, GROWING.encode()[:-1], False),  # damaged
        (record.clone_snapshot_name(record.volume_name("pvc-1")), GROWING.encode(), False),
    ],
    ids=["ours", "other-cluster", "no-sizes", "copied", "by-hand", "damaged", "clone-name"],
)
def test_a_leftover_is_ours_exactly_when_the_ownership_rule_says_so(
    name: str, description: str, ours: bool
) -> None:
    snap = a_snapshot(name, description)
    assert (expand.leftover_record(snap, "test") is not None) is ours
    assert (owner.of_snapshot(snap, "test").owner is owner.Owner.OURS) is ours


# ---- resume, and the one guard discipline ----


async def test_resume_refuses_another_clusters_expansion_snapshot_untouched(env: Env) -> None:
    source = await _volume(env)
    volume = record.volume_name("pvc-2")
    theirs = replace(PLAIN, cluster="other", name="pvc-2", grow_from=GIB, grow_to=2 * GIB)
    await env.api.snapshot_create(record.grow_snapshot_name(volume), theirs.encode(), source)
    with pytest.raises(AlreadyExistsError, match="not this cluster's"):
        await Expander(env.api, cluster="test").resume(volume, "pvc-2")
    assert _temporary(env) == [record.grow_snapshot_name(volume)]
    assert volume not in env.sim.disk_names()


async def test_resume_without_an_expansion_is_none(env: Env) -> None:
    assert await Expander(env.api, cluster="test").resume(record.volume_name("pvc-9"), "x") is None


async def test_settle_aside_waits_for_the_volumes_guard(env: Env) -> None:
    """A caller that meets a half-expanded volume on the side is told ABORTED while an operation
    holds the volume's guard, and changes nothing; once the guard is free it finishes the work."""
    volume_id = await _half_expanded(env)
    guard = InFlight()
    expander = Expander(env.api, cluster="test")
    release = asyncio.Event()
    busy = asyncio.ensure_future(guard.run([volume_id], "a test", release.wait()))
    await asyncio.sleep(0)
    with pytest.raises(AbortedError, match="a test"):
        await expander.settle_aside(guard, volume_id, "finish expansion")
    assert volume_id not in env.sim.disk_names()
    release.set()
    await busy
    disk = await expander.settle_aside(guard, volume_id, "finish expansion")
    assert disk is not None and disk.size == 2 * GIB
    await _assert_grown(env, volume_id, 2 * GIB)


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _method(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _on_the_expander(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "_expander"
    )


def test_only_settle_aside_takes_a_guard_for_an_expansion() -> None:
    """The expander's callers never take a guard around one of its methods themselves (a function
    that takes a guard calls none of them but ``settle_aside``): a volume met on the side is
    settled through ``settle_aside``. Inside the expander, that is the only method that takes a
    guard."""
    folder = Path(expand.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for function in _functions(ast.parse(path.read_text())):
            calls = _calls(function)
            if any(_method(call) == "run" for call in calls):
                mixed = [
                    _method(call)
                    for call in calls
                    if _on_the_expander(call) and _method(call) != "settle_aside"
                ]
                assert mixed == [], f"{path.name}: {function.name} guards {mixed} itself"
    takers = {
        function.name
        for function in _functions(ast.parse(Path(expand.__file__).read_text()))
        if any(_method(call) == "run" for call in _calls(function))
    }
    assert takers == {"settle_aside"}
