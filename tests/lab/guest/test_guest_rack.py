"""The node plugin in a real Linux guest, where attach is NVMe hot-plug (`sim --backing guest`).

One guest for the whole module (TCG boots slowly): the simulator boots it as its local instance,
the controller runs on the host against the simulator, and the node plugin runs in the guest with
no node ID given (it reads SMBIOS). Every phase's wall time is printed (never asserted).

Off by default (CSI_OXIDE_GUEST=1 or ``make guest`` runs it): it needs qemu, a kernel in /boot and
virtme-ng, and takes minutes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide_lab import harness
from csi_oxide_lab.guest.vm import GUEST_LOGS, guest_logs, unavailable_reason
from tests import skips
from tests.units import GIB, MIB

pytestmark = [
    pytest.mark.root,
    pytest.mark.guest,
    # The first test also boots the guest (the module's rack: waiting for another guest run's
    # lock, then up to 10 minutes of TCG boot); csi-sanity in the guest may take 30 minutes.
    pytest.mark.timeout(3600),
    skips.opt_in(
        "CSI_OXIDE_GUEST", "the guest rack boots qemu (minutes of TCG): make test and make guest"
    ),
]

Mode = csi.VolumeCapability.AccessMode
RPC_TIMEOUT = 180.0
TAKEN_IN_TIMEOUT = 120.0  # for the node to answer one of two NodeStage calls (_stage_taken_in)
LOCK_PATH = "/tmp/csi-oxide-guest-tests.lock"


def _mount_cap(fs: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs),
        access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER),
    )


@dataclass
class Rack:
    """The running simulator (with its guest), the host controller, and stubs to both."""

    sim: harness.Sim
    controller: harness.Driver
    controller_stub: csi_grpc.ControllerStub
    node_stub: csi_grpc.NodeStub
    node_endpoint: str
    node_id: str
    guest_dir: Path
    workdir: Path
    channels: list[grpc.Channel]

    def disk_file(self, volume_id: str) -> Path:
        return self.guest_dir.parent / "devices" / volume_id

    def paths(self, volume_id: str) -> tuple[str, str]:
        """A staging dir (made by the CO, on the folder the guest shares) and a target path."""
        base = self.guest_dir / "co" / volume_id
        staging = base / "globalmount"
        staging.mkdir(parents=True, exist_ok=True)
        return str(staging), str(base / "pod-mount")

    def create(self, name: str, size: int = GIB) -> str:
        answer = self.controller_stub.CreateVolume(
            csi.CreateVolumeRequest(
                name=name,
                capacity_range=csi.CapacityRange(required_bytes=size),
                volume_capabilities=[_mount_cap()],
            ),
            timeout=RPC_TIMEOUT,
        )
        return str(answer.volume.volume_id)

    def publish(self, volume_id: str) -> None:
        self.controller_stub.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.node_id, volume_capability=_mount_cap()
            ),
            timeout=RPC_TIMEOUT,
        )

    def unpublish(self, volume_id: str) -> None:
        self.controller_stub.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=self.node_id),
            timeout=RPC_TIMEOUT,
        )

    def delete(self, volume_id: str) -> None:
        self.controller_stub.DeleteVolume(
            csi.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT
        )

    def stage_request(self, volume_id: str, fs: str = "ext4") -> csi.NodeStageVolumeRequest:
        staging, _ = self.paths(volume_id)
        return csi.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=_mount_cap(fs)
        )

    def stage(self, volume_id: str, fs: str = "ext4") -> None:
        self.node_stub.NodeStageVolume(self.stage_request(volume_id, fs), timeout=RPC_TIMEOUT)

    def node_publish(self, volume_id: str) -> str:
        staging, target = self.paths(volume_id)
        self.node_stub.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=staging,
                target_path=target,
                volume_capability=_mount_cap(),
            ),
            timeout=RPC_TIMEOUT,
        )
        return target

    def node_unpublish(self, volume_id: str) -> None:
        _, target = self.paths(volume_id)
        self.node_stub.NodeUnpublishVolume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
            timeout=RPC_TIMEOUT,
        )

    def unstage(self, volume_id: str) -> None:
        staging, _ = self.paths(volume_id)
        self.node_stub.NodeUnstageVolume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
            timeout=RPC_TIMEOUT,
        )

    def stats(self, volume_id: str, path: str) -> csi.NodeGetVolumeStatsResponse:
        return self.node_stub.NodeGetVolumeStats(
            csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path),
            timeout=RPC_TIMEOUT,
        )


def _phase(label: str, started: float) -> float:
    now = time.monotonic()
    print(f"[guest] {label}: {now - started:.1f}s")
    return now


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rack]:
    reason = unavailable_reason()
    if reason is not None:
        skips.skip(reason)
    workdir = tmp_path_factory.mktemp("guest-rack")
    # One guest at a time on this machine (two TCG guests on two cores starve each other).
    lock = open(LOCK_PATH, "w")  # noqa: SIM115 (held for the module)
    fcntl.flock(lock, fcntl.LOCK_EX)
    started = time.monotonic()
    sim = harness.start_sim(workdir, "--hotplug", "--backing", "guest", timeout=600)
    _phase("simulator up with the guest booted and its node plugin serving", started)
    guest_dir = Path(sim.env["CSI_OXIDE_GUEST_DIR"])
    rack_dir = guest_dir.parent
    try:
        controller = harness.start_driver(workdir, sim.env, mode="controller", name="controller")
    except BaseException:
        sim.proc.stop(120)
        raise
    channels = [
        grpc.insecure_channel(controller.endpoint),
        grpc.insecure_channel(sim.env["CSI_OXIDE_GUEST_NODE_ENDPOINT"]),
    ]
    yield Rack(
        sim=sim,
        controller=controller,
        controller_stub=csi_grpc.ControllerStub(channels[0]),
        node_stub=csi_grpc.NodeStub(channels[1]),
        node_endpoint=sim.env["CSI_OXIDE_GUEST_NODE_ENDPOINT"],
        node_id=sim.env["CSI_OXIDE_NODE_ID"],
        guest_dir=guest_dir,
        workdir=workdir,
        channels=channels,
    )
    for channel in channels:
        channel.close()
    controller.proc.stop()
    for name in GUEST_LOGS:  # kept for a look after the run
        with contextlib.suppress(OSError):
            shutil.copy(guest_dir / name, workdir / f"guest-{name}")
    stopping = time.monotonic()
    code = sim.proc.stop(120)
    _phase("simulator and guest stopped", stopping)
    _phase("whole module", started)
    assert code == 0, sim.proc.output()[-4000:]
    # Nothing left behind: no qemu of this rack, no file of it.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(rack_dir) not in ps, "a qemu of the guest rack is still running"
    assert not rack_dir.exists(), f"{rack_dir} was left behind"
    lock.close()


def _guest_report(rack: Rack) -> str:
    """What the simulator and the guest printed last: whether qemu still runs, and why not; the
    node's failed RPCs, and what the guest's kernel said of its NVMe devices and PCIe slots."""
    parts = [f"\n--- simulator\n{rack.sim.proc.output()[-3000:]}"]
    for name, text in guest_logs(rack.guest_dir).items():
        parts.append(f"--- guest {name}\n{text[-3000:]}")
        if name in _GREP:
            lines = [line for line in text.splitlines() if _GREP[name].search(line)]
            parts.append(f"--- guest {name}, {_GREP[name].pattern}\n" + "\n".join(lines[-60:]))
    return "\n".join(parts)


_GREP = {  # what the report picks out of a whole log, beside its tail
    "node.log": re.compile(r"code=(?!OK\b)"),
    "kernel.log": re.compile(r"nvme|pcieport|pciehp"),
}


def _assert_guest_serving(rack: Rack) -> None:
    try:
        rack.node_stub.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=60)
    except grpc.RpcError as exc:
        report = _guest_report(rack)
        raise AssertionError(f"the node in the guest does not answer: {exc}{report}") from None


def test_node_id_comes_from_smbios_and_the_boot_disk_takes_a_slot(rack: Rack) -> None:
    info = rack.node_stub.NodeGetInfo(csi.NodeGetInfoRequest(), timeout=RPC_TIMEOUT)
    assert info.node_id == rack.node_id  # the sim's local instance ID, read from SMBIOS
    assert info.max_volumes_per_node == 11  # 12 NVMe slots less the non-CSI boot disk


def test_lifecycle_with_hotplug_formats_the_nvme_disk(rack: Rack) -> None:
    vol = rack.create("guest-lifecycle")
    t = time.monotonic()
    rack.publish(vol)
    t = _phase("ControllerPublish (QMP device_add)", t)
    rack.stage(vol)
    t = _phase("NodeStage (wait for the device, mkfs.ext4, mount)", t)
    target = rack.node_publish(vol)
    t = _phase("NodePublish", t)
    stats = rack.stats(vol, target)
    assert not stats.volume_condition.abnormal, stats.volume_condition.message
    total = next(u.total for u in stats.usage if u.unit == csi.VolumeUsage.BYTES)
    assert 0.8 * GIB < total <= GIB  # the filesystem of the 1 GiB disk, seen in the guest
    rack.node_unpublish(vol)
    rack.unstage(vol)
    t = _phase("NodeUnpublish + NodeUnstage", t)
    rack.unpublish(vol)
    _phase("ControllerUnpublish (device_del, DEVICE_DELETED)", t)
    # The guest wrote an ext4 filesystem onto the disk's file through the hot-plugged controller.
    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", str(rack.disk_file(vol))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.stdout.strip() == "ext4"
    rack.delete(vol)


def _stage_taken_in(rack: Rack, vol: str) -> grpc.Future[csi.NodeStageVolumeResponse]:
    """A NodeStage of ``vol`` the node has taken in: it holds the volume's guard and answers
    once the disk is there (or its wait for it runs out).

    Nothing the host can see marks the node's wait itself, so two identical calls go out: the node
    takes one and refuses the other with ABORTED ("already in progress"), which it can only do
    while the first is inside. That refusal is the proof; the call it left running is returned."""
    request = rack.stage_request(vol)
    calls = [rack.node_stub.NodeStageVolume.future(request, timeout=RPC_TIMEOUT) for _ in "ab"]
    answered = threading.Event()
    for call in calls:
        call.add_done_callback(lambda _: answered.set())
    assert answered.wait(TAKEN_IN_TIMEOUT), "the node answered neither of two NodeStage calls"
    refused = next(call for call in calls if call.done())
    assert refused.code() == grpc.StatusCode.ABORTED, refused.details()
    assert "already in progress" in (refused.details() or ""), refused.details()
    return next(call for call in calls if call is not refused)


def test_stage_waits_for_a_disk_hotplugged_meanwhile(rack: Rack) -> None:
    vol = rack.create("guest-stage-waits")
    pending = _stage_taken_in(rack, vol)  # in the node before the disk is attached
    assert not pending.done(), "NodeStage answered before the disk was attached"
    rack.publish(vol)
    pending.result()
    stats = rack.stats(vol, rack.paths(vol)[0])
    assert not stats.volume_condition.abnormal
    rack.unstage(vol)
    rack.unpublish(vol)
    rack.delete(vol)


def test_disk_pulled_while_staged_and_published(rack: Rack) -> None:
    vol = rack.create("guest-pulled")
    rack.publish(vol)
    rack.stage(vol)
    target = rack.node_publish(vol)
    rack.unpublish(vol)  # the disk leaves the guest under its mounts (hot-unplug)
    condition = rack.stats(vol, target).volume_condition
    print(f"[guest] stats of the pulled disk: abnormal={condition.abnormal} {condition.message!r}")
    assert condition.abnormal
    assert "gone" in condition.message or "not attached" in condition.message, condition.message
    rack.node_unpublish(vol)
    rack.unstage(vol)
    rack.delete(vol)


def _refused(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_refuses_to_format_a_disk_holding_data_without_a_signature(rack: Rack) -> None:
    vol = rack.create("guest-not-blank")
    data = os.urandom(4096)
    with rack.disk_file(vol).open("r+b") as f:
        f.seek(512 * MIB)  # the middle: the edges still read as zeros
        f.write(data)
    with rack.disk_file(vol).open("r+b") as f:
        f.write(b"\x01" * 4096)  # no known signature, but not zeros
    rack.publish(vol)
    error = _refused(lambda: rack.stage(vol))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "not blank" in (error.details() or "")
    rack.unpublish(vol)
    with rack.disk_file(vol).open("rb") as f:
        assert f.read(4096) == b"\x01" * 4096
        f.seek(512 * MIB)
        assert f.read(4096) == data
    rack.delete(vol)


def test_refuses_to_reformat_another_filesystem(rack: Rack) -> None:
    if shutil.which("mkfs.xfs") is None:
        skips.skip("mkfs.xfs is not installed")
    vol = rack.create("guest-other-fs")
    subprocess.run(["mkfs.xfs", "-q", "-f", str(rack.disk_file(vol))], check=True)
    rack.publish(vol)
    error = _refused(lambda: rack.stage(vol, "ext4"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "xfs" in (error.details() or "")
    rack.unpublish(vol)
    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", str(rack.disk_file(vol))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.stdout.strip() == "xfs"
    rack.delete(vol)


def test_refuses_to_publish_a_disk_never_attached_or_staged(rack: Rack) -> None:
    vol = rack.create("guest-never-attached")
    staging, target = rack.paths(vol)
    error = _refused(
        lambda: rack.node_stub.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=vol,
                staging_target_path=staging,
                target_path=target,
                volume_capability=_mount_cap(),
            ),
            timeout=RPC_TIMEOUT,
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    rack.delete(vol)


@pytest.mark.sanity
@pytest.mark.parametrize("access", ["mount", "block"])
def test_csi_sanity_against_the_node_in_the_guest(
    rack: Rack, access: str, sanity_report: object
) -> None:
    binary = os.environ.get("CSI_SANITY") or shutil.which("csi-sanity")
    if binary is None:
        skips.skip("csi-sanity is not installed (`make tools` installs it)")
    workdir = rack.guest_dir / f"sanity-{access}"  # shared with the guest: its paths exist there
    workdir.mkdir()
    _assert_guest_serving(rack)  # a guest that died earlier would hang csi-sanity's dial
    started = time.monotonic()
    result = harness.run_csi_sanity(
        binary,
        workdir,
        rack.node_endpoint,
        controller_endpoint=rack.controller.endpoint,
        args=[
            f"--csi.testvolumesize={GIB}",
            f"--csi.testvolumeexpandsize={2 * GIB}",
            "--csi.testnodevolumeattachlimit",
            f"--csi.testvolumeaccesstype={access}",
        ],
        timeout=1800,
    )
    _phase(f"csi-sanity {access} mode in the guest", started)
    assert callable(sanity_report)
    sanity_report(f"csi-sanity in the guest, {access} mode: {result.summary()}")
    assert result.failed == 0, f"{result.failures}\n{result.output[-8000:]}{_guest_report(rack)}"
    assert result.passed > 0, result.output[-4000:] + _guest_report(rack)
    assert result.exit_code == 0, result.output[-8000:] + _guest_report(rack)
    assert harness.unexplained_skips(result.skips) == [], "skips nobody explained"
