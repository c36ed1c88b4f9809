from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from csi_oxide import DRIVER_NAME, __version__, errors
from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.daemon.health import Health
from csi_oxide.errors import ConfigurationError
from csi_oxide.server.app import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    GC_YOUNG_THRESHOLD,
    MAX_REQUEST_BYTES,
    CsiServer,
    Services,
    parse_endpoint,
    prepare_socket_path,
    release_free_heap,
)
from csi_oxide.server.identity import IdentityService


class FailingController(csi_grpc.ControllerServicer):
    """Raises what the test asks for, to exercise the interceptor (other RPCs: the generated
    base class's UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.raise_next: BaseException | None = None

    async def CreateVolume(self, request, context):
        assert self.raise_next is not None
        raise self.raise_next


class Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, grpc.StatusCode]] = []

    def rpc_started(self, method: str) -> None:
        pass

    def rpc_finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.finished.append((method, code))


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[grpc.aio.Channel, FailingController, Health, Recorder]]:
    health = Health()
    controller = FailingController()  # type: ignore[abstract]
    recorder = Recorder()
    server = CsiServer(
        f"unix://{tmp_path}/csi.sock",
        Services(identity=IdentityService(health), controller=controller, observers=[recorder]),
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{tmp_path}/csi.sock")
    try:
        yield channel, controller, health, recorder
    finally:
        await channel.close()
        await server.stop(grace=1)
    assert not (tmp_path / "csi.sock").exists()


async def test_identity(served) -> None:
    channel, _, health, _ = served
    stub = csi_grpc.IdentityStub(channel)
    info = await stub.GetPluginInfo(csi.GetPluginInfoRequest())
    assert (info.name, info.vendor_version) == (DRIVER_NAME, __version__)
    caps = await stub.GetPluginCapabilities(csi.GetPluginCapabilitiesRequest())
    kinds = {c.WhichOneof("type") for c in caps.capabilities}
    assert kinds == {"service", "volume_expansion"}
    expansion = next(c for c in caps.capabilities if c.HasField("volume_expansion"))
    assert expansion.volume_expansion.type == csi.PluginCapability.VolumeExpansion.OFFLINE
    assert (await stub.Probe(csi.ProbeRequest())).ready.value is True
    health.mark(False, "Oxide API unreachable")
    assert (await stub.Probe(csi.ProbeRequest())).ready.value is False


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (errors.NotFoundError("disk csi-x not found"), grpc.StatusCode.NOT_FOUND, "csi-x"),
        (errors.AbortedError("busy"), grpc.StatusCode.ABORTED, "busy"),
        (ValueError("oops"), grpc.StatusCode.INTERNAL, "oops"),
    ],
)
async def test_errors_are_mapped_once(served, exc, code, text) -> None:
    channel, controller, _, recorder = served
    controller.raise_next = exc
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await csi_grpc.ControllerStub(channel).CreateVolume(csi.CreateVolumeRequest(name="v"))
    assert info.value.code() == code
    assert text in (info.value.details() or "")
    assert recorder.finished[-1] == ("CreateVolume", code)


async def test_unserved_rpcs_are_unimplemented(served) -> None:
    channel, _, _, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await csi_grpc.NodeStub(channel).NodeGetInfo(csi.NodeGetInfoRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await csi_grpc.ControllerStub(channel).DeleteVolume(csi.DeleteVolumeRequest(volume_id="x"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _parameters(size: int) -> dict[str, str]:
    """A parameter map of about ``size`` bytes on the wire."""
    return {f"key-{i:06d}": "v" * 100 for i in range(size // 115)}


async def test_a_request_over_the_size_cap_is_refused_unread(served) -> None:
    channel, controller, _, recorder = served
    controller.raise_next = errors.InvalidArgumentError("read and refused")
    stub = csi_grpc.ControllerStub(channel)
    under = csi.CreateVolumeRequest(name="v", parameters=_parameters(MAX_REQUEST_BYTES - 8192))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateVolume(under)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    over = csi.CreateVolumeRequest(name="v", parameters=_parameters(MAX_REQUEST_BYTES + 8192))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateVolume(over)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (info.value.details() or "")
    assert recorder.finished == [("CreateVolume", grpc.StatusCode.INVALID_ARGUMENT)]  # not read


class HeldController(csi_grpc.ControllerServicer):
    """Holds every ListVolumes until ``release`` is set; ``full`` is set once ``expected`` are
    held."""

    def __init__(self, expected: int) -> None:
        self.entered = 0
        self.expected = expected
        self.full = asyncio.Event()
        self.release = asyncio.Event()

    async def ListVolumes(self, request, context):
        self.entered += 1
        if self.entered == self.expected:
            self.full.set()
        await self.release.wait()
        return csi.ListVolumesResponse()


async def test_calls_beyond_the_cap_are_refused_at_once(tmp_path: Path) -> None:
    held = HeldController(DEFAULT_MAX_CONCURRENT_RPCS)  # type: ignore[abstract]
    server = CsiServer(
        f"unix://{tmp_path}/csi.sock", Services(identity=IdentityService(Health()), controller=held)
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"unix://{tmp_path}/csi.sock") as channel:
            stub = csi_grpc.ControllerStub(channel)
            calls = [
                asyncio.ensure_future(stub.ListVolumes(csi.ListVolumesRequest()))
                for _ in range(DEFAULT_MAX_CONCURRENT_RPCS)
            ]
            await asyncio.wait_for(held.full.wait(), 30)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ListVolumes(csi.ListVolumesRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert held.entered == DEFAULT_MAX_CONCURRENT_RPCS  # refused before any work
            held.release.set()
            await asyncio.gather(*calls)
            await stub.ListVolumes(csi.ListVolumesRequest())  # below the cap again: served
    finally:
        await server.stop(grace=1)


def test_a_cap_below_one_is_a_configuration_error(tmp_path: Path) -> None:
    services = Services(identity=IdentityService(Health()))
    with pytest.raises(ConfigurationError, match="max_concurrent_rpcs"):
        CsiServer(f"unix://{tmp_path}/csi.sock", services, max_concurrent_rpcs=0)


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [("unix:///csi/csi.sock", "/csi/csi.sock"), ("unix:/tmp/a.sock", "/tmp/a.sock")],
)
def test_parse_endpoint(endpoint: str, path: str) -> None:
    assert parse_endpoint(endpoint) == Path(path)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:1", "unix://relative.sock", "/csi.sock"])
def test_parse_endpoint_refuses(endpoint: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_endpoint(endpoint)


def test_prepare_socket_path(tmp_path: Path) -> None:
    # A stale socket (nobody listening) is replaced.
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    prepare_socket_path(stale)
    assert not stale.exists()
    # A regular file is never deleted.
    regular = tmp_path / "file.sock"
    regular.write_text("keep me")
    with pytest.raises(ConfigurationError, match="not a socket"):
        prepare_socket_path(regular)
    assert regular.read_text() == "keep me"
    # A live socket means another plugin is serving: refuse.
    live = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live))
    listener.listen(1)
    try:
        with pytest.raises(ConfigurationError, match="already serving"):
            prepare_socket_path(live)
        assert live.exists()
    finally:
        listener.close()
    # A missing parent directory is created.
    prepare_socket_path(tmp_path / "new" / "dir" / "csi.sock")
    assert (tmp_path / "new" / "dir").is_dir()


def test_the_daemon_settles_the_garbage_collector_in_its_own_process() -> None:
    # In a child process: gc.freeze() and the threshold are process-wide, never for the tests'.
    code = (
        "import gc\n"
        "from csi_oxide.server import app\n"
        "assert gc.get_freeze_count() == 0\n"
        "app.settle_garbage_collector()\n"
        "print(gc.get_freeze_count(), *gc.get_threshold())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    frozen, young, middle, old = map(int, out)
    assert frozen > 10_000  # the modules and objects start-up made
    assert (young, middle, old) == (GC_YOUNG_THRESHOLD, 10, 10)


def test_the_free_heap_goes_back_where_the_c_library_can() -> None:
    import ctypes

    # glibc's malloc_trim (the daemon's node plugin calls it once it serves); musl has none.
    assert release_free_heap() == hasattr(ctypes.CDLL(None), "malloc_trim")
