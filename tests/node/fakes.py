"""Fakes for the node's seams, so its decisions (format or refuse, unmount or refuse) are tested
without root. They stand in for what needs root or real devices: udev discovery, the kernel's
mount table, blkid/mkfs and device reads. The record store stays real (files in a temporary
directory need no root).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from csi_oxide.contract.volumes import serial_of
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import FailedPreconditionError, InternalError, NotFoundError
from csi_oxide.node.devices import BlockDevice, serial_text
from csi_oxide.node.fs import Signature
from csi_oxide.node.mountinfo import Mount
from csi_oxide.node.ops import NodeOps
from csi_oxide.node.state import RecordStore

DEV_MM = "0:6"  # the devtmpfs at /dev


class FakeDevices:
    """Attached disks by serial; ``detach`` makes one vanish as an Oxide detach would."""

    def __init__(self) -> None:
        self.attached: dict[bytes, BlockDevice] = {}
        self._numbers = itertools.count(1)

    def attach(self, volume_id: str) -> BlockDevice:
        n = next(self._numbers)
        dev = BlockDevice(f"/dev/nvme{n}n1", serial_of(volume_id), f"/sys/nvme{n}n1", f"259:{n}")
        self.attached[dev.serial] = dev
        return dev

    def detach(self, volume_id: str) -> None:
        del self.attached[serial_of(volume_id)]

    async def find(self, volume_id: str) -> BlockDevice:
        dev = self.attached.get(serial_of(volume_id))
        if dev is None:
            raise NotFoundError(f"no device with serial {serial_text(volume_id)!r}")
        return dev

    async def find_now(self, volume_id: str) -> BlockDevice | None:
        return self.attached.get(serial_of(volume_id))

    async def verify(self, device: BlockDevice, volume_id: str) -> None:
        if self.attached.get(serial_of(volume_id)) != device:
            raise FailedPreconditionError(f"{device.path} is no longer {volume_id}")

    async def max_volumes(self) -> int:
        return 12


@dataclass
class FakeMounter:
    """A mount table: the root filesystem, /dev, and whatever tests and the node mount."""

    devices: FakeDevices
    table: list[Mount] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    before_mount: Callable[[str], None] | None = None  # runs when a mount is about to happen
    mount_options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # by mount point
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def __post_init__(self) -> None:
        self.table += [
            self.entry("8:1", "/", "/", "ext4", "/dev/sda1"),
            self.entry(DEV_MM, "/", "/dev", "devtmpfs", "devtmpfs"),
        ]

    def entry(
        self, mm: str, root: str, point: str, fstype: str, source: str, ro: bool = False
    ) -> Mount:
        opts = ("ro" if ro else "rw", "relatime")
        return Mount(next(self._ids), 1, mm, root, point, opts, fstype, source, ("rw",))

    def add(self, mm: str, root: str, point: str, fstype: str, source: str) -> Mount:
        """A mount made by someone else (the host, another plugin, an attacker)."""
        m = self.entry(mm, root, os.path.realpath(point), fstype, source)
        self.table.append(m)
        return m

    def _top(self, path: str) -> Mount | None:
        real = os.path.realpath(path)
        found = [m for m in self.table if m.mount_point == real]
        return found[-1] if found else None

    async def mount(self, source: str, target: str, fstype: str, options: Sequence[str]) -> None:
        if self.before_mount:
            self.before_mount(target)
        dev = next(d for d in self.devices.attached.values() if d.path == source)
        self.calls.append(("mount", target))
        self.mount_options[os.path.realpath(target)] = tuple(options)
        m = self.entry(dev.major_minor, "/", target, fstype, source, ro="ro" in options)
        supers = ("ro", "norecovery") if {"noload", "norecovery"} & set(options) else ("rw",)
        self.table.append(replace(m, super_options=supers))

    async def bind(
        self, source: str, target: str, *, read_only: bool, options: Sequence[str] = ()
    ) -> None:
        if self.before_mount:
            self.before_mount(target)
        self.calls.append(("bind", target))
        top = self._top(source)
        if top is not None and top.mount_point == os.path.realpath(source):
            m = self.entry(top.major_minor, top.root, target, top.fstype, top.source, read_only)
        else:  # a device node, bound from /dev
            root = "/" + os.path.basename(source)
            m = self.entry(DEV_MM, root, target, "devtmpfs", "devtmpfs", read_only)
        self.table.append(m)

    async def make_read_only(self, target: str, options: Sequence[str] = ()) -> None:
        top = self._top(target)
        assert top is not None
        self.table[self.table.index(top)] = replace(top, options=("ro", "relatime"))

    async def unmount(self, target: str) -> None:
        top = self._top(target)
        if top is None:
            raise InternalError(f"umount: {target}: not mounted")
        self.calls.append(("unmount", target))
        self.table.remove(top)

    async def mounts_at(self, path: str) -> list[Mount]:
        real = os.path.realpath(path)
        return [m for m in self.table if m.mount_point == real]

    async def mounts(self) -> list[Mount]:
        return list(self.table)

    async def mounts_of(self, major_minor: str, device_path: str) -> list[Mount]:
        node = "/" + os.path.basename(device_path)
        return [
            m
            for m in self.table
            if m.major_minor == major_minor or (m.fstype == "devtmpfs" and m.root == node)
        ]


@dataclass
class FakeViews:
    """Read-only views by anchor: each one a loop device name, as ``LoopViews`` would attach."""

    directory: str = "/var/lib/csi-oxide/node/views"
    views: dict[str, str] = field(default_factory=dict)  # anchor -> /dev/loopN
    die_after_open: bool = False  # the plugin dies once the view exists, before recording it
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def anchor(self, volume_id: str, target: str) -> str:
        return f"{self.directory}/{volume_id}.{abs(hash(target)):016x}"

    async def open(self, anchor: str, device: BlockDevice) -> str:
        loop = self.views.setdefault(anchor, f"/dev/loop{next(self._numbers)}")
        if self.die_after_open:
            self.die_after_open = False
            raise OSError(f"killed after attaching {loop}")
        return loop

    async def close(self, anchor: str) -> None:
        self.views.pop(anchor, None)


@dataclass
class Disk:
    """What a fake device holds."""

    signature: Signature = field(default_factory=Signature)
    zeros: bool = True
    held: bool = False


class MkfsInterruptedError(Exception):
    """The fake mkfs 'died' half way (what a kill -9 of the plugin does to a real one)."""


@dataclass
class FakeFilesystems:
    """Device contents by path; mkfs writes the requested signature (or dies half way)."""

    disks: dict[str, Disk] = field(default_factory=dict)
    formatted: list[tuple[str, str]] = field(default_factory=list)
    interrupt_next_mkfs: bool = False
    # A zero check that answers only once this event is set (a slow, large disk); how many zero
    # checks are reading right now, and how many answered.
    zero_check_gate: asyncio.Event | None = None
    zero_checks_running: int = 0
    zero_checks_answered: int = 0
    # A mkfs that finishes only once this event is set; how many run now, and at most at once.
    mkfs_gate: asyncio.Event | None = None
    mkfs_running: int = 0
    mkfs_peak: int = 0

    def disk(self, path: str) -> Disk:
        return self.disks.setdefault(path, Disk())

    async def probe(self, device: str) -> Signature:
        return self.disk(device).signature

    async def reads_as_zeros(self, device: str) -> bool:
        self.zero_checks_running += 1
        try:
            if self.zero_check_gate is not None:
                await self.zero_check_gate.wait()
        finally:
            self.zero_checks_running -= 1
        self.zero_checks_answered += 1
        return self.disk(device).zeros

    async def held_exclusively(self, device: str) -> bool:
        return self.disk(device).held

    async def mkfs(self, device: str, fstype: str) -> None:
        disk = self.disk(device)
        disk.zeros = False  # mkfs writes metadata all over the device first...
        self.mkfs_running += 1
        self.mkfs_peak = max(self.mkfs_peak, self.mkfs_running)
        try:
            if self.mkfs_gate is not None:
                await self.mkfs_gate.wait()
        finally:
            self.mkfs_running -= 1
        if self.interrupt_next_mkfs:
            self.interrupt_next_mkfs = False
            raise MkfsInterruptedError(device)
        self.formatted.append((device, fstype))
        disk.signature = Signature(fstype=fstype)  # ...and its superblock last

    async def needs_growth(self, device: str, fstype: str) -> bool:
        return False

    async def grow_mounted(self, device: str, fstype: str, mount_point: str) -> None:
        raise AssertionError("nothing grows in these tests")

    async def grow_unmounted_ext4(self, device: str) -> None:
        raise AssertionError("nothing grows in these tests")

    async def device_size(self, device: str) -> int:
        return 1 << 30


def fake_node_ops(
    devices: FakeDevices,
    filesystems: FakeFilesystems,
    records: RecordStore,
    *,
    mounter: FakeMounter | None = None,
    views: FakeViews | None = None,
    online_ext4_growth: bool = True,
) -> NodeOps:
    """``NodeOps`` over the fakes (a mount table over ``devices`` unless ``mounter``), with a
    guard of its own and (unless told otherwise) online ext4 growth, as the node's tests use it
    (``tests/node/world.py``'s ``FakeWorld`` holds them all)."""
    return NodeOps(
        devices,
        mounter if mounter is not None else FakeMounter(devices),
        filesystems,
        records,
        views=views if views is not None else FakeViews(),
        inflight=InFlight(),
        online_ext4_growth=online_ext4_growth,
    )
