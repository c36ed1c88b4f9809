"""CSI Node service: validate, make one ``NodeOps`` call under the volume's guard, respond.

Every RPC that names a volume validates its ID first: anything that is not an Oxide disk name
(``../../etc``, a UUID, upper case, ...) is NOT_FOUND and never reaches ``NodeOps``. The guard that
keeps one operation per volume in flight is keyed by the NVMe serial the volume ID resolves to
(its first 20 characters), so two IDs that share a serial, and so a device, never run at once.

Both services check a volume ID with the one rule (``volumes.require_id``) and take a per-volume
guard (an ``InFlight`` built in ``csi_oxide.wiring``) before any work. The node takes it here,
around ``NodeOps``, whose own per-serial lock makes a second caller wait (and then be refused for
the serial in use) rather than answer ABORTED; the controller takes it inside ``ControllerOps``,
because steps within its operations (finishing an interrupted expansion met on a read, the
reconciler) need the same guard.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.errors import FailedPreconditionError, InvalidArgumentError
from csi_oxide.inflight import InFlight
from csi_oxide.node.devices import serial_text
from csi_oxide.node.ops import NodeOps
from csi_oxide.publish_context import decode
from csi_oxide.server import parse
from csi_oxide.volumes import require_id

Ctx = grpc.aio.ServicerContext[object, object]
T = TypeVar("T")
NodeCap = csi.NodeServiceCapability.RPC

CAPABILITIES = (
    NodeCap.STAGE_UNSTAGE_VOLUME,
    NodeCap.GET_VOLUME_STATS,
    NodeCap.EXPAND_VOLUME,
    NodeCap.VOLUME_CONDITION,
    NodeCap.SINGLE_NODE_MULTI_WRITER,
)


def _volume_id(value: str) -> str:
    return require_id(parse.require(value, "volume_id"))


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

    def __init__(self, *, node_id: str, ops: NodeOps, inflight: InFlight) -> None:
        """``inflight``: the per-volume guard (built in ``csi_oxide.wiring``, never cutting)."""
        self._node_id = node_id
        self._ops = ops
        self._inflight = inflight

    async def _guarded(self, rpc: str, volume_id: str, work: Awaitable[T]) -> T:
        """``work`` under the volume's guard, keyed by the device it resolves to (its NVMe
        serial): ABORTED while another operation on that device is in flight."""
        return await self._inflight.run(
            [f"serial:{serial_text(volume_id)}"], f"{rpc} of {volume_id}", work
        )

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
        volume_id = _volume_id(request.volume_id)
        staging = parse.path(request.staging_target_path, "staging_target_path")
        cap = _node_capability(request.volume_capability, request.HasField("volume_capability"))
        await self._guarded(
            "NodeStageVolume",
            volume_id,
            self._ops.stage(
                volume_id,
                staging,
                fstype=cap.fstype,
                mount_flags=cap.mount_flags,
                block=cap.block,
                origin=decode(request.publish_context),
            ),
        )
        return csi.NodeStageVolumeResponse()

    async def NodeUnstageVolume(
        self, request: csi.NodeUnstageVolumeRequest, context: Ctx
    ) -> csi.NodeUnstageVolumeResponse:
        parse.require(request.volume_id, "volume_id")
        staging = parse.path(request.staging_target_path, "staging_target_path")
        volume_id = _volume_id(request.volume_id)
        await self._guarded("NodeUnstageVolume", volume_id, self._ops.unstage(volume_id, staging))
        return csi.NodeUnstageVolumeResponse()

    async def NodePublishVolume(
        self, request: csi.NodePublishVolumeRequest, context: Ctx
    ) -> csi.NodePublishVolumeResponse:
        volume_id = _volume_id(request.volume_id)
        target = parse.path(request.target_path, "target_path")
        cap = _node_capability(request.volume_capability, request.HasField("volume_capability"))
        if not request.staging_target_path:
            raise FailedPreconditionError(
                "staging_target_path is required: this plugin stages volumes (STAGE_UNSTAGE_VOLUME)"
            )
        staging = parse.path(request.staging_target_path, "staging_target_path")
        await self._guarded(
            "NodePublishVolume",
            volume_id,
            self._ops.publish(
                volume_id,
                staging,
                target,
                block=cap.block,
                read_only=request.readonly or cap.read_only_mode,
                mount_flags=cap.mount_flags,
                single_writer=cap.access_mode == parse.AccessMode.SINGLE_NODE_SINGLE_WRITER,
            ),
        )
        return csi.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(
        self, request: csi.NodeUnpublishVolumeRequest, context: Ctx
    ) -> csi.NodeUnpublishVolumeResponse:
        parse.require(request.volume_id, "volume_id")
        target = parse.path(request.target_path, "target_path")
        volume_id = _volume_id(request.volume_id)
        await self._guarded(
            "NodeUnpublishVolume", volume_id, self._ops.unpublish(volume_id, target)
        )
        return csi.NodeUnpublishVolumeResponse()

    async def NodeGetVolumeStats(
        self, request: csi.NodeGetVolumeStatsRequest, context: Ctx
    ) -> csi.NodeGetVolumeStatsResponse:
        parse.require(request.volume_id, "volume_id")
        volume_path = parse.require(request.volume_path, "volume_path")
        stats = await self._ops.stats(_volume_id(request.volume_id), volume_path)
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
        parse.require(request.volume_id, "volume_id")
        volume_path = parse.require(request.volume_path, "volume_path")
        if request.HasField("volume_capability"):
            parse.capability(request.volume_capability)
        volume_id = _volume_id(request.volume_id)
        size = await self._guarded(
            "NodeExpandVolume", volume_id, self._ops.expand(volume_id, volume_path)
        )
        return csi.NodeExpandVolumeResponse(capacity_bytes=size)
