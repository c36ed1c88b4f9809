"""The Oxide token never leaks: not in a log line (debug level), an error message, or a metric.

Real processes: the simulator and ``csi-oxide serve`` as a user runs them; a lifecycle with error
paths through gRPC; then a driver holding a wrong token, whose every call fails.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide_lab import harness
from tests.plain_http import get
from tests.units import GIB

CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi.VolumeCapability.AccessMode(
        mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)
WRONG_TOKEN = "oxide-token-" + "5ecre7" * 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _lifecycle(channel: grpc.aio.Channel, node: str) -> list[str]:
    """Happy and unhappy calls; the error details the CO would see."""
    stub: csi_grpc.ControllerAsyncStub = csi_grpc.ControllerStub(channel)
    details: list[str] = []
    vol = (
        await stub.CreateVolume(
            csi.CreateVolumeRequest(
                name="pvc-secret",
                capacity_range=csi.CapacityRange(required_bytes=GIB),
                volume_capabilities=[CAP],
                secrets={"token": "not-ours-to-log"},
            )
        )
    ).volume.volume_id
    publish = csi.ControllerPublishVolumeRequest(volume_id=vol, node_id=node, volume_capability=CAP)
    await stub.ControllerPublishVolume(publish)
    failing: list[Awaitable[object]] = [
        stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol)),
        stub.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=vol, capacity_range=csi.CapacityRange(required_bytes=2 * GIB)
            )
        ),
        stub.CreateVolume(
            csi.CreateVolumeRequest(
                name="huge",
                volume_capabilities=[CAP],
                capacity_range=csi.CapacityRange(required_bytes=4096 * GIB),
            )
        ),
    ]
    for call in failing:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        details.append(info.value.details() or "")
    await stub.CreateSnapshot(csi.CreateSnapshotRequest(name="snap", source_volume_id=vol))
    await stub.ControllerUnpublishVolume(
        csi.ControllerUnpublishVolumeRequest(volume_id=vol, node_id=node)
    )
    await stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))
    return details


async def test_the_token_appears_nowhere(tmp_path: Path) -> None:
    sim = harness.start_sim(tmp_path, "--hotplug")
    token = sim.env["OXIDE_TOKEN"]
    port = _free_port()
    with harness.stopping(sim.proc):
        driver = harness.start_driver(
            tmp_path,
            sim.env,
            mode="controller",
            extra=["--log-level", "debug", "--metrics-address", f"127.0.0.1:{port}"],
        )
        wrong = harness.start_driver(
            tmp_path, {**sim.env, "OXIDE_TOKEN": WRONG_TOKEN}, mode="controller", name="wrong"
        )
        with harness.stopping(driver.proc, wrong.proc):
            async with grpc.aio.insecure_channel(driver.endpoint) as channel:
                details = await _lifecycle(channel, sim.env["CSI_OXIDE_NODE_ID"])
            async with grpc.aio.insecure_channel(wrong.endpoint) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await csi_grpc.ControllerStub(channel).CreateVolume(
                        csi.CreateVolumeRequest(name="x", volume_capabilities=[CAP])
                    )
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                details.append(info.value.details() or "")
            metrics = (await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")).text
    logs = driver.proc.output() + wrong.proc.output()
    assert "rpc" in logs and "CreateVolume" in logs  # the logs are there to be searched
    assert 'csi_oxide_oxide_requests_total{operation="disk_create"' in metrics
    for secret in (token, WRONG_TOKEN, "not-ours-to-log"):
        assert secret not in logs
        assert secret not in metrics
        assert not any(secret in d for d in details)
    for fragment in (token[-16:], WRONG_TOKEN[-16:]):
        assert fragment not in logs
