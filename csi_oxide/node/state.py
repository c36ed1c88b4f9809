"""The node's record of what it did to each volume: the only proof it acts on later.

One JSON file per volume in the state directory (on the host, so it outlives the container, the
plugin and a reboot of the node), written atomically (temporary file, fsync, rename, fsync of the
directory). It holds:

- ``history``: what this plugin did to the disk's contents: ``mkfs-started`` (written and fsynced
  immediately BEFORE mkfs runs, only after the device was proven blank), ``mkfs-done`` (written once
  mkfs exited successfully: the disk has carried a complete filesystem and is never "blank" again),
  ``raw`` (the disk was handed out as a raw block device: its contents are someone's data). The
  history is kept after unstaging: it is about the disk, not about one mount. Its states and the
  rules that read and move them are in ``history.py``.
- ``disk_id``: the Oxide UUID of the disk the history is about (from ``publish_context``). A volume
  ID is a disk name, and a name outlives its disk (deleted, then created again under the same CSI
  name): the history of one disk never speaks for another (``VolumeRecord.for_disk``). A history
  without a UUID (records of earlier versions, or a controller that sent none) still refuses
  formatting, and vouches for nothing.
- ``stage`` and ``publish``: each mount this plugin made for the volume, with its path (after
  realpath), the identity the mount must have in mountinfo (device major:minor, root within the
  filesystem, filesystem type), the boot it was made in, and for a publish target whether this
  plugin created the file or directory (its inode) and, for a read-only raw block publish, the
  anchor of the read-only view bound there (``node.views``). Written before mounting (and before
  the view is made); removed after unmounting.

A mount is this plugin's only if a record of this volume names its path, was made in the current
boot (no mount survives a reboot), and the mount at that path has exactly the recorded identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from csi_oxide.contract.volumes import serial_of
from csi_oxide.errors import ConfigurationError, FailedPreconditionError
from csi_oxide.node.history import HISTORIES
from csi_oxide.node.mountinfo import Mount

DEFAULT_STATE_DIR = Path("/var/lib/csi-oxide/node")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
VERSION = 1
# A record names a volume, its history and a handful of mounts: far below this. A larger file is
# not one of ours and is not parsed.
MAX_RECORD_CHARS = 1 << 20
# Records a node keeps (see ``FileRecordStore.prune_sync``): far more than the volumes a node can
# hold at once (12 disks per instance), and small on disk (a history-only record is ~300 bytes).
MAX_RECORDS = 4096


@dataclass(frozen=True, slots=True)
class MountIdentity:
    """What a mount of ours looks like in mountinfo."""

    major_minor: str
    root: str
    fstype: str

    def matches(self, mount: Mount) -> bool:
        """True when ``mount`` is a mount with this identity (a bound device node that has since
        been removed shows its root with a ``//deleted`` suffix: still the same mount)."""
        return (
            mount.major_minor == self.major_minor
            and mount.fstype == self.fstype
            and mount.root in (self.root, self.root + "//deleted")
        )

    def as_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"major_minor": self.major_minor, "root": self.root, "fstype": self.fstype}


@dataclass(frozen=True, slots=True)
class Made:
    """A publish target this plugin created: its kind and, once it exists, its inode."""

    kind: str  # "dir" or "file"
    dev: int | None = None
    ino: int | None = None


@dataclass(frozen=True, slots=True)
class MountRecord:
    """One stage or publish of the volume."""

    path: str
    boot: str
    block: bool
    identity: MountIdentity | None  # None: nothing is mounted (a raw block stage)
    read_only: bool = False
    made: Made | None = None
    # A read-only raw block publish: the anchor of the read-only view bound there (node.views),
    # recorded before the view is made. None for every other mount (and in older records).
    view: str | None = None


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    """Everything the node remembers about one volume."""

    volume_id: str
    serial: str
    history: str = ""
    history_fstype: str = ""
    stage: MountRecord | None = None
    publish: dict[str, MountRecord] = field(default_factory=dict)
    disk_id: str | None = None  # the Oxide disk the history is about (None: unknown)

    def for_disk(self, disk_id: str | None) -> VolumeRecord:
        """The record as it applies to the disk ``disk_id`` now behind the volume (None:
        unknown). A history recorded for another disk (a deleted one whose name was given again)
        is dropped: it neither vouches for nor refuses the new disk. A history whose disk was
        never recorded is kept: it still refuses, and ``history.interrupted_mkfs`` vouches for
        no disk with it."""
        if disk_id is None or self.disk_id == disk_id or (self.disk_id is None and self.history):
            return self
        return replace(self, disk_id=disk_id, history="", history_fstype="")

    @property
    def empty(self) -> bool:
        """True when there is nothing worth keeping."""
        return not self.history and self.stage is None and not self.publish

    def in_use(self, boot: str) -> bool:
        """True when the volume is staged or published in this boot."""
        return any(m.boot == boot for m in self.mounts())

    def mounts(self) -> list[MountRecord]:
        """The stage and publish records."""
        return ([self.stage] if self.stage else []) + list(self.publish.values())

    def with_publish(self, path: str, record: MountRecord | None) -> VolumeRecord:
        """A copy with the publish record of ``path`` set (None: removed)."""
        publish = dict(self.publish)
        if record is None:
            publish.pop(path, None)
        else:
            publish[path] = record
        return replace(self, publish=publish)


class RecordStore(Protocol):
    """Durable per-volume records (see the module docstring)."""

    @property
    def boot(self) -> str:
        """The current boot's ID."""
        ...

    async def load(self, volume_id: str) -> VolumeRecord:
        """The volume's record (an empty one when there is none)."""
        ...

    async def save(self, record: VolumeRecord) -> None:
        """Store ``record`` durably before returning (an empty record is deleted)."""
        ...

    async def all(self) -> list[VolumeRecord]:
        """Every stored record."""
        ...

    async def sharing_serial(self, serial: str) -> list[VolumeRecord]:
        """The records of volumes whose ID starts with ``serial`` (the ones that can share a
        device), without reading every record of the node's history."""
        ...


def read_boot_id(path: Path = BOOT_ID) -> str:
    """The kernel's ID of the current boot."""
    return path.read_text().strip()


def _mount_to_dict(m: MountRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": m.path,
        "boot": m.boot,
        "block": m.block,
        "identity": m.identity.as_dict() if m.identity else None,
        "read_only": m.read_only,
        "made": None,
        "view": m.view,
    }
    if m.made:
        out["made"] = {"kind": m.made.kind, "dev": m.made.dev, "ino": m.made.ino}
    return out


def _mount_from_dict(d: dict[str, Any]) -> MountRecord:
    ident = d["identity"]
    made = d.get("made")
    return MountRecord(
        path=str(d["path"]),
        boot=str(d["boot"]),
        block=bool(d["block"]),
        identity=MountIdentity(str(ident["major_minor"]), str(ident["root"]), str(ident["fstype"]))
        if ident
        else None,
        read_only=bool(d.get("read_only", False)),
        made=Made(str(made["kind"]), made.get("dev"), made.get("ino")) if made else None,
        view=_optional_str(d.get("view")),
    )


def to_json(record: VolumeRecord) -> str:
    """The record as the JSON text stored on disk."""
    return json.dumps(
        {
            "version": VERSION,
            "volume_id": record.volume_id,
            "serial": record.serial,
            "history": record.history,
            "history_fstype": record.history_fstype,
            "disk_id": record.disk_id,
            "stage": _mount_to_dict(record.stage) if record.stage else None,
            "publish": {p: _mount_to_dict(m) for p, m in sorted(record.publish.items())},
        },
        indent=1,
        sort_keys=True,
    )


def _optional_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string or null, not {type(value).__name__}")
    return value


def from_json(text: str) -> VolumeRecord:
    """Parse a stored record; ValueError when it is not one this version understands."""
    if len(text) > MAX_RECORD_CHARS:
        raise ValueError(f"{len(text)} characters, more than a record ever holds")
    try:
        d = json.loads(text)
        if d.get("version") != VERSION or d.get("history", "") not in HISTORIES:
            raise ValueError(f"unsupported record version or history: {text[:200]!r}")
        return VolumeRecord(
            volume_id=str(d["volume_id"]),
            serial=str(d["serial"]),
            history=str(d.get("history", "")),
            history_fstype=str(d.get("history_fstype", "")),
            stage=_mount_from_dict(d["stage"]) if d.get("stage") else None,
            publish={str(p): _mount_from_dict(m) for p, m in d.get("publish", {}).items()},
            disk_id=_optional_str(d.get("disk_id")),
        )
    except RecursionError:
        raise ValueError("malformed record: nested deeper than a record ever is") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed record: {exc}") from exc


class FileRecordStore:
    """Records as files in ``directory``; one process at a time holds the directory (flock)."""

    def __init__(
        self, directory: Path, *, boot: str | None = None, max_records: int = MAX_RECORDS
    ) -> None:
        """``max_records``: how many records the directory keeps before the oldest ones that
        hold only a history (no mount in this boot) are dropped to make room."""
        self._dir = directory
        self._max_records = max_records
        self._writing = threading.Lock()  # a save and the pruning never interleave on one file
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigurationError(f"node state directory {directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock)
            raise ConfigurationError(
                f"node state directory {directory} is in use by another csi-oxide node plugin"
            ) from None
        self._boot = boot if boot is not None else read_boot_id()

    @property
    def boot(self) -> str:
        """The current boot's ID."""
        return self._boot

    @property
    def directory(self) -> Path:
        """Where the records live."""
        return self._dir

    def close(self) -> None:
        """Release the directory."""
        with contextlib.suppress(OSError):
            os.close(self._lock)

    def _file(self, volume_id: str) -> Path:
        # Volume IDs are validated Oxide names (lowercase letters, digits, dashes) before any call.
        if not volume_id or "/" in volume_id or volume_id.startswith("."):
            raise FailedPreconditionError(f"volume ID {volume_id!r} cannot name a node record")
        return self._dir / f"{volume_id}.json"

    def load_sync(self, volume_id: str) -> VolumeRecord:
        """Blocking ``load``."""
        path = self._file(volume_id)
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                text = f.read(MAX_RECORD_CHARS + 1)
        except FileNotFoundError:
            return VolumeRecord(volume_id, serial_of(volume_id).decode(errors="replace"))
        try:
            return from_json(text)
        except ValueError as exc:
            raise FailedPreconditionError(
                f"the node record {path} of volume {volume_id} is unreadable ({exc}); nothing was "
                "touched: inspect it by hand"
            ) from exc

    def save_sync(self, record: VolumeRecord) -> None:
        """Blocking ``save``."""
        path = self._file(record.volume_id)
        with self._writing:
            if record.empty:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    _fsync_dir(self._dir)
                return
            new = not path.exists()
            try:
                _replace_durably(path, to_json(record).encode())
            except OSError as exc:
                raise FailedPreconditionError(
                    f"the node record {path} of volume {record.volume_id} could not be written "
                    f"({exc.strerror or exc}); it is whole (the old record or the new one), and "
                    "this step was not taken: free space in the node's state directory and retry"
                ) from exc
        if new:
            self.prune_sync(keep=path)

    def prune_sync(self, keep: Path | None = None) -> list[str]:
        """Drop the oldest records (by last write) that hold only a history while the directory
        holds more than ``max_records``; the volume IDs dropped.

        Histories outlive their disks (the node is never told that a disk was deleted), so
        without a bound they would grow with every volume the node ever staged. Dropping the
        oldest loses only extra caution about a disk unused on this node for that long: its
        next stage proves blankness from the device itself, as for a disk never seen here.
        Records with a mount in this boot, and ``keep``, are never dropped."""
        paths = list(self._dir.glob("*.json"))
        excess = len(paths) - self._max_records
        if excess <= 0:
            return []
        dropped: list[str] = []
        for path in sorted(paths, key=_mtime):
            if len(dropped) == excess:
                break
            if path != keep and self._drop_if_idle(path):
                dropped.append(path.stem)
        return dropped

    def _drop_if_idle(self, path: Path) -> bool:
        with self._writing:
            try:
                record = self.load_sync(path.stem)
            except FailedPreconditionError:
                return False  # unreadable: left for an operator, as every other use does
            if record.in_use(self._boot):
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return True

    def all_sync(self) -> list[VolumeRecord]:
        """Blocking ``all``."""
        return [self.load_sync(p.stem) for p in sorted(self._dir.glob("*.json"))]

    def sharing_serial_sync(self, serial: str) -> list[VolumeRecord]:
        """Blocking ``sharing_serial``."""
        if not serial or any(c in serial for c in "/*?[]\\") or serial.startswith("."):
            return [r for r in self.all_sync() if r.serial == serial]
        return [self.load_sync(p.stem) for p in sorted(self._dir.glob(f"{serial}*.json"))]

    async def load(self, volume_id: str) -> VolumeRecord:
        """The volume's record (empty when there is none)."""
        return await asyncio.to_thread(self.load_sync, volume_id)

    async def sharing_serial(self, serial: str) -> list[VolumeRecord]:
        """Records of the volumes whose ID starts with ``serial``."""
        return await asyncio.to_thread(self.sharing_serial_sync, serial)

    async def save(self, record: VolumeRecord) -> None:
        """Store ``record`` durably (fsynced) before returning."""
        await asyncio.to_thread(self.save_sync, record)

    async def all(self) -> list[VolumeRecord]:
        """Every stored record."""
        return await asyncio.to_thread(self.all_sync)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _replace_durably(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``: all of it or, on any failure, what it held before.

    The bytes go to a temporary file beside it, every write checked (a full disk makes ``write``
    return short before it fails), then fsync, rename over ``path`` and fsync of the directory,
    so that a crash at any point leaves the old file or the new one, never a part of either."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; OSError when it cannot (a short write is retried, and a
    write that makes no progress is an error, never a silently shorter file)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "the write made no progress")
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
