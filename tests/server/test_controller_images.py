"""The Controller service over real gRPC with images: a VolumeSnapshotClass ``snapshotType:
image``, restores from images, ListSnapshots of both kinds, deleting an image the driver did not
make, and StorageClass ``readOnly`` volumes (their refusals and their publish context)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract import publish_context
from csi_oxide.controller import record
from tests.units import GIB

from .controller_world import Cluster, World, code_of, serve

Code = grpc.StatusCode
IMAGE = {"snapshotType": "image"}
READ_ONLY = {"readOnly": "true"}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    worlds = serve(tmp_path, hotplug=True, instances=1)
    async with contextlib.aclosing(worlds) as run:
        async for made in run:
            yield made
            assert made.sim.contract_violations == []


def _ctl(world: World) -> Cluster:
    return world.clusters["test"]


async def test_snapshot_as_image_lists_and_restores(world: World) -> None:
    ctl = _ctl(world)
    vol = (await ctl.create("pvc-1", 2 * GIB)).volume_id
    world.sim.write_content(vol, b"kept")
    image = await ctl.snapshot("vs-image", vol, IMAGE)
    plain = await ctl.snapshot("vs-plain", vol)
    assert image.snapshot_id == record.image_name("vs-image")
    assert (image.ready_to_use, image.size_bytes, image.source_volume_id) == (True, 2 * GIB, vol)
    listed = await ctl.stub.ListSnapshots(csi.ListSnapshotsRequest())
    ids = [e.snapshot.snapshot_id for e in listed.entries]
    assert ids == sorted([image.snapshot_id, plain.snapshot_id])
    await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    restored = await ctl.create("pvc-2", 2 * GIB, snapshot=image.snapshot_id)
    assert world.sim.read_content(restored.volume_id) == b"kept"
    assert restored.content_source.snapshot.snapshot_id == image.snapshot_id
    await ctl.stub.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=image.snapshot_id))
    assert world.sim.image_names() == []


async def test_unknown_snapshot_type_is_invalid_argument(world: World) -> None:
    ctl = _ctl(world)
    vol = (await ctl.create("pvc-1")).volume_id
    code = await code_of(ctl.snapshot("vs-1", vol, {"snapshotType": "backup"}))
    assert code == Code.INVALID_ARGUMENT


async def test_deleting_an_image_the_driver_did_not_make_is_ok_and_keeps_it(world: World) -> None:
    ctl = _ctl(world)
    vol = (await ctl.create("pvc-1")).volume_id
    snap = await world.api.snapshot_create("by-hand", "", vol)
    await world.api.image_create("img-golden", "an operator's image", snap.id)
    request = csi.DeleteSnapshotRequest(snapshot_id="img-golden")
    assert await code_of(ctl.stub.DeleteSnapshot(request)) == Code.OK
    assert world.sim.image_names() == ["img-golden"]


async def test_read_only_volume_over_grpc(world: World) -> None:
    ctl = _ctl(world)
    vol = (await ctl.create("pvc-1", 2 * GIB)).volume_id
    image = (await ctl.snapshot("vs-1", vol, IMAGE)).snapshot_id
    too_big = ctl.create("pvc-ro", 3 * GIB, snapshot=image, parameters=READ_ONLY)
    assert await code_of(too_big) == Code.OUT_OF_RANGE
    assert await code_of(ctl.create("pvc-ro", parameters=READ_ONLY)) == Code.INVALID_ARGUMENT
    ro = await ctl.create("pvc-ro", GIB, snapshot=image, parameters=READ_ONLY)
    assert ro.capacity_bytes == 2 * GIB  # exactly the source's size
    context = await ctl.publish(ro.volume_id, world.node)
    assert context[publish_context.READ_ONLY_KEY] == "true"
    assert publish_context.decode(context).read_only
    assert publish_context.READ_ONLY_KEY not in await ctl.publish(vol, world.node)
    assert await code_of(ctl.snapshot("vs-ro", ro.volume_id)) == Code.FAILED_PRECONDITION
    await ctl.unpublish(ro.volume_id, world.node)
    expand = ctl.stub.ControllerExpandVolume(
        csi.ControllerExpandVolumeRequest(
            volume_id=ro.volume_id, capacity_range=csi.CapacityRange(required_bytes=4 * GIB)
        )
    )
    assert await code_of(expand) == Code.INVALID_ARGUMENT
