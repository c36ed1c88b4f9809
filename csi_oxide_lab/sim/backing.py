"""Where simulated disks keep their data: nowhere (memory) or in sparse files and loop devices."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

from csi_oxide.host.loops import detach_if_ours
from csi_oxide_lab.sim.freeze import FreezeError, Writes, copy_at_one_instant
from csi_oxide_lab.sim.runner import CommandError, run_command

_READ_LIMIT = 1024 * 1024
_SYS_BLOCK = Path("/sys/block")


class Backing(Protocol):
    """Storage behind the simulated disks and snapshots, driven by the simulator's state machine.

    Each method is called once the API rules have allowed the operation, under the simulator's
    lock, so implementations need no locking of their own. ``blocking`` says whether the methods
    do I/O (then the HTTP layer calls into the simulator from a worker thread).
    """

    blocking: bool

    def create_disk(self, disk: str, size: int, block_size: int) -> None:
        """Make an empty disk of ``size`` bytes (replacing any stale data under that name)."""

    def create_disk_from_snapshot(self, disk: str, snapshot: str, size: int) -> None:
        """Make a disk holding ``snapshot``'s data, grown to ``size`` bytes."""

    def delete_disk(self, disk: str) -> None:
        """Forget a disk's data (it is detached)."""

    def snapshot(self, disk: str, snapshot: str) -> None:
        """Copy a disk's current data into ``snapshot``: one instant of it (crash-consistent),
        even while a device attached to it writes."""

    def delete_snapshot(self, snapshot: str) -> None:
        """Forget a snapshot's data."""

    def image(self, snapshot: str, image_id: str) -> None:
        """Copy ``snapshot``'s data into the image ``image_id`` (images are kept by ID: a
        project image and a silo image may share a name)."""

    def create_disk_from_image(self, disk: str, image_id: str, size: int) -> None:
        """Make a disk holding the image's data, grown to ``size`` bytes."""

    def delete_image(self, image_id: str) -> None:
        """Forget an image's data."""

    def attach_local(
        self, disk: str, block_size: int, local: int = 0, *, read_only: bool = False
    ) -> None:
        """The disk was attached to local instance number ``local`` (0 is the first): make it
        visible on this machine, to that instance only; ``read_only``: a device that refuses
        writes, where the backing can make one."""

    def detach_local(self, disk: str) -> None:
        """The disk left its local instance: make it disappear from this machine."""

    def device(self, disk: str) -> str | None:
        """The local block device of an attached disk, if this backing makes one."""

    def write_content(self, disk: str, data: bytes) -> None:
        """Test helper: put ``data`` at the start of the disk."""

    def read_content(self, disk: str) -> bytes:
        """Test helper: what ``write_content`` (or the guest) put at the start of the disk."""

    def close(self) -> None:
        """Release everything this backing holds on the machine (loop devices, temp files)."""


def _device_writes(devices: list[str]) -> Writes:
    """The write activity of the loop devices ``devices`` together, from their block statistics
    (``/sys/block/loopN/stat``: write and discard requests and sectors; ``inflight``, read first:
    writes, discards among them). A device gone meanwhile makes it unknown (never quiet)."""
    finished = in_flight = landed = 0
    for name in devices:
        block = _SYS_BLOCK / name
        try:
            in_flight += int((block / "inflight").read_text().split()[1])
            stat = [int(field) for field in (block / "stat").read_text().split()]
            finished += stat[4] + stat[11]  # write and discard requests
            landed += stat[6] + stat[13]  # their sectors
        except (OSError, ValueError, IndexError):
            return Writes(finished=-1, in_flight=1, landed=-1)
    return Writes(finished=finished, in_flight=in_flight, landed=landed)


class MemoryBacking:
    """No data at all: each disk and snapshot carries a content token (bytes) that tests set on a
    disk, that a snapshot copies, and that a disk created from the snapshot inherits."""

    blocking = False

    def __init__(self) -> None:
        self._disks: dict[str, bytes] = {}
        self._snapshots: dict[str, bytes] = {}
        self._images: dict[str, bytes] = {}

    def create_disk(self, disk: str, size: int, block_size: int) -> None:
        self._disks[disk] = b""

    def create_disk_from_snapshot(self, disk: str, snapshot: str, size: int) -> None:
        self._disks[disk] = self._snapshots.get(snapshot, b"")

    def delete_disk(self, disk: str) -> None:
        self._disks.pop(disk, None)

    def snapshot(self, disk: str, snapshot: str) -> None:
        self._snapshots[snapshot] = self._disks.get(disk, b"")

    def delete_snapshot(self, snapshot: str) -> None:
        self._snapshots.pop(snapshot, None)

    def image(self, snapshot: str, image_id: str) -> None:
        self._images[image_id] = self._snapshots.get(snapshot, b"")

    def create_disk_from_image(self, disk: str, image_id: str, size: int) -> None:
        self._disks[disk] = self._images.get(image_id, b"")

    def delete_image(self, image_id: str) -> None:
        self._images.pop(image_id, None)

    def attach_local(
        self, disk: str, block_size: int, local: int = 0, *, read_only: bool = False
    ) -> None:
        return None

    def detach_local(self, disk: str) -> None:
        return None

    def device(self, disk: str) -> str | None:
        return None

    def write_content(self, disk: str, data: bytes) -> None:
        self._disks[disk] = bytes(data)

    def read_content(self, disk: str) -> bytes:
        return self._disks.get(disk, b"")

    def close(self) -> None:
        self._disks.clear()
        self._snapshots.clear()
        self._images.clear()


class LoopBacking:
    """A sparse file per disk in ``<state_dir>/devices/<disk name>``, per snapshot in
    ``<state_dir>/snapshots/<snapshot name>`` and per image in ``<state_dir>/images/<image
    ID>`` (that folder made with the first image); a disk attached to a local instance is a loop
    device over a file named after the disk (its backing-file name is the node's "serial") in
    that instance's device folder.

    With one local instance (the default) its device folder is ``devices`` itself. With several,
    instance ``i`` has ``<state_dir>/local-<i>``: attaching a disk to it makes a hard link to the
    disk's file there and the loop device over that link, so the device shows up in that folder
    only; detaching removes the link, so a device still held open (mounted) by the guest loses
    the disk's identity at once (its backing file reads "... (deleted)") and goes away on its
    last close, as an unplugged NVMe namespace does. One difference remains: I/O through such a
    lingering device still reaches the file, where a guest would get EIO.

    With ``state_dir`` None a temporary directory is used and removed by ``close``; a directory
    given by the user is kept. ``close`` always detaches the loop devices it made.
    """

    blocking = True

    def __init__(self, state_dir: Path | None, local_instances: int = 1) -> None:
        if local_instances < 1:
            raise ValueError("local_instances must be at least 1")
        self._owned = state_dir is None
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="csi-oxide-sim-"))
        self.state_dir = state_dir
        self.device_dir = self.state_dir / "devices"
        self.snapshot_dir = self.state_dir / "snapshots"
        self.image_dir = self.state_dir / "images"
        self.local_dirs = (
            [self.device_dir]
            if local_instances == 1
            else [self.state_dir / f"local-{i}" for i in range(local_instances)]
        )
        for folder in (self.device_dir, self.snapshot_dir, *self.local_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        self._loops: dict[str, str] = {}  # disk -> its loop device (/dev/loopN)
        self._loop_files: dict[str, str] = {}  # disk -> the file its loop device was made over
        self._links: dict[str, Path] = {}

    def _disk_file(self, disk: str) -> Path:
        return self.device_dir / disk

    def create_disk(self, disk: str, size: int, block_size: int) -> None:
        path = self._disk_file(disk)
        path.unlink(missing_ok=True)
        with path.open("wb") as f:
            f.truncate(size)

    def create_disk_from_snapshot(self, disk: str, snapshot: str, size: int) -> None:
        self._copy_grown(self.snapshot_dir / snapshot, self._disk_file(disk), size)

    @staticmethod
    def _copy_grown(source: Path, target: Path, size: int) -> None:
        target.unlink(missing_ok=True)
        run_command(["cp", "--sparse=always", str(source), str(target)])
        with target.open("r+b") as f:
            f.truncate(size)

    def delete_disk(self, disk: str) -> None:
        self._disk_file(disk).unlink(missing_ok=True)

    def snapshot(self, disk: str, snapshot: str) -> None:
        """A sparse copy of the disk's file. While a loop device is over it (attached, or
        detached but still held open), the copy is one instant of the disk, however busy the
        device: its writes wait for the copy and the copy proves it missed none (``freeze``).
        Otherwise nothing writes the file: ``cp``."""
        source, target = self._disk_file(disk), self.snapshot_dir / snapshot
        devices = self._loop_devices(disk)
        if not devices:
            target.unlink(missing_ok=True)
            run_command(["cp", "--sparse=always", str(source), str(target)])
            return
        try:
            copy_at_one_instant(source, target, lambda: _device_writes(devices))
        except FreezeError as exc:
            raise CommandError(f"snapshot of {disk}, which {devices} may write: {exc}") from exc

    def _loop_devices(self, disk: str) -> list[str]:
        """The names of the loop devices over the disk's file (``loopN``): the attached one and
        any detached while still open, whose I/O still reaches the file."""
        folders = {str(folder.resolve()) for folder in (self.device_dir, *self.local_dirs)}
        found = []
        for backing in sorted(_SYS_BLOCK.glob("loop*/loop/backing_file")):
            try:
                path = backing.read_text().rstrip("\n").removesuffix(" (deleted)")
            except OSError:
                continue  # detached meanwhile
            folder, _, name = path.rpartition("/")
            if name == disk and folder in folders:
                found.append(backing.parent.parent.name)
        return found

    def delete_snapshot(self, snapshot: str) -> None:
        (self.snapshot_dir / snapshot).unlink(missing_ok=True)

    def image(self, snapshot: str, image_id: str) -> None:
        self.image_dir.mkdir(exist_ok=True)  # made with the first image
        target = self.image_dir / image_id
        target.unlink(missing_ok=True)
        run_command(["cp", "--sparse=always", str(self.snapshot_dir / snapshot), str(target)])

    def create_disk_from_image(self, disk: str, image_id: str, size: int) -> None:
        self._copy_grown(self.image_dir / image_id, self._disk_file(disk), size)

    def delete_image(self, image_id: str) -> None:
        (self.image_dir / image_id).unlink(missing_ok=True)

    def _local_file(self, disk: str, local: int) -> Path:
        """The name the loop device of ``disk`` opens for local instance ``local``."""
        if not 0 <= local < len(self.local_dirs):
            raise ValueError(f"no local instance number {local} (have {len(self.local_dirs)})")
        folder = self.local_dirs[local]
        if folder == self.device_dir:
            return self._disk_file(disk)
        link = folder / disk
        link.unlink(missing_ok=True)
        os.link(self._disk_file(disk), link)
        self._links[disk] = link
        return link

    def attach_local(
        self, disk: str, block_size: int, local: int = 0, *, read_only: bool = False
    ) -> None:
        """A loop device over the disk's file; for a read-only disk a read-only loop device
        (``losetup --read-only``): the kernel refuses every write to it (EPERM, and the block
        device reports ``ro``), as a guest's read-only NVMe namespace does."""
        if disk in self._loops:
            return
        path = str(self._local_file(disk, local))
        argv = ["losetup", "--find", "--show", "--sector-size", str(block_size)]
        if read_only:
            argv.append("--read-only")
        # Direct I/O: the device reads and writes its file without a second copy in the host's
        # page cache, as an Oxide disk (Crucible over the network) has none. Buffered, ten
        # concurrent zero checks of fresh 1 GiB disks took 4 s instead of 0.9 s on a busy
        # 2-core machine, with stragglers of several seconds. A file system that refuses
        # O_DIRECT gets a buffered device.
        try:
            try:
                self._loops[disk] = run_command([*argv, "--direct-io=on", path])
            except CommandError:
                self._loops[disk] = run_command([*argv, path])
        except BaseException:
            self._unlink(disk)
            raise
        self._loop_files[disk] = path

    def _unlink(self, disk: str) -> None:
        link = self._links.pop(disk, None)
        if link is not None:
            link.unlink(missing_ok=True)

    def detach_local(self, disk: str) -> None:
        """Detach the disk's loop device, if it still is the one made for the disk: over the
        disk's file (``csi_oxide.host.loops``). One detached meanwhile (by hand, or freed at its
        last
        close) may have been handed to someone else's file under the same number: left alone."""
        dev, path = self._loops.pop(disk, None), self._loop_files.pop(disk, None)
        try:
            if dev is not None and path is not None:
                # On a device still in use (mounted) this sets autoclear: the kernel frees it on
                # the last close.
                detach_if_ours(dev, path)
        except OSError as exc:
            raise CommandError(f"detaching {dev} (over {path}) failed: {exc}") from exc
        finally:
            self._unlink(disk)

    def device(self, disk: str) -> str | None:
        return self._loops.get(disk)

    def write_content(self, disk: str, data: bytes) -> None:
        with self._disk_file(disk).open("r+b") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def read_content(self, disk: str) -> bytes:
        """The first MiB of the disk, without its trailing zero bytes."""
        with self._disk_file(disk).open("rb") as f:
            return f.read(_READ_LIMIT).rstrip(b"\0")

    def close(self) -> None:
        for disk in list(self._loops):
            try:
                self.detach_local(disk)
            except CommandError:
                continue  # best effort at shutdown; the device keeps its autoclear flag
        if self._owned:
            shutil.rmtree(self.state_dir, ignore_errors=True)
