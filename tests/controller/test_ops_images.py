"""ControllerOps with images: snapshots kept as images (VolumeSnapshotClass ``snapshotType:
image``), volumes restored from images (this cluster's or pre-provisioned), who may delete an
image, and read-only volumes (StorageClass ``readOnly``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller import record
from csi_oxide.controller.ops import ControllerOps
from csi_oxide.controller.record import Source, SourceKind
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
)
from csi_oxide.wiring import build_controller_ops, build_reconciler
from csi_oxide_lab.asgi import AsgiClient
from tests.oxide_bodies import image_create_body
from tests.units import GIB

from .controller_helpers import Env, new


def _from(snapshot_id: str) -> Source:
    return Source(SourceKind.SNAPSHOT, snapshot_id)


def _raw(env: Env) -> AsgiClient:
    """Plain HTTP to the simulator, for what the driver never does (silo images, promotion)."""
    return AsgiClient(
        env.sim.asgi_app(validate=True), headers={"authorization": f"Bearer {env.sim.token}"}
    )


async def _hand_made_image(env: Env, name: str, volume_id: str, *, silo: bool = False) -> str:
    """An image someone made by hand (no record) from a snapshot of ``volume_id``; its ID."""
    snap = await env.api.snapshot_create(f"hand-{name}", "", volume_id)
    body = image_create_body(name, snap.id, description="golden image")
    async with _raw(env) as http:
        r = await http.post("/v1/images", params={} if silo else {"project": "csi"}, json=body)
    assert r.status_code == 201, r.text
    image_id: str = r.json()["id"]
    return image_id


async def test_snapshot_kept_as_an_image(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1", 2 * GIB))
    snap = await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True)
    assert snap.snapshot_id == record.image_name("vs-1")
    assert (snap.source_volume_id, snap.size_bytes, snap.ready) == (vol.volume_id, 2 * GIB, True)
    assert env.sim.image_names() == [snap.snapshot_id]
    assert env.sim.snapshot_names() == []  # the temporary snapshot is gone
    image = await env.api.image_view(snap.snapshot_id)
    rec = record.owned_by(image.description, "test")
    assert rec is not None and rec.matches_name("vs-1")
    again = await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True)
    assert again == snap
    other = await env.ops.create_volume(new("pvc-2"))
    with pytest.raises(AlreadyExistsError):
        await env.ops.create_snapshot("vs-1", other.volume_id, as_image=True)


async def test_the_image_outlives_its_volume(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1"))
    env.sim.write_content(vol.volume_id, b"precious")
    snap = await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True)
    await env.ops.delete_volume(vol.volume_id)
    assert await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True) == snap
    restored = await env.ops.create_volume(new("pvc-r", 3 * GIB, source=_from(snap.snapshot_id)))
    assert (restored.capacity_bytes, restored.source) == (3 * GIB, _from(snap.snapshot_id))
    assert env.sim.read_content(restored.volume_id) == b"precious"
    disk = await env.api.disk_view(restored.volume_id)
    assert (disk.image_id, disk.snapshot_id) == (
        (await env.api.image_view(snap.snapshot_id)).id,
        None,
    )
    again = await env.ops.create_volume(new("pvc-r", 3 * GIB, source=_from(snap.snapshot_id)))
    assert again == restored


async def test_restore_from_an_image_checks_the_block_size(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1", block_size=512))
    snap = await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True)
    with pytest.raises(InvalidArgumentError, match="blockSize 4096"):
        await env.ops.create_volume(new("pvc-r", source=_from(snap.snapshot_id), block_size=4096))
    made = await env.ops.create_volume(new("pvc-r", source=_from(snap.snapshot_id), block_size=512))
    assert (await env.api.disk_view(made.volume_id)).block_size == 512


async def test_list_get_and_delete_both_kinds(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1"))
    plain = await env.ops.create_snapshot("vs-plain", vol.volume_id)
    image = await env.ops.create_snapshot("vs-image", vol.volume_id, as_image=True)
    listed = await env.ops.list_snapshots()
    assert listed == sorted([plain, image], key=lambda s: s.snapshot_id)
    assert await env.ops.list_snapshots(source_volume_id=vol.volume_id) == listed
    assert await env.ops.list_snapshots(snapshot_id=image.snapshot_id) == [image]
    assert await env.ops.get_snapshot(image.snapshot_id) == image
    await env.ops.delete_snapshot(image.snapshot_id)
    await env.ops.delete_snapshot(image.snapshot_id)  # gone: still OK
    assert env.sim.image_names() == []
    assert await env.ops.list_snapshots(snapshot_id=image.snapshot_id) == []
    with pytest.raises(NotFoundError):
        await env.ops.get_snapshot(image.snapshot_id)
    assert await env.ops.list_snapshots() == [plain]


async def test_a_pre_provisioned_image_is_used_but_never_deleted(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1", 2 * GIB))
    env.sim.write_content(vol.volume_id, b"golden")
    await _hand_made_image(env, "img-golden", vol.volume_id)
    info = await env.ops.get_snapshot("img-golden")
    assert (info.snapshot_id, info.source_volume_id, info.size_bytes) == ("img-golden", "", 2 * GIB)
    assert "img-golden" not in [s.snapshot_id for s in await env.ops.list_snapshots()]
    restored = await env.ops.create_volume(new("pvc-r", source=_from("img-golden")))
    assert restored.capacity_bytes == 2 * GIB  # at least the image's size
    assert env.sim.read_content(restored.volume_id) == b"golden"
    await env.ops.delete_snapshot("img-golden")  # OK, and nothing deleted
    assert env.sim.image_names() == ["img-golden"]


async def test_a_silo_image_serves_as_a_source(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1"))
    await _hand_made_image(env, "img-base", vol.volume_id, silo=True)
    restored = await env.ops.create_volume(new("pvc-r", source=_from("img-base")))
    assert (await env.api.disk_view(restored.volume_id)).image_id is not None
    await env.ops.delete_snapshot("img-base")
    assert env.sim.image_names() == ["img-base"]


async def test_a_promoted_image_of_ours_is_not_deleted(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1"))
    snap = await env.ops.create_snapshot("vs-1", vol.volume_id, as_image=True)
    async with _raw(env) as http:
        r = await http.post(f"/v1/images/{snap.snapshot_id}/promote", params={"project": "csi"})
    assert r.status_code == 202
    await env.ops.delete_snapshot(snap.snapshot_id)
    assert env.sim.image_names() == [snap.snapshot_id]


async def test_another_clusters_image_is_not_found_and_not_deleted(env: Env) -> None:
    theirs = controller_ops_of(env, "other")
    vol = await theirs.create_volume(new("pvc-1"))
    snap = await theirs.create_snapshot("vs-1", vol.volume_id, as_image=True)
    with pytest.raises(NotFoundError, match="does not exist in this cluster"):
        await env.ops.get_snapshot(snap.snapshot_id)
    with pytest.raises(NotFoundError):
        await env.ops.create_volume(new("pvc-r", source=_from(snap.snapshot_id)))
    await env.ops.delete_snapshot(snap.snapshot_id)
    assert env.sim.image_names() == [snap.snapshot_id]
    assert await env.ops.list_snapshots() == []


async def test_an_image_of_another_project_is_not_found(env: Env) -> None:
    env.sim.add_foreign_image("img-theirs", GIB)
    with pytest.raises(NotFoundError, match="no Oxide image of that name"):
        await env.ops.create_volume(new("pvc-r", source=_from("img-theirs")))
    await env.ops.delete_snapshot("img-theirs")
    assert env.sim.image_names() == ["img-theirs"]


async def test_a_leftover_temporary_snapshot_is_reconciled(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-1"))
    target = record.image_name("vs-1")
    rec = record.Record.of_image_snapshot("test", target, Source(SourceKind.VOLUME, vol.volume_id))
    name = record.image_snapshot_name(target)
    await env.api.snapshot_create(name, rec.encode(), vol.volume_id)  # a crash left it
    reconciler = build_reconciler(
        env.api, cluster="test", inflight=InFlight(), stale_after=timedelta(0)
    )
    done = await reconciler.run_once()
    assert done.deleted == [name]
    assert env.sim.snapshot_names() == []


# ---- read-only volumes ----------------------------------------------------------------------


async def _image_of(env: Env, size: int = 2 * GIB) -> str:
    vol = await env.ops.create_volume(new("pvc-src", size))
    env.sim.write_content(vol.volume_id, b"golden")
    return (await env.ops.create_snapshot("vs-src", vol.volume_id, as_image=True)).snapshot_id


async def test_read_only_volume_is_a_read_only_disk_of_the_source_size(env: Env) -> None:
    image = await _image_of(env)
    ro = await env.ops.create_volume(new("pvc-ro", GIB, source=_from(image), read_only=True))
    disk = await env.api.disk_view(ro.volume_id)
    assert (disk.read_only, disk.size, ro.capacity_bytes) == (True, 2 * GIB, 2 * GIB)
    birth = await env.ops.publish(ro.volume_id, env.node)
    assert birth.read_only and birth.disk_id == disk.id
    assert env.sim.read_content(ro.volume_id) == b"golden"


async def test_read_only_from_a_snapshot_too(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-src"))
    snap = await env.ops.create_snapshot("vs-src", vol.volume_id)
    ro = await env.ops.create_volume(new("pvc-ro", source=_from(snap.snapshot_id), read_only=True))
    assert (await env.api.disk_view(ro.volume_id)).read_only
    writable = await env.ops.publish(vol.volume_id, env.node)
    assert not writable.read_only


async def test_read_only_volume_larger_than_its_source_is_out_of_range(env: Env) -> None:
    image = await _image_of(env)
    with pytest.raises(OutOfRangeError, match="exactly the size of its source"):
        await env.ops.create_volume(new("pvc-ro", 3 * GIB, source=_from(image), read_only=True))
    spec = new("pvc-ro", GIB, source=_from(image), read_only=True)
    with pytest.raises(OutOfRangeError):
        await env.ops.create_volume(
            type(spec)(spec.name, CapacityRange(GIB, GIB), source=spec.source, read_only=True)
        )
    assert record.volume_name("pvc-ro") not in env.sim.disk_names()


async def test_read_only_needs_a_snapshot_source(env: Env) -> None:
    vol = await env.ops.create_volume(new("pvc-src"))
    with pytest.raises(InvalidArgumentError, match="readOnly"):
        await env.ops.create_volume(new("pvc-ro", read_only=True))
    clone = Source(SourceKind.VOLUME, vol.volume_id)
    with pytest.raises(InvalidArgumentError, match="readOnly"):
        await env.ops.create_volume(new("pvc-ro", source=clone, read_only=True))


async def test_read_only_and_writable_requests_do_not_mix(env: Env) -> None:
    image = await _image_of(env)
    await env.ops.create_volume(new("pvc-ro", 2 * GIB, source=_from(image), read_only=True))
    with pytest.raises(AlreadyExistsError, match="read-only"):
        await env.ops.create_volume(new("pvc-ro", 2 * GIB, source=_from(image)))


async def test_read_only_volume_cannot_be_snapshotted_cloned_or_expanded(env: Env) -> None:
    image = await _image_of(env)
    ro = await env.ops.create_volume(new("pvc-ro", source=_from(image), read_only=True))
    for as_image in (False, True):
        with pytest.raises(FailedPreconditionError, match="read-only Oxide disk"):
            await env.ops.create_snapshot("vs-ro", ro.volume_id, as_image=as_image)
    with pytest.raises(FailedPreconditionError, match="cannot be cloned"):
        await env.ops.create_volume(new("pvc-c", source=Source(SourceKind.VOLUME, ro.volume_id)))
    with pytest.raises(InvalidArgumentError, match="cannot be expanded"):
        await env.ops.expand_volume(ro.volume_id, CapacityRange(3 * GIB, 0))
    assert await env.ops.expand_volume(ro.volume_id, CapacityRange(2 * GIB, 0)) == 2 * GIB
    assert [n for n in env.sim.snapshot_names() if record.is_temporary_snapshot_name(n)] == []


def controller_ops_of(env: Env, cluster: str) -> ControllerOps:
    """The controller of another cluster over the same simulator."""
    return build_controller_ops(env.api, cluster=cluster, inflight=InFlight())
