"""Finding the block device of an attached volume, by its NVMe serial, with pyudev.

An Oxide guest sees each attached disk as an NVMe namespace whose controller serial is the first
20 bytes of the disk name, and the volume ID is the disk name: that is the only identity the node
trusts. With a simulator device directory, a loop device whose backing file lies directly in that
directory stands in for a disk, its base name playing the serial.

When the device is not there yet, the finder listens to the kernel's uevents (no udevd needed;
attaching a loop device sends ``change``, an NVMe hot-plug ``add``) and re-scans sysfs, until a
deadline, or until the caller cancels the wait. pyudev and sysfs reads block (a device that stops
answering can hold a read), so they run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyudev

from csi_oxide.contract.oxide_rules import MAX_DISKS_PER_INSTANCE
from csi_oxide.contract.volumes import is_volume_serial, serial_of
from csi_oxide.errors import FailedPreconditionError, NotFoundError
from csi_oxide.node.threads import in_own_thread

POLL_SECONDS = 0.5


def serial_text(volume_id: str) -> str:
    """The serial of ``volume_id`` as text, for messages, keys and records (never ``b'...'``)."""
    return show_serial(serial_of(volume_id))


def show_serial(serial: bytes | None) -> str:
    """A serial read from a device, as text (undecodable bytes escaped); "none" when absent."""
    return "none" if serial is None else serial.decode(errors="backslashreplace")


def normalize_serial(raw: bytes) -> bytes:
    """A serial as read from sysfs, without the padding (NULs, spaces, newline)."""
    return raw.rstrip(b"\x00 \n\t")


@dataclass(frozen=True, slots=True)
class BlockDevice:
    """A whole-disk block device and the identity read from it."""

    path: str
    serial: bytes
    sys_path: str
    major_minor: str


class DeviceFinder(Protocol):
    """Finds the block device of an attached volume by the identity the platform gives it."""

    async def find(self, volume_id: str) -> BlockDevice:
        """The volume's device, waiting (bounded) for it to appear; NotFoundError at the end of
        the wait, FailedPreconditionError when several devices claim the volume."""
        ...

    async def find_now(self, volume_id: str) -> BlockDevice | None:
        """The volume's device if it is attached right now, else None (never waits)."""
        ...

    async def verify(self, device: BlockDevice, volume_id: str) -> None:
        """FailedPreconditionError unless ``device`` still carries the volume's identity; called
        immediately before anything writes to the device."""
        ...

    async def max_volumes(self) -> int:
        """How many volumes this node can take: 12 minus the disks that are not CSI volumes."""
        ...


class UdevDeviceFinder:
    """Finds attached volumes' devices; see the module docstring."""

    def __init__(self, *, sim_device_dir: Path | None = None, timeout: float = 60.0) -> None:
        self._sim_dir = sim_device_dir.resolve() if sim_device_dir else None
        self._timeout = timeout
        self._context = pyudev.Context()

    # ---- scanning (blocking) ----

    def scan(self) -> list[BlockDevice]:
        """Every whole disk that has an identity we understand."""
        found = []
        for dev in self._context.list_devices(subsystem="block", DEVTYPE="disk"):
            serial = self._serial(Path(dev.sys_path), dev.sys_name)
            if serial is not None and dev.device_node:
                found.append(BlockDevice(dev.device_node, serial, dev.sys_path, _major_minor(dev)))
        return found

    def _serial(self, sys_path: Path, name: str) -> bytes | None:
        if name.startswith("nvme"):
            return _read(sys_path / "device" / "serial")
        if name.startswith("loop") and self._sim_dir is not None:
            backing = _read(sys_path / "loop" / "backing_file")
            if not backing or backing.endswith(b" (deleted)"):
                return None
            file = Path(backing.decode(errors="replace"))
            if file.parent == self._sim_dir:
                return serial_of(file.name)
        return None

    def current_serial(self, device: BlockDevice) -> bytes | None:
        """The serial ``device`` has now (None when it is gone)."""
        name = Path(device.sys_path).name
        return self._serial(Path(device.sys_path), name)

    # ---- async API ----

    async def find_now(self, volume_id: str) -> BlockDevice | None:
        """The device of ``volume_id`` if attached now; refuses an ambiguous match."""
        return _only(volume_id, await asyncio.to_thread(self.scan))

    async def find(self, volume_id: str) -> BlockDevice:
        """The device of ``volume_id``, waiting for it to appear up to the timeout (in a thread
        of its own: see ``csi_oxide.node.threads``); cancelling the call ends the wait."""
        stop = threading.Event()
        try:
            return await in_own_thread(lambda: self._wait(volume_id, stop), "device-wait")
        except asyncio.CancelledError:
            stop.set()
            raise

    async def verify(self, device: BlockDevice, volume_id: str) -> None:
        """Check, right before a write, that ``device`` still is ``volume_id``'s disk."""
        now = await asyncio.to_thread(self.current_serial, device)
        if now != serial_of(volume_id):
            raise FailedPreconditionError(
                f"{device.path} no longer carries serial {serial_text(volume_id)!r} of volume "
                f"{volume_id} (it has {show_serial(now)!r}); nothing was written"
            )

    async def max_volumes(self) -> int:
        """12 minus the NVMe disks present that are not CSI volumes (the boot disk, ...)."""
        return volume_slots(await asyncio.to_thread(self.scan))

    def _wait(self, volume_id: str, stop: threading.Event) -> BlockDevice:
        """The device of ``volume_id`` once it is there: the monitor listens before each scan,
        so a device that appears after one scan wakes the wait (NotFoundError at the deadline,
        or once ``stop`` is set)."""
        monitor = self._monitor()
        deadline = time.monotonic() + self._timeout
        while True:
            found = _only(volume_id, self.scan())
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or stop.is_set():
                raise NotFoundError(
                    f"volume {volume_id} is not attached to this node: no block device with "
                    f"serial {serial_text(volume_id)!r} appeared within "
                    f"{self._timeout:.0f}s"
                )
            if monitor is not None:
                monitor.poll(timeout=min(POLL_SECONDS, left))  # any block event: re-scan
            else:
                time.sleep(min(POLL_SECONDS, left))

    def _monitor(self) -> pyudev.Monitor | None:
        try:
            monitor = pyudev.Monitor.from_netlink(self._context, source="kernel")
            monitor.filter_by("block")
            monitor.start()
        except (OSError, ValueError):
            return None  # no netlink here: fall back to re-scanning
        return monitor


def volume_slots(devices: list[BlockDevice]) -> int:
    """12 minus the NVMe disks that are not CSI volumes (serial not ``csi-`` + 16 hex): the boot
    disk and any disk attached by hand use slots of the instance. Never negative: 0 means this
    node cannot take a volume, which the scheduler must know rather than be told 1."""
    others = [
        d
        for d in devices
        if Path(d.sys_path).name.startswith("nvme") and not is_volume_serial(d.serial)
    ]
    return max(0, MAX_DISKS_PER_INSTANCE - len(others))


def _only(volume_id: str, devices: list[BlockDevice]) -> BlockDevice | None:
    wanted = serial_of(volume_id)
    matches = [d for d in devices if d.serial == wanted]
    if len(matches) > 1:
        paths = ", ".join(d.path for d in matches)
        raise FailedPreconditionError(
            f"several devices carry serial {show_serial(wanted)!r} of volume {volume_id} "
            f"({paths}); refusing to guess which one is the volume"
        )
    return matches[0] if matches else None


def _read(path: Path) -> bytes | None:
    try:
        return normalize_serial(path.read_bytes())
    except OSError:
        return None


def _major_minor(dev: pyudev.Device) -> str:
    number = dev.device_number
    return f"{os.major(number)}:{os.minor(number)}"
