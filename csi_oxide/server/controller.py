"""CSI Controller service: parse and validate the request, make one ``ControllerOps`` call, build
the response.

Arguments are checked here (``server.parse``: INVALID_ARGUMENT) and nowhere else. Volume and
snapshot IDs are checked with ``volumes.require_id`` (NOT_FOUND), and the per-volume guard
(ABORTED while another operation on the volume is in flight) is taken, in ``ControllerOps``, the
layer below, as the node does in ``NodeOps`` (see ``server.node``): the controller needs it there,
since steps within its operations (finishing an interrupted expansion met on a read) and the
reconciler take the same guard. No servicer takes a guard.
"""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract import publish_context
from csi_oxide.contract.volumes import is_volume_name
from csi_oxide.controller.ops import (
    ControllerOps,
    NewVolume,
    SnapshotInfo,
    VolumeInfo,
)
from csi_oxide.controller.pages import Walks
from csi_oxide.controller.record import Source, SourceKind, is_driver_snapshot_name
from csi_oxide.errors import InvalidArgumentError, UnimplementedError
from csi_oxide.server import parse

Ctx = grpc.aio.ServicerContext[object, object]
Cap = csi.ControllerServiceCapability.RPC

CAPABILITIES = (
    Cap.CREATE_DELETE_VOLUME,
    Cap.PUBLISH_UNPUBLISH_VOLUME,
    Cap.LIST_VOLUMES,
    Cap.LIST_VOLUMES_PUBLISHED_NODES,
    Cap.GET_CAPACITY,
    Cap.CREATE_DELETE_SNAPSHOT,
    Cap.LIST_SNAPSHOTS,
    Cap.GET_SNAPSHOT,
    Cap.CLONE_VOLUME,
    Cap.GET_VOLUME,
    Cap.VOLUME_CONDITION,
    Cap.SINGLE_NODE_MULTI_WRITER,
    Cap.EXPAND_VOLUME,
)


def _content_source(source: Source | None) -> csi.VolumeContentSource | None:
    if source is None:
        return None
    if source.kind is SourceKind.SNAPSHOT:
        return csi.VolumeContentSource(
            snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=source.id)
        )
    return csi.VolumeContentSource(volume=csi.VolumeContentSource.VolumeSource(volume_id=source.id))


def _source(request: csi.CreateVolumeRequest) -> Source | None:
    if not request.HasField("volume_content_source"):
        return None
    src = request.volume_content_source
    kind = src.WhichOneof("type")
    if kind == "snapshot":
        return Source(SourceKind.SNAPSHOT, parse.require(src.snapshot.snapshot_id, "snapshot_id"))
    if kind == "volume":
        return Source(SourceKind.VOLUME, parse.require(src.volume.volume_id, "volume_id"))
    raise InvalidArgumentError("volume_content_source must name a snapshot or a volume")


def _volume(info: VolumeInfo) -> csi.Volume:
    return csi.Volume(
        volume_id=info.volume_id,
        capacity_bytes=info.capacity_bytes,
        content_source=_content_source(info.source),
    )


def _condition(info: VolumeInfo) -> csi.VolumeCondition:
    return csi.VolumeCondition(abnormal=info.abnormal is not None, message=info.abnormal or "ok")


def _snapshot(info: SnapshotInfo) -> csi.Snapshot:
    created = Timestamp()
    created.FromDatetime(info.created)
    return csi.Snapshot(
        snapshot_id=info.snapshot_id,
        source_volume_id=info.source_volume_id,
        size_bytes=info.size_bytes,
        creation_time=created,
        ready_to_use=info.ready,
    )


def _supported(caps: list[parse.Capability]) -> None:
    """INVALID_ARGUMENT for a capability no Oxide disk can serve: the CSI spec's error tables for
    CreateVolume and ControllerExpandVolume ("volume capabilities not supported") call it an
    invalid argument, ControllerPublishVolume too (it lists no code of its own for it). The node
    answers the same capability with FAILED_PRECONDITION, as its tables ask
    (``server.node._node_capability``)."""
    for cap in caps:
        reason = parse.unsupported_reason(cap)
        if reason:
            raise InvalidArgumentError(reason)


class ControllerService(csi_grpc.ControllerServicer):
    """Provisions, attaches, lists and snapshots Oxide disks."""

    def __init__(self, ops: ControllerOps) -> None:
        self._ops = ops
        # Paged listings: one Oxide listing per walk, follow-on pages cut from it (see pages.py).
        self._volume_walks: Walks[VolumeInfo] = Walks(lambda v: v.volume_id, is_volume_name)
        self._snapshot_walks: Walks[SnapshotInfo] = Walks(
            lambda s: s.snapshot_id, is_driver_snapshot_name
        )

    async def ControllerGetCapabilities(
        self, request: csi.ControllerGetCapabilitiesRequest, context: Ctx
    ) -> csi.ControllerGetCapabilitiesResponse:
        return csi.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi.ControllerServiceCapability(rpc=csi.ControllerServiceCapability.RPC(type=c))
                for c in CAPABILITIES
            ]
        )

    async def CreateVolume(
        self, request: csi.CreateVolumeRequest, context: Ctx
    ) -> csi.CreateVolumeResponse:
        name = parse.csi_name(request.name, "name")
        caps = parse.capabilities(request.volume_capabilities)
        _supported(caps)
        params = parse.volume_parameters(request.parameters)
        capacity = parse.capacity_range(
            request.capacity_range if request.HasField("capacity_range") else None
        )
        spec = NewVolume(
            name=name,
            capacity=capacity,
            block_size=params.block_size,
            source=_source(request),
            pvc=params.pvc,
            pv=params.pv,
            read_only=params.read_only,
        )
        info = await self._ops.create_volume(spec)
        return csi.CreateVolumeResponse(volume=_volume(info))

    async def DeleteVolume(
        self, request: csi.DeleteVolumeRequest, context: Ctx
    ) -> csi.DeleteVolumeResponse:
        await self._ops.delete_volume(parse.require(request.volume_id, "volume_id"))
        return csi.DeleteVolumeResponse()

    async def ControllerPublishVolume(
        self, request: csi.ControllerPublishVolumeRequest, context: Ctx
    ) -> csi.ControllerPublishVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        node_id = parse.require(request.node_id, "node_id")
        if not request.HasField("volume_capability"):
            raise InvalidArgumentError("volume_capability is required")
        _supported([parse.capability(request.volume_capability)])
        birth = await self._ops.publish(volume_id, node_id)
        # Which disk and how it was born: the node formats a device without a signature only on
        # this proof, and keys its history by the disk.
        return csi.ControllerPublishVolumeResponse(publish_context=publish_context.encode(birth))

    async def ControllerUnpublishVolume(
        self, request: csi.ControllerUnpublishVolumeRequest, context: Ctx
    ) -> csi.ControllerUnpublishVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        await self._ops.unpublish(volume_id, request.node_id)
        return csi.ControllerUnpublishVolumeResponse()

    async def ValidateVolumeCapabilities(
        self, request: csi.ValidateVolumeCapabilitiesRequest, context: Ctx
    ) -> csi.ValidateVolumeCapabilitiesResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        caps = parse.capabilities(request.volume_capabilities)
        await self._ops.get_volume(volume_id)  # NOT_FOUND for a missing volume
        reasons = [r for r in map(parse.unsupported_reason, caps) if r]
        try:
            parse.volume_parameters(request.parameters)
        except InvalidArgumentError as exc:
            reasons.append(str(exc))
        if reasons:
            return csi.ValidateVolumeCapabilitiesResponse(message="; ".join(reasons))
        confirmed = csi.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
            mutable_parameters=request.mutable_parameters,
        )
        return csi.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    async def ListVolumes(
        self, request: csi.ListVolumesRequest, context: Ctx
    ) -> csi.ListVolumesResponse:
        page = await self._volume_walks.page(
            self._ops.list_volumes, request.starting_token, request.max_entries
        )
        entries = [
            csi.ListVolumesResponse.Entry(
                volume=_volume(v),
                status=csi.ListVolumesResponse.VolumeStatus(
                    published_node_ids=[v.published_node] if v.published_node else [],
                    volume_condition=_condition(v),
                ),
            )
            for v in page.entries
        ]
        return csi.ListVolumesResponse(entries=entries, next_token=page.next_token)

    async def ControllerGetVolume(
        self, request: csi.ControllerGetVolumeRequest, context: Ctx
    ) -> csi.ControllerGetVolumeResponse:
        info = await self._ops.get_volume(parse.require(request.volume_id, "volume_id"))
        return csi.ControllerGetVolumeResponse(
            volume=_volume(info),
            status=csi.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=[info.published_node] if info.published_node else [],
                volume_condition=_condition(info),
            ),
        )

    async def ControllerExpandVolume(
        self, request: csi.ControllerExpandVolumeRequest, context: Ctx
    ) -> csi.ControllerExpandVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise InvalidArgumentError("capacity_range is required")
        capacity = parse.capacity_range(request.capacity_range)
        block = False
        if request.HasField("volume_capability"):
            cap = parse.capability(request.volume_capability)
            _supported([cap])
            block = cap.block
        size = await self._ops.expand_volume(volume_id, capacity)
        # A filesystem is grown by the node at the next stage; a raw block volume needs nothing.
        return csi.ControllerExpandVolumeResponse(
            capacity_bytes=size, node_expansion_required=not block
        )

    async def ControllerModifyVolume(
        self, request: csi.ControllerModifyVolumeRequest, context: Ctx
    ) -> csi.ControllerModifyVolumeResponse:
        raise UnimplementedError(
            "ControllerModifyVolume is not supported: Oxide disks have no mutable parameters"
        )

    async def GetCapacity(
        self, request: csi.GetCapacityRequest, context: Ctx
    ) -> csi.GetCapacityResponse:
        caps = [parse.capability(c) for c in request.volume_capabilities]
        if any(parse.unsupported_reason(c) for c in caps):
            return csi.GetCapacityResponse(available_capacity=0)
        parse.volume_parameters(request.parameters)
        cap = await self._ops.capacity()
        return csi.GetCapacityResponse(
            available_capacity=cap.available,
            maximum_volume_size=Int64Value(value=cap.maximum_volume_size),
            minimum_volume_size=Int64Value(value=cap.minimum_volume_size),
        )

    async def CreateSnapshot(
        self, request: csi.CreateSnapshotRequest, context: Ctx
    ) -> csi.CreateSnapshotResponse:
        source = parse.require(request.source_volume_id, "source_volume_id")
        name = parse.csi_name(request.name, "name")
        params = parse.snapshot_parameters(request.parameters)
        info = await self._ops.create_snapshot(name, source, as_image=params.as_image)
        return csi.CreateSnapshotResponse(snapshot=_snapshot(info))

    async def DeleteSnapshot(
        self, request: csi.DeleteSnapshotRequest, context: Ctx
    ) -> csi.DeleteSnapshotResponse:
        await self._ops.delete_snapshot(parse.require(request.snapshot_id, "snapshot_id"))
        return csi.DeleteSnapshotResponse()

    async def ListSnapshots(
        self, request: csi.ListSnapshotsRequest, context: Ctx
    ) -> csi.ListSnapshotsResponse:
        snapshot_id, source = request.snapshot_id, request.source_volume_id
        page = await self._snapshot_walks.page(
            lambda: self._ops.list_snapshots(snapshot_id=snapshot_id, source_volume_id=source),
            request.starting_token,
            request.max_entries,
            scope=f"{snapshot_id}/{source}",
        )
        entries = [csi.ListSnapshotsResponse.Entry(snapshot=_snapshot(s)) for s in page.entries]
        return csi.ListSnapshotsResponse(entries=entries, next_token=page.next_token)

    async def GetSnapshot(
        self, request: csi.GetSnapshotRequest, context: Ctx
    ) -> csi.GetSnapshotResponse:
        info = await self._ops.get_snapshot(parse.require(request.snapshot_id, "snapshot_id"))
        return csi.GetSnapshotResponse(snapshot=_snapshot(info))
