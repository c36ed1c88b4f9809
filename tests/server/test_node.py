"""The Node service over real gRPC, its NodeOps over fakes of the node's seams (no root needed):
volume ID validation on every RPC, the guard keyed by NVMe serial (both taken in NodeOps: see
``tests/node/test_node_ops.py``; here, the codes they reach the CO with), and the controller's
``publish_context`` reaching the format decision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract.publish_context import Birth, Origin, encode
from csi_oxide.daemon.health import Health
from csi_oxide.node.history import MKFS_STARTED
from csi_oxide.node.state import FileRecordStore, VolumeRecord, to_json
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.node import NodeService
from tests.node.fakes import FakeDevices, FakeFilesystems, fake_node_ops

VOLUME = "csi-0123456789abcdef"
TWIN = "csi-0123456789abcdef-twin"
BAD_IDS = ["../../etc", "UPPER", "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "a" * 64, "-x"]
NODE_ID = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"  # the Oxide disk behind VOLUME
OTHER = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"  # another disk, given VOLUME's name later


class SlowFilesystems(FakeFilesystems):
    """mkfs waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def mkfs(self, device: str, fstype: str) -> None:
        self.started.set()
        await self.release.wait()
        await super().mkfs(device, fstype)


@dataclass
class Node:
    stub: csi_grpc.NodeAsyncStub
    devices: FakeDevices
    fs: SlowFilesystems
    root: Path

    def mount_cap(self) -> csi.VolumeCapability:
        return csi.VolumeCapability(
            mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
            access_mode=csi.VolumeCapability.AccessMode(
                mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        )

    def stage_request(
        self, volume: str, name: str, context: dict[str, str] | None = None
    ) -> csi.NodeStageVolumeRequest:
        staging = self.root / name
        staging.mkdir(exist_ok=True)
        return csi.NodeStageVolumeRequest(
            volume_id=volume,
            staging_target_path=str(staging),
            volume_capability=self.mount_cap(),
            publish_context=context or {},
        )


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    devices = FakeDevices()
    filesystems = SlowFilesystems()
    store = FileRecordStore(tmp_path / "state", boot="boot-1")
    ops = fake_node_ops(devices, filesystems, store)
    server = CsiServer(
        f"unix://{tmp_path}/csi.sock",
        Services(
            identity=IdentityService(Health()),
            node=NodeService(node_id=NODE_ID, ops=ops),
        ),
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{tmp_path}/csi.sock")
    try:
        yield Node(csi_grpc.NodeStub(channel), devices, filesystems, tmp_path)
    finally:
        filesystems.release.set()
        await channel.close()
        await server.stop(grace=1)
        store.close()


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_every_node_rpc_refuses_an_id_that_is_not_a_disk_name(node: Node, bad: str) -> None:
    path = str(node.root / "p")
    stub = node.stub
    calls = [
        stub.NodeStageVolume(node.stage_request(bad, "s")),
        stub.NodeUnstageVolume(
            csi.NodeUnstageVolumeRequest(volume_id=bad, staging_target_path=path)
        ),
        stub.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=bad,
                staging_target_path=path,
                target_path=path + "-t",
                volume_capability=node.mount_cap(),
            )
        ),
        stub.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(volume_id=bad, target_path=path)),
        stub.NodeGetVolumeStats(csi.NodeGetVolumeStatsRequest(volume_id=bad, volume_path=path)),
        stub.NodeExpandVolume(csi.NodeExpandVolumeRequest(volume_id=bad, volume_path=path)),
    ]
    assert [await _code(c) for c in calls] == [grpc.StatusCode.NOT_FOUND] * len(calls)
    assert not list((node.root / "state").glob("*.json"))


async def test_missing_fields_are_invalid_arguments(node: Node) -> None:
    codes = [
        await _code(node.stub.NodeUnstageVolume(csi.NodeUnstageVolumeRequest(volume_id=VOLUME))),
        await _code(
            node.stub.NodeUnpublishVolume(csi.NodeUnpublishVolumeRequest(target_path="/x"))
        ),
    ]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2


async def test_arguments_are_checked_before_the_volume_id(node: Node) -> None:
    """As in the controller: a request missing an argument is INVALID_ARGUMENT whatever its volume
    ID; the ID (NOT_FOUND when it names nothing) is the ops layer's check, made after."""
    request = node.stage_request(BAD_IDS[0], "s")
    request.ClearField("staging_target_path")
    publish = csi.NodePublishVolumeRequest(
        volume_id=BAD_IDS[0],
        target_path=str(node.root / "t"),
        staging_target_path="relative",
        volume_capability=node.mount_cap(),
    )
    codes = [await _code(node.stub.NodeStageVolume(request))]
    codes.append(await _code(node.stub.NodePublishVolume(publish)))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert not list((node.root / "state").glob("*.json"))


async def test_the_guard_is_keyed_by_serial(node: Node) -> None:
    node.devices.attach(VOLUME)
    first = asyncio.ensure_future(node.stub.NodeStageVolume(node.stage_request(VOLUME, "a")))
    await asyncio.wait_for(node.fs.started.wait(), 10)  # VOLUME's mkfs is running
    code = await _code(node.stub.NodeStageVolume(node.stage_request(TWIN, "b")))
    assert code == grpc.StatusCode.ABORTED
    node.fs.release.set()
    await first
    # Once VOLUME is staged, its serial is taken: TWIN is refused, not merely busy.
    code = await _code(node.stub.NodeStageVolume(node.stage_request(TWIN, "b")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert node.fs.formatted == [("/dev/nvme1n1", "ext4")]


async def test_the_controllers_origin_reaches_the_format_decision(node: Node) -> None:
    node.fs.release.set()
    dev = node.devices.attach(VOLUME)
    store = node.root / "state" / f"{VOLUME}.json"
    # A disk this plugin began to format (record: mkfs started), left with no signature and
    # non-zero bytes, exactly what a kill -9 during mkfs leaves.
    store.write_text(to_json(VolumeRecord(VOLUME, VOLUME, MKFS_STARTED, "ext4", disk_id=DISK)))
    node.fs.disk(dev.path).zeros = False
    code = await _code(node.stub.NodeStageVolume(node.stage_request(VOLUME, "a")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    for refused in (Birth(Origin.SNAPSHOT, DISK), Birth(Origin.BLANK), Birth(Origin.BLANK, OTHER)):
        request = node.stage_request(VOLUME, "a", encode(refused))
        assert (
            await _code(node.stub.NodeStageVolume(request)) == grpc.StatusCode.FAILED_PRECONDITION
        )
    assert node.fs.formatted == []
    blank = encode(Birth(Origin.BLANK, DISK))
    await node.stub.NodeStageVolume(node.stage_request(VOLUME, "a", blank))
    assert node.fs.formatted == [(dev.path, "ext4")]
