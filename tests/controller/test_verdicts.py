"""Kept ownership verdicts (``controller.verdicts``): by disk UUID, bounded, and never a reason to
act on a disk that was not the one judged.

The first part is pure (``Verdicts`` on its own); the rest runs ``ControllerOps`` against the
simulator, with a second controller replica of the same cluster (the previous leader) and someone
else changing Oxide between two calls.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import cast

import pytest

from csi_oxide.contract.publish_context import Birth, Origin
from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller import owner, record
from csi_oxide.controller.expand import Expander
from csi_oxide.controller.ops import ControllerOps
from csi_oxide.controller.verdicts import DEFAULT_LIMIT, Verdicts
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import CsiOxideError, NotFoundError
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.types import Disk, DiskSpec
from csi_oxide.wiring import build_controller_ops
from tests.units import GIB

from .controller_helpers import Env, a_disk, new

CLUSTER = "test"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _ours(csi_name: str) -> Disk:
    rec = record.Record(cluster=CLUSTER, name=csi_name, size=GIB)
    return a_disk(rec.disk_name(), rec.encode(), str(uuid.uuid4()))


# ---- Verdicts alone -----------------------------------------------------------------------------


def test_a_verdict_is_reused_only_for_the_uuid_it_was_read_for() -> None:
    known = Verdicts(CLUSTER)
    first = _ours("pvc-1")
    assert known.judge(first).owner is owner.Owner.OURS
    kept = known.under(first.name)
    assert kept is not None
    assert (kept.id, kept.claim.owner) == (first.id, owner.Owner.OURS)
    # The name passes to another disk (deleted, made again by someone else): its own verdict is
    # read and kept, and nothing of the first disk's is left to act on.
    other = record.Record(cluster="another-cluster", name="pvc-1", size=GIB)
    newcomer = a_disk(first.name, other.encode(), str(uuid.uuid4()))
    assert known.judge(newcomer).owner is owner.Owner.FOREIGN
    kept = known.under(first.name)
    assert kept is not None
    assert (kept.id, kept.claim.owner) == (newcomer.id, owner.Owner.FOREIGN)
    assert len(known) == 1


def test_a_verdict_is_judged_from_the_disk_in_hand_every_time() -> None:
    """``judge`` never answers from what it kept: a disk read from the API is judged as read."""
    known = Verdicts(CLUSTER)
    ours = _ours("pvc-1")
    known.judge(ours)
    forged = a_disk(ours.name, "made by hand", disk_id=ours.id)  # never from Oxide
    assert known.judge(forged).owner is owner.Owner.STATIC


def test_forgotten_verdicts_are_gone() -> None:
    known = Verdicts(CLUSTER)
    a, b = _ours("pvc-a"), _ours("pvc-b")
    known.judge(a)
    known.judge(b)
    known.forget(a.id)
    known.forget_name(b.name)
    known.forget(str(uuid.uuid4()))  # never kept: nothing happens
    known.forget_name("csi-0000000000000000")
    assert known.under(a.name) is None
    assert known.under(b.name) is None
    assert len(known) == 0


def test_the_bound_holds_and_the_least_recently_used_goes_first() -> None:
    known = Verdicts(CLUSTER, limit=3)
    disks = [_ours(f"pvc-{i}") for i in range(10)]
    for disk in disks[:3]:
        known.judge(disk)
    assert known.under(disks[0].name) is not None  # used: now the most recent
    for disk in disks[3:]:
        known.judge(disk)
        assert len(known) <= 3
    assert len(known) == 3
    assert [d.name for d in disks if known.under(d.name) is not None] == [d.name for d in disks[7:]]
    known = Verdicts(CLUSTER, limit=2)
    for disk in disks[:3]:
        known.judge(disk)
    known.under(disks[1].name)
    known.judge(disks[3])
    assert [d for d in disks[:4] if known.under(d.name) is not None] == [disks[1], disks[3]]


def test_the_bound_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Verdicts(CLUSTER, limit=0)
    assert DEFAULT_LIMIT >= 1


def _ops(api: OxideApi, known: Verdicts) -> ControllerOps:
    """A controller of ``CLUSTER`` that keeps its verdicts in ``known``."""
    expander = Expander(api, cluster=CLUSTER)
    return ControllerOps(api, cluster=CLUSTER, inflight=InFlight(), expander=expander, known=known)


async def test_a_controllers_verdicts_stay_within_their_bound(env: Env) -> None:
    known = Verdicts(CLUSTER, limit=2)
    ops = _ops(env.api, known)
    for i in range(5):
        await ops.create_volume(new(f"pvc-{i}"))
    assert len(known) == 2
    # A volume whose verdict was dropped is simply read again; one still kept is not.
    env.sim.request_counts.clear()
    await ops.publish(record.volume_name("pvc-0"), env.node)
    assert env.sim.request_counts["disk_view"] == 1
    await ops.publish(record.volume_name("pvc-4"), env.node)
    assert env.sim.request_counts["disk_view"] == 1
    assert len(known) == 2


# ---- ControllerOps against the simulator --------------------------------------------------------


class Recorder:
    """An ``OxideApi`` that notes each attach, detach and delete it passes on (operation and the
    disk as sent: the driver's kept UUID, or a name)."""

    ACTIONS = ("disk_delete", "instance_disk_attach", "instance_disk_detach")

    def __init__(self, api: OxideApi) -> None:
        self._api = api
        self.sent: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> object:
        target = getattr(self._api, name)
        if name not in self.ACTIONS:
            return target

        async def call(*args: str) -> object:
            self.sent.append((name, args[-1]))
            return await target(*args)

        return call


def _replica(env: Env) -> tuple[ControllerOps, Recorder]:
    """Another controller of the same cluster over the same project, with its own verdicts (a
    second replica, or this controller after a restart)."""
    recorder = Recorder(env.api)
    ops = build_controller_ops(cast(OxideApi, recorder), cluster=CLUSTER, inflight=InFlight())
    return ops, recorder


@pytest.fixture
def two(env: Env) -> tuple[Env, ControllerOps, Recorder]:
    ops, recorder = _replica(env)
    return env, ops, recorder


def _counts(env: Env) -> dict[str, int]:
    return {op: n for op, n in env.sim.request_counts.items() if n}


async def test_a_volume_lifecycle_reads_no_disk(env: Env) -> None:
    """Create, publish, unpublish, delete: the disk_create answer's verdict serves the rest; what
    remains are the four changes and the two looks for an interrupted expansion."""
    env.sim.request_counts.clear()
    vol = (await env.ops.create_volume(new())).volume_id
    birth = await env.ops.publish(vol, env.node)
    disk_id = birth.disk_id
    assert birth == Birth(Origin.BLANK, disk_id)
    await env.ops.unpublish(vol, env.node)
    await env.ops.delete_volume(vol)
    assert _counts(env) == {
        "snapshot_view": 2,
        "disk_create": 1,
        "instance_disk_attach": 1,
        "instance_disk_detach": 1,
        "disk_delete": 1,
    }
    assert env.sim.disk_names() == []


async def test_a_restarted_controller_reads_first(two: tuple[Env, ControllerOps, Recorder]) -> None:
    env, restarted, _ = two
    vol = (await env.ops.create_volume(new())).volume_id
    env.sim.request_counts.clear()
    await restarted.publish(vol, env.node)
    assert _counts(env) == {"disk_view": 1, "instance_disk_attach": 1}
    await restarted.unpublish(vol, env.node)
    assert _counts(env) == {"disk_view": 1, "instance_disk_attach": 1, "instance_disk_detach": 1}


async def _hand_made(env: Env, name: str) -> str:
    disk = await env.api.disk_create(
        DiskSpec(name=name, description="made by hand", size=GIB, block_size=4096)
    )
    env.sim.write_content(name, b"someone else's data")
    return disk.id


async def test_a_disk_replaced_under_its_name_between_two_calls_is_never_attached(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    """The volume's disk is deleted and another made under its name (by hand) between two calls:
    the kept UUID answers 404, the name is read again, and the newcomer is left untouched."""
    env, ops, sent = two
    vol = (await ops.create_volume(new())).volume_id
    first = (await env.api.disk_view(vol)).id
    await env.api.disk_delete(vol)
    await _hand_made(env, vol)
    with pytest.raises(NotFoundError, match="does not exist any more"):
        await ops.publish(vol, env.node)
    assert sent.sent == [("instance_disk_attach", first)]
    assert (await env.api.disk_view(vol)).instance_id is None


async def test_a_disk_replaced_under_its_name_between_two_calls_is_never_detached(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    env, ops, sent = two
    vol = (await ops.create_volume(new())).volume_id
    first = (await ops.publish(vol, env.node)).disk_id
    await env.api.instance_disk_detach(env.node, vol)
    await env.api.disk_delete(vol)
    newcomer = await _hand_made(env, vol)
    await env.api.instance_disk_attach(env.node, vol)
    await ops.unpublish(vol, env.node)
    assert sent.sent == [("instance_disk_attach", first), ("instance_disk_detach", first)]
    disk = await env.api.disk_view(vol)
    assert (disk.id, disk.instance_id) == (newcomer, env.node)


async def test_a_stale_uuid_gets_a_404_and_the_driver_reads_again(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    env, ops, sent = two
    vol = (await ops.create_volume(new())).volume_id
    first = (await env.api.disk_view(vol)).id
    await env.api.disk_delete(vol)
    newcomer = await _hand_made(env, vol)
    await ops.delete_volume(vol)
    assert sent.sent == [("disk_delete", first)]  # by the kept UUID, never by name
    assert (await env.api.disk_view(vol)).id == newcomer  # the newcomer is untouched
    assert env.sim.read_content(vol) == b"someone else's data"


async def test_a_volume_re_created_by_the_previous_leaders_expansion_is_acted_on(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    """The previous leader expanded the volume (its disk re-created: a new UUID) a moment ago.
    The kept UUID answers 404; the disk now under the name carries this volume's record, so it is
    the volume: attached, detached and deleted in the same calls."""
    env, ops, sent = two
    vol = (await ops.create_volume(new())).volume_id
    first = (await env.api.disk_view(vol)).id
    env.sim.write_content(vol, b"data")
    assert await env.ops.expand_volume(vol, CapacityRange(2 * GIB)) == 2 * GIB  # the other leader
    grown = (await env.api.disk_view(vol)).id
    assert grown != first

    birth = await ops.publish(vol, env.node)
    assert birth.disk_id == grown
    assert (await env.api.disk_view(vol)).instance_id == env.node
    await ops.unpublish(vol, env.node)
    assert (await env.api.disk_view(vol)).instance_id is None
    await ops.delete_volume(vol)
    assert env.sim.disk_names() == []
    assert sent.sent == [
        ("instance_disk_attach", first),
        ("instance_disk_attach", grown),
        ("instance_disk_detach", grown),
        ("disk_delete", grown),
    ]


async def test_unpublish_and_delete_follow_a_re_created_volume_too(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    env, ops, sent = two
    vol = (await ops.create_volume(new())).volume_id
    first = (await env.api.disk_view(vol)).id
    await env.ops.expand_volume(vol, CapacityRange(2 * GIB))  # the other leader
    await env.ops.publish(vol, env.node)
    grown = (await env.api.disk_view(vol)).id
    await ops.unpublish(vol, env.node)  # a stale UUID must not leave the volume attached
    assert (await env.api.disk_view(vol)).instance_id is None
    await env.ops.expand_volume(vol, CapacityRange(3 * GIB))  # and again: another UUID
    latest = (await env.api.disk_view(vol)).id
    await ops.delete_volume(vol)  # a stale UUID must not leak the volume's disk
    assert env.sim.disk_names() == []
    assert sent.sent == [
        ("instance_disk_detach", first),
        ("instance_disk_detach", grown),
        ("disk_delete", grown),
        ("disk_delete", latest),
    ]


async def test_delete_ends_the_previous_leaders_interrupted_expansion(
    two: tuple[Env, ControllerOps, Recorder],
) -> None:
    """The previous leader's expansion died after its snapshot, before deleting the disk: the
    kept UUID still names the volume's disk, and DeleteVolume must still remove the expansion
    snapshot (else it would re-create the deleted volume later). This is why DeleteVolume keeps
    its one look for an expansion snapshot."""
    env, ops, _ = two
    vol = (await ops.create_volume(new())).volume_id
    env.sim.faults.inject("disk_delete", status=500)
    with pytest.raises(CsiOxideError):
        await env.ops.expand_volume(vol, CapacityRange(2 * GIB))  # the other leader, cut
    assert env.sim.snapshot_names() == [record.grow_snapshot_name(vol)]
    assert env.sim.disk_names() == [vol]
    await ops.delete_volume(vol)
    assert env.sim.disk_names() == []
    assert env.sim.snapshot_names() == []


async def test_a_kept_verdict_of_another_clusters_disk_is_never_acted_on(env: Env) -> None:
    other = build_controller_ops(env.api, cluster="other", inflight=InFlight())
    vol = (await other.create_volume(new())).volume_id
    known = Verdicts(CLUSTER)
    ops = _ops(env.api, known)
    with pytest.raises(NotFoundError):
        await ops.publish(vol, env.node)  # read and judged: another cluster's
    kept = known.under(vol)
    assert kept is not None and kept.claim.owner is owner.Owner.FOREIGN
    env.sim.request_counts.clear()
    await ops.unpublish(vol, env.node)
    await ops.delete_volume(vol)
    # Not acted on by the kept UUID: each call reads the disk again and leaves it.
    assert _counts(env) == {"disk_view": 2}
    assert env.sim.disk_names() == [vol]
