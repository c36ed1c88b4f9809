"""``csi-oxide demo``: the simulator and the driver, one volume through its whole life.

It plays the part of Kubernetes (the CO): it starts ``csi-oxide sim`` (hot-plug on, loop backing, so
attached disks are real block devices here) and ``csi-oxide serve``, then calls the CSI RPCs in the
order kubelet and the sidecars would, printing each step and its time. At the end it shows the
refusal a user of today's racks gets (hot-plug off), removes everything, and exits non-zero if any
step failed. Without root (no loop devices, no mount) it walks the controller's side of the same
lifecycle on the simulator's memory backing: no block devices, no data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.oxide.types import GIB
from csi_oxide_lab import harness

T = TypeVar("T")
Mode = csi.VolumeCapability.AccessMode


class DemoFailedError(RuntimeError):
    """A step of the demo did not do what it should."""


class Steps:
    """Prints numbered steps with their duration."""

    def __init__(self) -> None:
        self.count = 0
        self.started = time.monotonic()

    async def run(self, title: str, action: Awaitable[T]) -> T:
        """Run one step, print its outcome and time."""
        self.count += 1
        began = time.monotonic()
        try:
            result = await action
        except Exception as exc:
            print(f"{self.count:2}. {title:<58} FAILED ({exc})", flush=True)
            raise
        print(f"{self.count:2}. {title:<58} ok  {time.monotonic() - began:6.2f}s", flush=True)
        return result

    def note(self, text: str) -> None:
        """An indented detail line under the last step."""
        print(f"      {text}", flush=True)


def _mount_cap(fs: str = "ext4") -> csi.VolumeCapability:
    return csi.VolumeCapability(
        mount=csi.VolumeCapability.MountVolume(fs_type=fs),
        access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER),
    )


class Demo:
    """The CO's side of the conversation with one driver."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        workdir: Path,
        node_channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.controller = csi_grpc.ControllerStub(channel)
        self.node = csi_grpc.NodeStub(node_channel if node_channel is not None else channel)
        self.node_id = node_id
        self.workdir = workdir

    def paths(self, volume_id: str) -> tuple[str, str]:
        """Staging (created by the CO) and target (created by the plugin) paths for a volume."""
        base = self.workdir / "kubelet" / volume_id
        staging = base / "globalmount"
        staging.mkdir(parents=True, exist_ok=True)
        return str(staging), str(base / "pod-mount")

    async def attach(self, volume_id: str) -> None:
        """ControllerPublishVolume to this node."""
        await self.controller.ControllerPublishVolume(
            csi.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.node_id, volume_capability=_mount_cap()
            )
        )

    async def detach(self, volume_id: str) -> None:
        """ControllerUnpublishVolume from this node."""
        await self.controller.ControllerUnpublishVolume(
            csi.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=self.node_id)
        )

    async def attach_and_mount(self, volume_id: str) -> str:
        """ControllerPublish, NodeStage, NodePublish; the pod's mount path."""
        cap = _mount_cap()
        await self.attach(volume_id)
        staging, target = self.paths(volume_id)
        await self.node.NodeStageVolume(
            csi.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, volume_capability=cap
            )
        )
        await self.node.NodePublishVolume(
            csi.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=staging,
                target_path=target,
                volume_capability=cap,
            )
        )
        return target

    async def unmount_and_detach(self, volume_id: str) -> None:
        """NodeUnpublish, NodeUnstage, ControllerUnpublish."""
        staging, target = self.paths(volume_id)
        await self.node.NodeUnpublishVolume(
            csi.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        )
        await self.node.NodeUnstageVolume(
            csi.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)
        )
        await self.detach(volume_id)

    async def create(self, name: str, size: int, snapshot_id: str = "") -> csi.Volume:
        """CreateVolume, optionally from a snapshot."""
        source = None
        if snapshot_id:
            source = csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
            )
        answer = await self.controller.CreateVolume(
            csi.CreateVolumeRequest(
                name=name,
                capacity_range=csi.CapacityRange(required_bytes=size),
                volume_capabilities=[_mount_cap()],
                volume_content_source=source,
            )
        )
        return answer.volume

    async def snapshot(self, name: str, volume_id: str) -> str:
        """CreateSnapshot of the volume; the snapshot's ID."""
        answer = await self.controller.CreateSnapshot(
            csi.CreateSnapshotRequest(name=name, source_volume_id=volume_id)
        )
        return answer.snapshot.snapshot_id

    async def expand(self, volume_id: str, size: int) -> int:
        """ControllerExpandVolume (the volume detached: Oxide expands offline); the new size."""
        answer = await self.controller.ControllerExpandVolume(
            csi.ControllerExpandVolumeRequest(
                volume_id=volume_id,
                capacity_range=csi.CapacityRange(required_bytes=size),
                volume_capability=_mount_cap(),
            )
        )
        return answer.capacity_bytes

    async def stats(self, volume_id: str, path: str) -> int:
        """Total bytes NodeGetVolumeStats reports."""
        answer = await self.node.NodeGetVolumeStats(
            csi.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)
        )
        return next(u.total for u in answer.usage if u.unit == csi.VolumeUsage.BYTES)


def _write_data(mount: str) -> str:
    data = os.urandom(4 * 1024 * 1024)
    path = Path(mount) / "data.bin"
    path.write_bytes(data)
    with path.open("rb+") as f:
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _read_digest(mount: str) -> str:
    return hashlib.sha256((Path(mount) / "data.bin").read_bytes()).hexdigest()


async def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailedError(message)


async def lifecycle(demo: Demo, steps: Steps) -> None:
    """The main story: one volume from creation to deletion."""
    vol = await steps.run("CreateVolume 'demo-data' (1 GiB, ext4)", demo.create("demo-data", GIB))
    vid = vol.volume_id
    steps.note(f"volume ID (= Oxide disk name = NVMe serial): {vid}")
    mount = await steps.run(
        "attach + stage + publish (mkfs only because blank)", demo.attach_and_mount(vid)
    )
    digest = await steps.run(
        "write 4 MiB of random data in the pod's mount", asyncio.to_thread(_write_data, mount)
    )
    steps.note(f"sha256 {digest}")
    snap_id = await steps.run("CreateSnapshot 'demo-snap'", demo.snapshot("demo-snap", vid))
    before = await demo.stats(vid, mount)
    await steps.run("unpublish + unstage + detach", demo.unmount_and_detach(vid))
    await steps.run(
        "ControllerExpandVolume to 2 GiB (offline: re-created from a snapshot)",
        demo.expand(vid, 2 * GIB),
    )
    mount = await steps.run("re-attach + stage + publish", demo.attach_and_mount(vid))
    after = await demo.stats(vid, mount)
    steps.note(f"filesystem size {before} -> {after} bytes")
    await _check(after > before, "the filesystem did not grow")
    await steps.run(
        "data intact after re-attach", _check(_read_digest(mount) == digest, "data changed")
    )
    await steps.run("unpublish + unstage + detach", demo.unmount_and_detach(vid))
    restored = await steps.run(
        "CreateVolume 'demo-restore' from the snapshot (2 GiB)",
        demo.create("demo-restore", 2 * GIB, snap_id),
    )
    rid = restored.volume_id
    rmount = await steps.run(
        "attach + stage + publish the restored volume", demo.attach_and_mount(rid)
    )
    await steps.run(
        "restored data intact", _check(_read_digest(rmount) == digest, "restored data differs")
    )
    await steps.run(
        "unpublish + unstage + detach the restored volume", demo.unmount_and_detach(rid)
    )
    await _delete(demo, steps, snap_id, (vid, rid))


async def controller_lifecycle(demo: Demo, steps: Steps) -> None:
    """The same story as ``lifecycle`` seen from the controller only (no node, no data)."""
    vol = await steps.run("CreateVolume 'demo-data' (1 GiB)", demo.create("demo-data", GIB))
    vid = vol.volume_id
    steps.note(f"volume ID (= Oxide disk name = NVMe serial): {vid}")
    await steps.run("ControllerPublishVolume (attach to this node)", demo.attach(vid))
    snap_id = await steps.run("CreateSnapshot 'demo-snap'", demo.snapshot("demo-snap", vid))
    await steps.run("ControllerUnpublishVolume (detach)", demo.detach(vid))
    size = await steps.run(
        "ControllerExpandVolume to 2 GiB (offline: re-created)", demo.expand(vid, 2 * GIB)
    )
    steps.note(f"capacity {GIB} -> {size} bytes; the node grows the filesystem at its next stage")
    await _check(size == 2 * GIB, f"expanded to {size} bytes, not {2 * GIB}")
    restored = await steps.run(
        "CreateVolume 'demo-restore' from the snapshot (2 GiB)",
        demo.create("demo-restore", 2 * GIB, snap_id),
    )
    rid = restored.volume_id
    await steps.run("ControllerPublishVolume the restored volume", demo.attach(rid))
    await steps.run("ControllerUnpublishVolume the restored volume", demo.detach(rid))
    await _delete(demo, steps, snap_id, (vid, rid))


async def _controller_only(workdir: Path, steps: Steps) -> None:
    """Without root: the controller's lifecycle against a memory-backed simulator."""
    print(
        "not root (or no loop devices): the node's part (mkfs, mount, data) needs root; showing "
        "the controller's part of the lifecycle on the simulator's memory backing"
    )
    sim = harness.start_sim(workdir, "--hotplug")
    with harness.stopping(sim.proc):
        print(f"simulated rack at {sim.env['OXIDE_HOST']} (hot-plug on, memory backing)")
        driver = harness.start_driver(workdir, sim.env, mode="controller")
        with harness.stopping(driver.proc):
            async with grpc.aio.insecure_channel(driver.endpoint) as channel:
                demo = Demo(channel, sim.env["CSI_OXIDE_NODE_ID"], workdir)
                await controller_lifecycle(demo, steps)


async def _delete(demo: Demo, steps: Steps, snapshot_id: str, volume_ids: Sequence[str]) -> None:
    """DeleteSnapshot, then DeleteVolume of each volume: the end of every story."""
    await steps.run(
        "DeleteSnapshot",
        demo.controller.DeleteSnapshot(csi.DeleteSnapshotRequest(snapshot_id=snapshot_id)),
    )
    for v in volume_ids:
        await steps.run(
            f"DeleteVolume {v}", demo.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=v))
        )


async def hotplug_off(workdir: Path, steps: Steps) -> None:
    """What a user of today's racks sees: attach to a running instance is refused."""
    sim = harness.start_sim(workdir)
    with harness.stopping(sim.proc):
        driver = harness.start_driver(workdir, sim.env, mode="controller", name="cold")
        with harness.stopping(driver.proc):
            async with grpc.aio.insecure_channel(driver.endpoint) as channel:
                demo = Demo(channel, sim.env["CSI_OXIDE_NODE_ID"], workdir)
                vol = await steps.run("[hot-plug off] CreateVolume", demo.create("today", GIB))
                try:
                    await demo.controller.ControllerPublishVolume(
                        csi.ControllerPublishVolumeRequest(
                            volume_id=vol.volume_id,
                            node_id=demo.node_id,
                            volume_capability=_mount_cap(),
                        )
                    )
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    print(
                        f"{steps.count + 1:2}. [hot-plug off] ControllerPublishVolume is refused:",
                        flush=True,
                    )
                    steps.count += 1
                    steps.note(f"{code.name}: {exc.details()}")
                    if code != grpc.StatusCode.FAILED_PRECONDITION:
                        raise DemoFailedError(
                            f"expected FAILED_PRECONDITION, got {code.name}"
                        ) from None
                else:
                    raise DemoFailedError("publish to a running instance was not refused")
                await steps.run(
                    "[hot-plug off] DeleteVolume",
                    demo.controller.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol.volume_id)),
                )


async def guest_lifecycle(workdir: Path, steps: Steps) -> None:
    """The lifecycle with the node plugin in a qemu guest: attach is a real NVMe hot-plug."""
    from csi_oxide_lab.guest.vm import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise DemoFailedError(f"--guest cannot run here: {reason}")
    print("booting the simulated rack's local instance as a qemu guest (TCG: a minute or two)")
    sim = await steps.run(
        "boot the guest (SMBIOS UUID = instance ID, boot NVMe disk)",
        asyncio.to_thread(
            harness.start_sim, workdir, "--hotplug", "--backing", "guest", timeout=600
        ),
    )
    with harness.stopping(sim.proc):
        guest_dir = Path(sim.env["CSI_OXIDE_GUEST_DIR"])
        driver = harness.start_driver(workdir, sim.env, mode="controller", name="controller")
        with harness.stopping(driver.proc):
            async with (
                grpc.aio.insecure_channel(driver.endpoint) as channel,
                grpc.aio.insecure_channel(sim.env["CSI_OXIDE_GUEST_NODE_ENDPOINT"]) as node,
            ):
                demo = Demo(channel, sim.env["CSI_OXIDE_NODE_ID"], guest_dir / "co", node)
                await _guest_node(demo, steps)
                devices = guest_dir.parent / "devices"
                vid, snap_id, fs_uuid = await _guest_grow(demo, steps, devices)
                rid = await _guest_restore(demo, steps, devices, snap_id, fs_uuid)
                await _delete(demo, steps, snap_id, (vid, rid))
    gone = not await asyncio.to_thread(guest_dir.exists)
    await steps.run("guest shut down, its files removed", _check(gone, f"{guest_dir} left"))


async def _guest_node(demo: Demo, steps: Steps) -> None:
    """The plugin in the guest knows its instance from SMBIOS, and its attach limit."""
    info = await steps.run(
        "NodeGetInfo from the plugin in the guest", demo.node.NodeGetInfo(csi.NodeGetInfoRequest())
    )
    steps.note(f"node ID {info.node_id} (read from SMBIOS; the rack's instance ID)")
    steps.note(f"attach limit {info.max_volumes_per_node} (12 less the boot disk)")
    await _check(info.node_id == demo.node_id, "the node ID is not the instance ID")


async def _guest_grow(demo: Demo, steps: Steps, devices: Path) -> tuple[str, str, str]:
    """A volume hot-plugged, formatted, snapshotted, expanded offline and grown in the guest;
    its ID, its snapshot's ID and its filesystem's UUID."""
    vol = await steps.run("CreateVolume 'demo-data' (1 GiB)", demo.create("demo-data", GIB))
    vid = vol.volume_id
    steps.note(f"NVMe serial in the guest: {vid}")
    mount = await steps.run(
        "hot-plug (QMP device_add) + stage (mkfs) + publish", demo.attach_and_mount(vid)
    )
    before = await demo.stats(vid, mount)
    snap_id = await steps.run("CreateSnapshot 'demo-snap'", demo.snapshot("demo-snap", vid))
    await steps.run("unpublish + unstage + hot-unplug (device_del)", demo.unmount_and_detach(vid))
    fstype = await asyncio.to_thread(harness.blkid_value, devices / vid)
    fs_uuid = await asyncio.to_thread(harness.blkid_value, devices / vid, "UUID")
    await steps.run("the disk's file holds the guest's ext4", _check(fstype == "ext4", fstype))
    await steps.run("ControllerExpandVolume to 2 GiB (offline)", demo.expand(vid, 2 * GIB))
    mount = await steps.run("hot-plug again + stage (grow) + publish", demo.attach_and_mount(vid))
    after = await demo.stats(vid, mount)
    steps.note(f"filesystem size {before} -> {after} bytes")
    await _check(after > before, "the filesystem did not grow")
    await steps.run("unpublish + unstage + hot-unplug", demo.unmount_and_detach(vid))
    return vid, snap_id, fs_uuid


async def _guest_restore(
    demo: Demo, steps: Steps, devices: Path, snap_id: str, fs_uuid: str
) -> str:
    """A volume restored from the snapshot holds its filesystem (not re-formatted); its ID."""
    restored = await steps.run(
        "CreateVolume 'demo-restore' from the snapshot", demo.create("demo-restore", GIB, snap_id)
    )
    rid = restored.volume_id
    await steps.run(
        "hot-plug + stage (no mkfs: it has a filesystem) + publish the restored one",
        demo.attach_and_mount(rid),
    )
    await steps.run("unpublish + unstage + hot-unplug", demo.unmount_and_detach(rid))
    restored_uuid = await asyncio.to_thread(harness.blkid_value, devices / rid, "UUID")
    steps.note(f"filesystem UUID {fs_uuid} -> {restored_uuid}")
    await steps.run(
        "the restored disk holds the snapshot's filesystem (not re-formatted)",
        _check(bool(fs_uuid) and restored_uuid == fs_uuid, "the UUID changed"),
    )
    return rid


def _can_use_loop_devices() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists()


async def run_demo(workdir: Path, *, guest: bool = False) -> None:
    """The whole demo in ``workdir`` (``guest``: the node plugin in a qemu guest)."""
    steps = Steps()
    if guest:
        await guest_lifecycle(workdir, steps)
    elif _can_use_loop_devices():
        state = workdir / "rack"
        sim = harness.start_sim(
            workdir, "--hotplug", "--backing", "loop", "--state-dir", str(state)
        )
        with harness.stopping(sim.proc):
            print(f"simulated rack at {sim.env['OXIDE_HOST']} (hot-plug on, loop devices)")
            driver = harness.start_driver(workdir, sim.env, mode="all")
            with harness.stopping(driver.proc):
                async with grpc.aio.insecure_channel(driver.endpoint) as channel:
                    demo = Demo(channel, sim.env["CSI_OXIDE_NODE_ID"], workdir)
                    await lifecycle(demo, steps)
    else:
        await _controller_only(workdir, steps)
    await hotplug_off(workdir, steps)
    print(f"demo finished: {steps.count} steps in {time.monotonic() - steps.started:.1f}s")


def main(*, guest: bool = False) -> int:
    """Entry point of ``csi-oxide demo`` (``--guest``: the node plugin in a qemu guest)."""
    workdir = Path(tempfile.mkdtemp(prefix="csi-oxide-demo-"))
    try:
        asyncio.run(run_demo(workdir, guest=guest))
    except (DemoFailedError, grpc.aio.AioRpcError, harness.HarnessError) as exc:
        print(f"demo FAILED: {exc}")
        for log_file in sorted(workdir.glob("*.log")):
            print(f"--- {log_file.name} (last lines)")
            print("\n".join(log_file.read_text(errors="replace").splitlines()[-30:]))
        return 1
    finally:
        left = harness.unmount_below(workdir)
        if left:
            print(f"cleaned up {len(left)} mount(s) left by the failed step")
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
