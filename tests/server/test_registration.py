"""The kubelet plugin registration service, spoken to over its real socket as the kubelet does."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path, PosixPath

import grpc
import pytest

from csi_oxide import DRIVER_NAME
from csi_oxide._pluginregistration import pluginregistration_pb2 as reg
from csi_oxide._pluginregistration import pluginregistration_pb2_grpc as reg_grpc
from csi_oxide.errors import ConfigurationError
from csi_oxide.server.registration import (
    RegistrationServer,
    RegistrationStatus,
    kubelet_endpoint,
)
from csi_oxide.wiring import _register_with_kubelet

HOST_SOCKET = "/var/lib/kubelet/plugins/csi.oxide.computer/csi.sock"


async def test_the_kubelet_learns_who_we_are_and_where_the_csi_socket_is(tmp_path: Path) -> None:
    status = RegistrationStatus()
    server = RegistrationServer(tmp_path, f"unix://{HOST_SOCKET}", status)
    await server.start()
    try:
        assert server.path == tmp_path / "csi.oxide.computer-reg.sock"
        # The method paths the kubelet dials (the proto package is not versioned).
        async with grpc.aio.insecure_channel(f"unix://{server.path}") as channel:
            info = await channel.unary_unary(
                "/pluginregistration.Registration/GetInfo",
                request_serializer=reg.InfoRequest.SerializeToString,
                response_deserializer=reg.PluginInfo.FromString,
            )(reg.InfoRequest())
        assert info.type == "CSIPlugin"
        assert info.name == DRIVER_NAME
        assert info.endpoint == HOST_SOCKET
        assert list(info.supported_versions) == ["1.0.0"]
        assert status.registered is None
        assert status.problem() is None
    finally:
        await server.stop()
    assert not server.path.exists()  # gone: the kubelet unregisters the driver


async def test_a_refused_registration_is_a_liveness_problem(tmp_path: Path) -> None:
    status = RegistrationStatus()
    server = RegistrationServer(tmp_path, HOST_SOCKET, status)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{server.path}") as channel:
            stub = reg_grpc.RegistrationStub(channel)
            await stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True))
            assert (status.registered, status.problem()) == (True, None)
            await stub.NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=False, error="version 0.3 unsupported")
            )
    finally:
        await server.stop()
    assert status.registered is False
    assert status.problem() == (
        "the kubelet refused the plugin registration: version 0.3 unsupported"
    )


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    stale = tmp_path / "csi.oxide.computer-reg.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # left behind by a killed plugin: nobody accepts on it
    first = RegistrationServer(tmp_path, HOST_SOCKET, RegistrationStatus())
    await first.start()
    try:
        second = RegistrationServer(tmp_path, HOST_SOCKET, RegistrationStatus())
        with pytest.raises(ConfigurationError, match="already serving"):
            await second.start()
    finally:
        await first.stop()


async def test_a_missing_registration_folder_is_a_clear_error(tmp_path: Path) -> None:
    server = RegistrationServer(tmp_path / "plugins_registry", HOST_SOCKET, RegistrationStatus())
    with pytest.raises(ConfigurationError, match="plugins_registry folder"):
        await server.start()


@pytest.mark.parametrize("bad", ["csi.sock", "unix://relative/csi.sock", ""])
def test_the_host_path_must_be_absolute(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="absolute path"):
        kubelet_endpoint(bad)


async def test_registration_waits_for_the_csi_socket_and_ends_with_its_task(
    tmp_path: Path,
) -> None:
    looked = threading.Semaphore(0)

    class Watched(PosixPath):
        """The CSI socket's path, telling the test each time the registration looks for it."""

        def exists(self, *, follow_symlinks: bool = True) -> bool:
            found = super().exists()
            looked.release()
            return found

    csi_socket = Watched(tmp_path / "csi.sock")
    registry = tmp_path / "registry"
    registry.mkdir()
    server = RegistrationServer(registry, HOST_SOCKET, RegistrationStatus())
    task = asyncio.ensure_future(_register_with_kubelet(csi_socket, server, wait=0.01))
    for _ in range(2):  # it looked, found no socket, waited and looked again
        assert await asyncio.to_thread(looked.acquire, timeout=10)
    assert not server.path.exists()  # the kubelet must not find us before the CSI socket exists
    csi_socket.touch()
    for _ in range(500):
        if server.path.exists():
            break
        await asyncio.sleep(0.01)
    assert server.path.exists()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not server.path.exists()
