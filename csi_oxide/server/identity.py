"""CSI Identity service."""

from __future__ import annotations

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from csi_oxide import DRIVER_NAME, __version__
from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.daemon.health import Health

Ctx = grpc.aio.ServicerContext[object, object]

CAPABILITIES = [
    # Advertised in every mode: csi-sanity (and Kubernetes) read it from the node endpoint too.
    csi.PluginCapability(
        service=csi.PluginCapability.Service(type=csi.PluginCapability.Service.CONTROLLER_SERVICE)
    ),
    # Oxide has no disk resize: expansion re-creates the detached disk (docs/design.md), so OFFLINE.
    csi.PluginCapability(
        volume_expansion=csi.PluginCapability.VolumeExpansion(
            type=csi.PluginCapability.VolumeExpansion.OFFLINE
        )
    ),
]


class IdentityService(csi_grpc.IdentityServicer):
    """Name, version, capabilities and a cached readiness answer."""

    def __init__(self, health: Health) -> None:
        self._health = health

    async def GetPluginInfo(
        self, request: csi.GetPluginInfoRequest, context: Ctx
    ) -> csi.GetPluginInfoResponse:
        return csi.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version=__version__)

    async def GetPluginCapabilities(
        self, request: csi.GetPluginCapabilitiesRequest, context: Ctx
    ) -> csi.GetPluginCapabilitiesResponse:
        return csi.GetPluginCapabilitiesResponse(capabilities=CAPABILITIES)

    async def Probe(self, request: csi.ProbeRequest, context: Ctx) -> csi.ProbeResponse:
        # Never calls out: the answer comes from the background health check
        # (csi_oxide.daemon.health).
        return csi.ProbeResponse(ready=BoolValue(value=self._health.ready))
