"""CSI Node service: parse and validate the request, make one ``NodeOps`` call, respond.

The two services share one layout. Their servicers (this module, ``server.controller``) check the
request's arguments (``server.parse``: INVALID_ARGUMENT, or FAILED_PRECONDITION where the node's
error tables say so) and nothing else. The ops layer below (``NodeOps`` here, ``ControllerOps``
there) checks each volume ID with the one rule, ``volumes.require_id`` (anything that is not an
Oxide disk name, such as ``../../etc``, a UUID or upper case, is NOT_FOUND and touches nothing), and
takes the per-volume guard, an ``InFlight`` built in ``csi_oxide.wiring``: ABORTED while another
operation on the volume is in flight. The node's guard is keyed by the NVMe serial the volume ID
resolves to (its first 20 characters), so two IDs sharing a serial, and so a device, never run at
once. No servicer takes a guard (``tests/test_layers.py`` checks).
"""

from __future__ import annotations

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract.publish_context import decode
from csi_oxide.errors import FailedPreconditionError, InvalidArgumentError
from csi_oxide.node.ops import NodeOps
from csi_oxide.server import parse

Ctx = grpc.aio.ServicerContext[object, object]
NodeCap = csi.NodeServiceCapability.RPC

CAPABILITIES = (
    NodeCap.STAGE_UNSTAGE_VOLUME,
    NodeCap.GET_VOLUME_STATS,
    NodeCap.EXPAND_VOLUME,
    NodeCap.VOLUME_CONDITION,
    NodeCap.SINGLE_NODE_MULTI_WRITER,
)


def _node_capability(request_cap: csi.VolumeCapability, has: bool) -> parse.Capability:
    """The request's capability. One the volume cannot serve is FAILED_PRECONDITION here: the CSI
    spec's error tables for NodeStageVolume and NodePublishVolume give code 9 to "volume
    capability not supported" ("exceeds capabilities"), where the controller's RPCs answer the
    same capability with INVALID_ARGUMENT (``server.controller._supported``)."""
    if not has:
        raise InvalidArgumentError("volume_capability is required")
    cap = parse.capability(request_cap)
    reason = parse.unsupported_reason(cap)
    if reason:
        raise FailedPreconditionError(reason)
    return cap


class NodeService(csi_grpc.NodeServicer):
    """Stages, publishes, grows and reports on volumes attached to this Oxide instance."""

    def __init__(self, *, node_id: str, ops: NodeOps) -> None:
        self._node_id = node_id
        self._ops = ops

    async def NodeGetCapabilities(
        self, request: csi.NodeGetCapabilitiesRequest, context: Ctx
    ) -> csi.NodeGetCapabilitiesResponse:
        return csi.NodeGetCapabilitiesResponse(
            capabilities=[
                csi.NodeServiceCapability(rpc=csi.NodeServiceCapability.RPC(type=c))
                for c in CAPABILITIES
            ]
        )

    async def NodeGetInfo(
        self, request: csi.NodeGetInfoRequest, context: Ctx
    ) -> csi.NodeGetInfoResponse:
        return csi.NodeGetInfoResponse(
            node_id=self._node_id, max_volumes_per_node=await self._ops.max_volumes()
        )

    async def NodeStageVolume(
        self, request: csi.NodeStageVolumeRequest, context: Ctx
    ) -> csi.NodeStageVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        staging = parse.path(request.staging_target_path, "staging_target_path")
        cap = _node_capability(request.volume_capability, request.HasField("volume_capability"))
        await self._ops.stage(
            volume_id,
            staging,
            fstype=cap.fstype,
            mount_flags=cap.mount_flags,
            block=cap.block,
            birth=decode(request.publish_context),
        )
        return csi.NodeStageVolumeResponse()

    async def NodeUnstageVolume(
        self, request: csi.NodeUnstageVolumeRequest, context: Ctx
    ) -> csi.NodeUnstageVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        staging = parse.path(request.staging_target_path, "staging_target_path")
        await self._ops.unstage(volume_id, staging)
        return csi.NodeUnstageVolumeResponse()

    async def NodePublishVolume(
        self, request: csi.NodePublishVolumeRequest, context: Ctx
    ) -> csi.NodePublishVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        target = parse.path(request.target_path, "target_path")
        cap = _node_capability(request.volume_capability, request.HasField("volume_capability"))
        if not request.staging_target_path:
            raise FailedPreconditionError(
                "staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME)"
            )
        staging = parse.path(request.staging_target_path, "staging_target_path")
        await self._ops.publish(
            volume_id,
            staging,
            target,
            block=cap.block,
            read_only=request.readonly or cap.read_only_mode,
            mount_flags=cap.mount_flags,
            single_writer=cap.access_mode == parse.AccessMode.SINGLE_NODE_SINGLE_WRITER,
        )
        return csi.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(
        self, request: csi.NodeUnpublishVolumeRequest, context: Ctx
    ) -> csi.NodeUnpublishVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        target = parse.path(request.target_path, "target_path")
        await self._ops.unpublish(volume_id, target)
        return csi.NodeUnpublishVolumeResponse()

    async def NodeGetVolumeStats(
        self, request: csi.NodeGetVolumeStatsRequest, context: Ctx
    ) -> csi.NodeGetVolumeStatsResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        volume_path = parse.require(request.volume_path, "volume_path")
        stats = await self._ops.stats(volume_id, volume_path)
        usage = [csi.VolumeUsage(unit=csi.VolumeUsage.BYTES, total=stats.total_bytes)]
        if not stats.block:
            usage = [
                csi.VolumeUsage(
                    unit=csi.VolumeUsage.BYTES,
                    total=stats.total_bytes,
                    available=stats.available_bytes,
                    used=stats.used_bytes,
                ),
                csi.VolumeUsage(
                    unit=csi.VolumeUsage.INODES,
                    total=stats.total_inodes,
                    available=stats.available_inodes,
                    used=stats.used_inodes,
                ),
            ]
        condition = csi.VolumeCondition(
            abnormal=stats.abnormal is not None, message=stats.abnormal or "ok"
        )
        return csi.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    async def NodeExpandVolume(
        self, request: csi.NodeExpandVolumeRequest, context: Ctx
    ) -> csi.NodeExpandVolumeResponse:
        volume_id = parse.require(request.volume_id, "volume_id")
        volume_path = parse.require(request.volume_path, "volume_path")
        if request.HasField("volume_capability"):
            parse.capability(request.volume_capability)
        size = await self._ops.expand(volume_id, volume_path)
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)
