"""Offline expansion against the simulator, including a crash after (and before) every step.

A "crash" is a fault the simulator injects on one Oxide request: with ``after=True`` the request
takes effect and only its answer is lost (the controller died right after it), without it the
request never happens. The simulator's memory backing carries a content token from disk to snapshot
to disk, so every test can check that the data made it through.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from csi_oxide.controller import record
from csi_oxide.controller.record import Source
from csi_oxide.errors import (
    AbortedError,
    CsiOxideError,
    FailedPreconditionError,
    InternalError,
    NotFoundError,
    ResourceExhaustedError,
)
from csi_oxide.inflight import InFlight
from csi_oxide.oxide.types import Disk, DiskSpec
from csi_oxide.volumes import CapacityRange
from csi_oxide.wiring import build_controller_ops, build_reconciler
from tests.units import GIB

from .controller_helpers import Env, controller_env, new

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
