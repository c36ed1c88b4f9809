"""The node's test world: one vocabulary, two flavours.

- ``FakeWorld``: ``NodeOps`` over the fakes of the node's seams (``tests/node/fakes.py``: devices,
  mount table, filesystems, views; the record store is the real one, in a temporary folder). No
  root.
- ``LoopWorld``: ``NodeOps`` over the real seams (udev finds the loop devices of a ``Rack`` whose
  backing files, named after the volumes, play the NVMe serials; util-linux mounts, mkfs, loop
  views). Root: mark its tests ``root``.

Both: the kubelet's paths (``staging(name)`` at ``<root>/kubelet/<name>/globalmount``,
``target(name)`` beside it, its folder made), ``stage`` and ``publish`` as the kubelet calls them
(``publish_context`` naming ``DISK`` as the disk behind the volume), ``unstage``,
``unpublish``, ``mounted`` and ``restart`` (a new plugin process over the same records; ``boot``:
after a reboot with that boot ID). ``stage_at`` and ``publish_at`` are the same calls at paths a
test chooses. The fixtures ``fake_world``, ``loop_world`` and ``rack`` are in
``tests/node/conftest.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from csi_oxide.contract.publish_context import Birth, Origin
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.node import mountinfo
from csi_oxide.node.devices import UdevDeviceFinder
from csi_oxide.node.fs import Filesystems, LinuxFilesystems, Signature
from csi_oxide.node.mount import LinuxMounter
from csi_oxide.node.ops import NodeOps
from csi_oxide.node.state import FileRecordStore
from csi_oxide.node.views import LoopViews
from tests.loops import Loops
from tests.node.fakes import (
    Disk,
    FakeDevices,
    FakeFilesystems,
    FakeMounter,
    FakeViews,
    fake_node_ops,
)
from tests.units import GIB

VOLUME = "csi-0123456789abcdef"
TWIN = VOLUME + "-twin"  # shares the first 20 characters: the same NVMe serial
OTHER = "csi-fedcba9876543210"
DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"  # the Oxide disk behind VOLUME (publish_context)
NEW_DISK = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"  # another disk given VOLUME's name later


class PublishContext(TypedDict, total=False):
    """What ``publish_context`` says of a volume, as ``NodeWorld.stage`` takes it (keywords)."""

    origin: Origin | None
    disk_id: str | None
    read_only_disk: bool


def sh(*argv: str) -> str:
    """Run a command (it must succeed); its output."""
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def digest(path: str | Path) -> str:
    """The SHA-256 of a file or device."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def kubelet_paths(root: Path, name: str) -> tuple[str, str]:
    """The staging path (made) and the publish target (its folder made) of ``name``."""
    staging = root / "kubelet" / name / "globalmount"
    staging.mkdir(parents=True, exist_ok=True)
    return str(staging), str(root / "kubelet" / name / "pod")


async def stage_at(
    ops: NodeOps,
    volume: str,
    staging: str,
    *,
    fstype: str = "ext4",
    block: bool = False,
    mount_flags: Sequence[str] = (),
    birth: Birth | None = None,
) -> None:
    """NodeStageVolume as the kubelet sends it (a mount volume of ``fstype`` unless ``block``)."""
    await ops.stage(
        volume,
        staging,
        fstype=fstype,
        mount_flags=list(mount_flags),
        block=block,
        **({} if birth is None else {"birth": birth}),
    )


async def publish_at(
    ops: NodeOps,
    volume: str,
    staging: str,
    target: str,
    *,
    block: bool = False,
    read_only: bool = False,
    single_writer: bool = False,
    mount_flags: Sequence[str] = (),
) -> None:
    """NodePublishVolume as the kubelet sends it (``read_only``: CSI's readonly flag)."""
    await ops.publish(
        volume,
        staging,
        target,
        block=block,
        read_only=read_only,
        mount_flags=list(mount_flags),
        single_writer=single_writer,
    )


class NodeWorld:
    """What both flavours share: the paths by name and the kubelet's calls."""

    root: Path
    ops: NodeOps
    store: FileRecordStore

    def staging(self, name: str = "a") -> str:
        return kubelet_paths(self.root, name)[0]

    def target(self, name: str = "a") -> str:
        return kubelet_paths(self.root, name)[1]

    async def stage(
        self,
        volume: str = VOLUME,
        name: str = "a",
        *,
        fstype: str = "ext4",
        block: bool = False,
        mount_flags: Sequence[str] = (),
        origin: Origin | None = None,
        disk_id: str | None = DISK,
        read_only_disk: bool = False,
    ) -> str:
        """Stage ``volume`` at ``staging(name)``, ``publish_context`` saying the disk behind it
        is ``disk_id``, born ``origin`` (and an Oxide read-only disk if ``read_only_disk``); the
        staging path."""
        staging = self.staging(name)
        birth = Birth(origin, disk_id, read_only=read_only_disk)
        await stage_at(
            self.ops,
            volume,
            staging,
            fstype=fstype,
            block=block,
            mount_flags=mount_flags,
            birth=birth,
        )
        return staging

    async def publish(
        self,
        volume: str = VOLUME,
        name: str = "a",
        *,
        block: bool = False,
        read_only: bool = False,
        single_writer: bool = False,
        mount_flags: Sequence[str] = (),
        staged_as: str | None = None,
    ) -> str:
        """Publish ``volume`` from ``staging(staged_as or name)`` at ``target(name)``; the
        target."""
        target = self.target(name)
        await publish_at(
            self.ops,
            volume,
            self.staging(staged_as or name),
            target,
            block=block,
            read_only=read_only,
            single_writer=single_writer,
            mount_flags=mount_flags,
        )
        return target

    async def unstage(self, volume: str = VOLUME, name: str = "a") -> None:
        await self.ops.unstage(volume, self.staging(name))

    async def unpublish(self, volume: str = VOLUME, name: str = "a") -> None:
        await self.ops.unpublish(volume, self.target(name))

    def mounted(self, path: str | Path) -> bool:
        """Whether anything is mounted at ``path`` (os.path.ismount misses binds within a
        filesystem)."""
        raise NotImplementedError


class FakeWorld(NodeWorld):
    """``NodeOps`` over fakes, with the records in ``root/state``; ``fs`` (and
    ``online_ext4_growth``) may be swapped before a ``restart``."""

    def __init__(self, root: Path, *, boot: str = "boot-1") -> None:
        self.root = root
        self.boot = boot
        self.online_ext4_growth = True
        self.devices = FakeDevices()
        self.mounter = FakeMounter(self.devices)
        self.fs = FakeFilesystems()
        self.views = FakeViews()
        self.store = FileRecordStore(root / "state", boot=boot)
        self.ops = self._ops()

    def _ops(self) -> NodeOps:
        return fake_node_ops(
            self.devices,
            self.fs,
            self.store,
            mounter=self.mounter,
            views=self.views,
            online_ext4_growth=self.online_ext4_growth,
        )

    def restart(self, boot: str | None = None) -> None:
        """A new plugin process (``boot``: after a reboot with that boot ID)."""
        self.store.close()
        self.boot = boot or self.boot
        self.store = FileRecordStore(self.root / "state", boot=self.boot)
        self.ops = self._ops()

    def reboot(self) -> None:
        """A node reboot: every mount is gone, the records stay, the boot ID changes."""
        self.mounter.table[2:] = []
        self.restart(boot=f"{self.boot}-rebooted")

    def holding(self, fstype: str, volume: str = VOLUME) -> str:
        """Attach ``volume``'s device, holding a ``fstype`` filesystem (or nothing: zeros); its
        path."""
        device = self.devices.attach(volume)
        signature = Signature(fstype=fstype) if fstype else Signature()
        self.fs.disks[device.path] = Disk(signature=signature, zeros=not fstype)
        return device.path

    def mounted(self, path: str | Path) -> bool:
        real = os.path.realpath(path)
        return any(m.mount_point == real for m in self.mounter.table)

    def top(self, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The per-mount and the superblock options of the top mount at ``path``."""
        real = os.path.realpath(path)
        found = [m for m in self.mounter.table if m.mount_point == real][-1]
        return found.options, found.super_options


@dataclass
class Rack:
    """Backing files in ``devices`` and the loop devices over them (detached at the end): a file
    named after a volume, attached, is that volume's disk to the node's finder."""

    root: Path
    devices: Path
    loops: Loops = field(default_factory=Loops)

    def disk(self, name: str, size: int = GIB, directory: Path | None = None) -> Path:
        path = (directory or self.devices) / name
        with path.open("wb") as f:
            f.truncate(size)
        return path

    def attach(self, backing: Path, *options: str) -> str:
        return self.loops.attach(backing, *options)

    def grow(self, backing: Path, dev: str, size: int) -> None:
        with backing.open("r+b") as f:
            f.truncate(size)
        sh("losetup", "-c", dev)

    def paths(self, name: str = "vol") -> tuple[str, str]:
        """The kubelet's staging path and target for ``name`` (as ``NodeWorld``'s)."""
        return kubelet_paths(self.root, name)


class LoopWorld(NodeWorld):
    """``NodeOps`` over the real seams and a rack of loop devices, with the records in
    ``rack.root/state``; ``filesystems`` may be swapped before a ``restart``."""

    def __init__(
        self,
        rack: Rack,
        *,
        device_timeout: float = 3.0,
        online_ext4_growth: bool | None = None,
    ) -> None:
        self.rack = rack
        self.root = rack.root
        self.state = rack.root / "state"
        self.device_timeout = device_timeout
        self.online_ext4_growth = online_ext4_growth
        self.filesystems: Filesystems = LinuxFilesystems()
        self.store = FileRecordStore(self.state)
        self.ops = self._ops()

    def _ops(self) -> NodeOps:
        devices = UdevDeviceFinder(sim_device_dir=self.rack.devices, timeout=self.device_timeout)
        return NodeOps(
            devices,
            LinuxMounter(),
            self.filesystems,
            self.store,
            views=LoopViews(self.state / "views"),
            inflight=InFlight(),
            online_ext4_growth=self.online_ext4_growth,
        )

    def restart(self, boot: str | None = None) -> None:
        """A new plugin process (``boot``: after a reboot with that boot ID)."""
        self.store.close()
        self.store = FileRecordStore(self.state, boot=boot)
        self.ops = self._ops()

    def mounted(self, path: str | Path) -> bool:
        real = os.path.realpath(path)
        return any(m.mount_point == real for m in mountinfo.read())
