"""The kubelet's plugin registration service (``pluginregistration.v1``), served by the node plugin.

The kubelet watches its ``plugins_registry`` folder for sockets. On finding ours it asks ``GetInfo``
(a CSI plugin, our driver name, where the CSI socket is on the host, CSI 1.0.0), then tells us with
``NotifyRegistrationStatus`` whether it accepted us; after that it calls the CSI socket itself
(NodeGetInfo) and records the driver in the node's CSINode. This is what the node-driver-registrar
sidecar does; serving it from the plugin needs one image fewer and registers exactly while the
plugin serves. Removing the socket (at stop) makes the kubelet forget the driver.

A registration the kubelet refuses is recorded; the liveness answer (``/healthz``) then fails so
the kubelet restarts the container and registration is tried again, as the sidecar does by exiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from csi_oxide import DRIVER_NAME
from csi_oxide._pluginregistration import pluginregistration_pb2 as reg
from csi_oxide._pluginregistration import pluginregistration_pb2_grpc as reg_grpc
from csi_oxide.errors import ConfigurationError
from csi_oxide.server.app import prepare_socket_path, start_on_socket, stop_on_socket

log = structlog.get_logger("csi_oxide.server.registration")

CSI_PLUGIN_TYPE = "CSIPlugin"
SUPPORTED_VERSIONS = ("1.0.0",)
DEFAULT_KUBELET_ENDPOINT = f"/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock"

Ctx = grpc.aio.ServicerContext[object, object]


@dataclass
class RegistrationStatus:
    """What the kubelet last said about our registration (None: nothing yet)."""

    registered: bool | None = None
    error: str | None = None

    def problem(self) -> str | None:
        """Why the plugin is not usable by the kubelet, or None."""
        if self.registered is False:
            return f"the kubelet refused the plugin registration: {self.error or 'no reason given'}"
        return None


def socket_name() -> str:
    """The registration socket's file name in ``plugins_registry`` (the registrar's convention)."""
    return f"{DRIVER_NAME}-reg.sock"


def kubelet_endpoint(value: str) -> str:
    """The CSI socket's path on the host, as the kubelet will dial it; absolute, no scheme."""
    path = value.removeprefix("unix://")
    if not path.startswith("/"):
        raise ConfigurationError(
            f"--kubelet-registration-path {value!r} must be the absolute path of the CSI socket "
            "on the host"
        )
    return path


class RegistrationService(reg_grpc.RegistrationServicer):
    """GetInfo and NotifyRegistrationStatus for one CSI driver."""

    def __init__(self, endpoint: str, status: RegistrationStatus) -> None:
        self._endpoint = endpoint
        self._status = status

    async def GetInfo(self, request: reg.InfoRequest, context: Ctx) -> reg.PluginInfo:
        log.info("kubelet asked for plugin info", endpoint=self._endpoint)
        return reg.PluginInfo(
            type=CSI_PLUGIN_TYPE,
            name=DRIVER_NAME,
            endpoint=self._endpoint,
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    async def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: Ctx
    ) -> reg.RegistrationStatusResponse:
        self._status.registered = request.plugin_registered
        self._status.error = request.error or None
        if request.plugin_registered:
            log.info("registered with the kubelet")
        else:
            log.error("the kubelet refused the registration", error=request.error)
        return reg.RegistrationStatusResponse()


class RegistrationServer:
    """The registration service on ``<registration_dir>/csi.oxide.computer-reg.sock``."""

    def __init__(self, registration_dir: Path, endpoint: str, status: RegistrationStatus) -> None:
        self.path = registration_dir / socket_name()
        self._service = RegistrationService(kubelet_endpoint(endpoint), status)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind the socket (replacing only a stale socket) and serve."""
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"registration folder {self.path.parent} does not exist (mount the kubelet's "
                "plugins_registry folder there)"
            )
        prepare_socket_path(self.path)
        server = grpc.aio.server()
        reg_grpc.add_RegistrationServicer_to_server(self._service, server)
        await start_on_socket(server, self.path)
        self._server = server
        log.info("serving plugin registration", socket=str(self.path))

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving and remove the socket: the kubelet then unregisters the driver."""
        server, self._server = self._server, None
        await stop_on_socket(server, self.path, grace)
