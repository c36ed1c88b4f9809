"""Pure parsers from CSI request messages to validated domain values.

Each raises ``InvalidArgumentError`` (or the spec's more specific code) with a message naming the
field, and does nothing else: no I/O, no gRPC. Handlers call these first, so arguments are always
validated before any lookup (csi-sanity checks that order).
"""

from __future__ import annotations

import heapq
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.mount_options import mount_flags
from csi_oxide.contract.oxide_rules import BLOCK_SIZES
from csi_oxide.contract.volumes import DEFAULT_FILESYSTEM, FILESYSTEMS, CapacityRange
from csi_oxide.errors import InvalidArgumentError

MAX_PATH_BYTES = 4096
_FS_CHOICES = " or ".join(FILESYSTEMS)

AccessMode = csi.VolumeCapability.AccessMode

# Oxide disks attach to one instance at a time: only single-node modes can be honoured.
SUPPORTED_ACCESS_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
READ_ONLY_ACCESS_MODES = frozenset({AccessMode.SINGLE_NODE_READER_ONLY})


class AccessType(Enum):
    """How the volume is presented to the workload."""

    MOUNT = "mount"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class Capability:
    """A validated VolumeCapability."""

    access_type: AccessType
    access_mode: int
    fstype: str = ""  # CSI's MountVolume.fs_type, defaulted and checked
    mount_flags: tuple[
        str, ...
    ] = ()  # one option each, all allowed (csi_oxide.contract.mount_options)

    @property
    def block(self) -> bool:
        """True for raw block volumes."""
        return self.access_type is AccessType.BLOCK

    @property
    def read_only_mode(self) -> bool:
        """True when the access mode itself is read-only."""
        return self.access_mode in READ_ONLY_ACCESS_MODES


def require(value: str, field: str) -> str:
    """``value`` if it is non-empty, else INVALID_ARGUMENT naming ``field``."""
    if not value:
        raise InvalidArgumentError(f"{field} is required")
    if "\x00" in value:
        raise InvalidArgumentError(f"{field} must not contain NUL characters")
    return value


MAX_NAME_BYTES = 128


def csi_name(value: str, field: str) -> str:
    """A CO-chosen name (CreateVolume, CreateSnapshot): required, at most 128 bytes (the CSI
    spec's string limit), no control characters (the spec bans them). Longer or stranger names
    would travel on into records, logs and every error message about the object."""
    require(value, field)
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        raise InvalidArgumentError(
            f"{field} is {size} bytes long; the CSI spec allows at most {MAX_NAME_BYTES}"
        )
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidArgumentError(f"{field} must not contain control characters")
    return value


def path(value: str, field: str) -> str:
    """A required absolute path, normalised (``..`` components are resolved lexically)."""
    require(value, field)
    if len(value.encode()) > MAX_PATH_BYTES:
        raise InvalidArgumentError(f"{field} is longer than {MAX_PATH_BYTES} bytes")
    if not value.startswith("/"):
        raise InvalidArgumentError(f"{field} must be an absolute path, got {value!r}")
    return os.path.normpath(value)


def capability(cap: csi.VolumeCapability, field: str = "volume_capability") -> Capability:
    """Validate one VolumeCapability (access type, access mode, fs type, mount flags)."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise InvalidArgumentError(f"{field}: access_type (mount or block) is required")
    if not cap.HasField("access_mode"):
        raise InvalidArgumentError(f"{field}: access_mode is required")
    mode = cap.access_mode.mode
    if mode == AccessMode.UNKNOWN:
        raise InvalidArgumentError(f"{field}: access_mode is UNKNOWN")
    if mode not in AccessMode.Mode.values():
        raise InvalidArgumentError(f"{field}: access_mode {mode} is not a CSI access mode")
    if kind == "block":
        return Capability(AccessType.BLOCK, mode)
    fstype = cap.mount.fs_type or DEFAULT_FILESYSTEM
    if fstype not in FILESYSTEMS:
        raise InvalidArgumentError(
            f"{field}: fs_type {cap.mount.fs_type!r} is not supported (use {_FS_CHOICES})"
        )
    return Capability(AccessType.MOUNT, mode, fstype, mount_flags(cap.mount.mount_flags, fstype))


def capabilities(caps: Iterable[csi.VolumeCapability]) -> list[Capability]:
    """Validate a non-empty list of capabilities."""
    parsed = [capability(cap, f"volume_capabilities[{i}]") for i, cap in enumerate(caps)]
    if not parsed:
        raise InvalidArgumentError("volume_capabilities is required")
    return parsed


def unsupported_reason(cap: Capability) -> str | None:
    """Why an Oxide disk cannot serve ``cap`` (None if it can)."""
    if cap.access_mode not in SUPPORTED_ACCESS_MODES:
        name = AccessMode.Mode.Name(cap.access_mode)  # type: ignore[arg-type]
        return (
            f"access mode {name} is not supported: an Oxide disk attaches to one instance at a time"
        )
    return None


def capacity_range(rng: csi.CapacityRange | None) -> CapacityRange:
    """Validate a CapacityRange (negative values and limit < required are invalid)."""
    if rng is None:
        return CapacityRange(0, 0)
    if rng.required_bytes < 0 or rng.limit_bytes < 0:
        raise InvalidArgumentError("capacity_range values must not be negative")
    if rng.limit_bytes and rng.required_bytes > rng.limit_bytes:
        raise InvalidArgumentError("capacity_range.required_bytes is larger than limit_bytes")
    return CapacityRange(rng.required_bytes, rng.limit_bytes)


K8S_PREFIX = "csi.storage.k8s.io/"
_BLOCK_SIZE_TEXTS = tuple(str(size) for size in BLOCK_SIZES)


# An error message names at most this many of the unknown keys, each cut to KEY_SHOWN characters:
# a request may carry thousands of keys, and the message goes into a log line and a gRPC status.
KEYS_NAMED = 3
KEY_SHOWN = 64


def named_keys(keys: list[str]) -> str:
    """The first ``KEYS_NAMED`` of ``keys`` in sorted order, each cut to ``KEY_SHOWN`` characters,
    and how many more there are (``keys`` must not be empty)."""
    first = [
        k if len(k) <= KEY_SHOWN else k[:KEY_SHOWN] + "..."
        for k in heapq.nsmallest(KEYS_NAMED, keys)
    ]
    more = len(keys) - len(first)
    return ", ".join(first) + (f" and {more} more" if more else "")


@dataclass(frozen=True, slots=True)
class VolumeParameters:
    """StorageClass parameters after validation."""

    block_size: int | None = None  # None: not given (4096 for a blank volume)
    pvc: str = ""
    pv: str = ""
    read_only: bool = False


_VOLUME_KEYS = ("fsType", "blockSize", "readOnly")
_BOOLEANS = {"true": True, "false": False}


def _boolean(params: Mapping[str, str], key: str, what: str) -> bool:
    """A ``"true"``/``"false"`` parameter (absent: false)."""
    value = params.get(key, "false")
    if value.lower() not in _BOOLEANS:
        raise InvalidArgumentError(f"{what} parameter {key} is {value[:64]!r}: use true or false")
    return _BOOLEANS[value.lower()]


def volume_parameters(params: Mapping[str, str]) -> VolumeParameters:
    """Accept ``fsType``, ``blockSize``, ``readOnly`` and the ``csi.storage.k8s.io/`` keys;
    refuse the rest."""
    unknown = [k for k in params if k not in _VOLUME_KEYS and not k.startswith(K8S_PREFIX)]
    if unknown:
        raise InvalidArgumentError(
            f"unknown StorageClass parameter(s) {named_keys(unknown)}: accepted are fsType, "
            "blockSize, readOnly and csi.storage.k8s.io/* keys"
        )
    block = params.get("blockSize")
    if block is not None and block not in _BLOCK_SIZE_TEXTS:
        raise InvalidArgumentError(
            f"blockSize {block!r} must be one of {', '.join(_BLOCK_SIZE_TEXTS)}"
        )
    fstype = params.get("fsType", "")
    if fstype and fstype.lower() not in FILESYSTEMS:
        raise InvalidArgumentError(f"fsType {fstype!r} is not supported (use {_FS_CHOICES})")
    namespace = params.get(K8S_PREFIX + "pvc/namespace", "")
    pvc_name = params.get(K8S_PREFIX + "pvc/name", "")
    return VolumeParameters(
        block_size=None if block is None else int(block),
        pvc=f"{namespace}/{pvc_name}" if pvc_name else "",
        pv=params.get(K8S_PREFIX + "pv/name", ""),
        read_only=_boolean(params, "readOnly", "StorageClass"),
    )


SNAPSHOT_TYPES = ("snapshot", "image")


@dataclass(frozen=True, slots=True)
class SnapshotParameters:
    """VolumeSnapshotClass parameters after validation."""

    as_image: bool = False  # snapshotType: image


def snapshot_parameters(params: Mapping[str, str]) -> SnapshotParameters:
    """VolumeSnapshotClass parameters: ``snapshotType`` (``snapshot``, the default, or
    ``image``) and the snapshotter's own keys; the rest is refused."""
    unknown = [k for k in params if k != "snapshotType" and not k.startswith(K8S_PREFIX)]
    if unknown:
        raise InvalidArgumentError(
            f"unknown VolumeSnapshotClass parameter(s) {named_keys(unknown)}: accepted are "
            "snapshotType and csi.storage.k8s.io/* keys"
        )
    kind = params.get("snapshotType", "snapshot")
    if kind not in SNAPSHOT_TYPES:
        raise InvalidArgumentError(
            f"snapshotType {kind[:64]!r} must be one of {', '.join(SNAPSHOT_TYPES)}"
        )
    return SnapshotParameters(as_image=kind == "image")
