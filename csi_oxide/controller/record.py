"""The record the driver keeps in an Oxide description, and the names it derives.

An Oxide disk's (or snapshot's) description is fixed at creation, so it doubles as the driver's
idempotency record: a compact, versioned JSON object behind a fixed prefix, at most 512 characters.

    csi.oxide.computer/v1 {"c":"<cluster>","n":"<CSI name>","s":<bytes>,"src":"snapshot:snap-…",
                           "pvc":"<ns>/<name>","pv":"<pv name>"}

(``h`` replaces ``n`` when the name is too long; ``gf``/``gt`` on an expansion snapshot, ``b`` the
block size on a CSI snapshot, ``ro`` on a read-only volume.)

Whose object it is follows from the record and the object's name together (``controller.owner``):
a record is ours when it names our cluster AND its CSI name derives the object's name. Names:

- volume (disk) name   ``csi-`` + 16 hex of SHA-256(CSI volume name)   (20 chars: the NVMe serial)
- snapshot name        ``snap-`` + 16 hex of SHA-256(CSI snapshot name)
- image name           ``img-`` + 16 hex of SHA-256(CSI snapshot name), for a snapshot kept as an
  image (VolumeSnapshotClass ``snapshotType: image``); a CSI snapshot ID that begins ``img-``
  names an image (this driver's or a pre-provisioned one), any other a snapshot
- temporary snapshots  ``tmp-clone-`` / ``tmp-grow-`` + 16 hex of SHA-256(target disk name), and
  ``tmp-image-`` + 16 hex of SHA-256(target image name); never listed, never deletable through
  DeleteSnapshot
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum

from csi_oxide import DRIVER_NAME
from csi_oxide.contract.oxide_rules import BLOCK_SIZES
from csi_oxide.contract.volumes import VOLUME_PREFIX
from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide.types import MAX_DESCRIPTION_LENGTH, MAX_DISK_SIZE

PREFIX = f"{DRIVER_NAME}/v1 "  # the marker: "csi.oxide.computer/v1 "
SNAPSHOT_PREFIX = "snap-"
IMAGE_PREFIX = "img-"
CLONE_PREFIX = "tmp-clone-"
GROW_PREFIX = "tmp-grow-"
IMAGE_SNAPSHOT_PREFIX = "tmp-image-"
TEMPORARY_PREFIXES = (CLONE_PREFIX, GROW_PREFIX, IMAGE_SNAPSHOT_PREFIX)

_HEX16 = r"[0-9a-f]{16}"
# Matched with fullmatch: ``$`` would also accept a final newline.
_SNAPSHOT_RE = re.compile(rf"{SNAPSHOT_PREFIX}{_HEX16}")
_IMAGE_RE = re.compile(rf"{IMAGE_PREFIX}{_HEX16}")

MAX_CLUSTER_ID_LENGTH = 63
_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def volume_name(csi_name: str) -> str:
    """The Oxide disk name for a CSI volume name (20 characters, unique in its NVMe serial)."""
    return VOLUME_PREFIX + _digest(csi_name)


def snapshot_name(csi_name: str) -> str:
    """The Oxide snapshot name for a CSI snapshot name."""
    return SNAPSHOT_PREFIX + _digest(csi_name)


def image_name(csi_name: str) -> str:
    """The Oxide image name for a CSI snapshot kept as an image."""
    return IMAGE_PREFIX + _digest(csi_name)


def image_snapshot_name(target_image: str) -> str:
    """The temporary snapshot that the image ``target_image`` is made through."""
    return IMAGE_SNAPSHOT_PREFIX + _digest(target_image)


def is_image_id(snapshot_id: str) -> bool:
    """True for CSI snapshot IDs that name an image rather than a snapshot."""
    return snapshot_id.startswith(IMAGE_PREFIX)


def is_driver_image_name(name: str) -> bool:
    """True for the image names this driver makes."""
    return bool(_IMAGE_RE.fullmatch(name))


def clone_snapshot_name(target_disk: str) -> str:
    """The temporary snapshot that a clone into ``target_disk`` goes through."""
    return CLONE_PREFIX + _digest(target_disk)


def grow_snapshot_name(disk: str) -> str:
    """The temporary snapshot that an expansion of ``disk`` goes through."""
    return GROW_PREFIX + _digest(disk)


def is_driver_snapshot_name(name: str) -> bool:
    """True for (non-temporary) snapshot names this driver makes."""
    return bool(_SNAPSHOT_RE.fullmatch(name))


def is_temporary_snapshot_name(name: str) -> bool:
    """True for the driver's temporary (clone/expansion) snapshots."""
    return name.startswith(TEMPORARY_PREFIXES)


class SourceKind(StrEnum):
    """What a volume's content comes from (CSI's volume content source types)."""

    SNAPSHOT = "snapshot"
    VOLUME = "volume"


@dataclass(frozen=True, slots=True)
class Source:
    """A volume's content source (a CSI snapshot or volume ID), or the volume a snapshot is of.

    In a record it is written ``<kind>:<id>``; only this module encodes and decodes that."""

    kind: SourceKind
    id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SourceKind(self.kind))  # ValueError for another kind

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def _decode_source(text: str) -> Source | None:
    """The source written as ``text`` ("" for none); ValueError when it is not one."""
    if not text:
        return None
    kind, sep, ident = text.partition(":")
    if not sep or not ident or kind not in tuple(SourceKind):
        raise ValueError(f"not a content source: {text!r}")
    return Source(SourceKind(kind), ident)


@dataclass(frozen=True, slots=True)
class Record:
    """What the driver remembers about an object it created.

    ``name`` is the CSI name (``name_hash`` replaces it when the record would be too long), except
    in a clone's temporary snapshot (``of_clone_snapshot``, ``clone_target``);
    ``size`` the requested bytes; ``source`` where the content came from (a snapshot's record:
    the volume it is of), None for a blank volume.
    A temporary expansion snapshot carries the disk's record plus ``grow_from`` and ``grow_to``
    (old and new disk sizes in bytes), enough to finish or roll back the expansion from it alone.
    A CSI snapshot's record carries its source disk's ``block_size`` (Oxide's snapshot view has
    none), so a restore can check a requested block size even after the source is gone.
    """

    cluster: str
    name: str = ""
    name_hash: str = ""
    size: int = 0
    source: Source | None = None
    pvc: str = ""
    pv: str = ""
    grow_from: int = 0
    grow_to: int = 0
    block_size: int = 0
    read_only: bool = False

    @classmethod
    def of_image_snapshot(cls, cluster: str, target_image: str, source: Source) -> Record:
        """The record of the temporary snapshot an image is made through: like a clone's, its
        ``name`` (``clone_target``) is the image's name, from which the snapshot's derives."""
        return cls(cluster=cluster, name=target_image, source=source)

    @classmethod
    def of_clone_snapshot(cls, cluster: str, target_disk: str, source: Source) -> Record:
        """The record of a clone's temporary snapshot. Its ``name`` is not a CSI name but the
        disk name of the volume being made (``clone_target``), from which the snapshot's own
        name derives; the description keeps one key for both, as records already written do."""
        return cls(cluster=cluster, name=target_disk, source=source)

    @property
    def clone_target(self) -> str:
        """In a clone's temporary snapshot: the disk name of the volume being made."""
        return self.name

    def matches_name(self, csi_name: str) -> bool:
        """True when this record was written for ``csi_name``."""
        if self.name:
            return self.name == csi_name
        return self.name_hash == hashlib.sha256(csi_name.encode()).hexdigest()

    def _name_digest(self) -> str:
        return _digest(self.name) if self.name else self.name_hash[:16]

    def disk_name(self) -> str:
        """The Oxide disk name of the volume this record was written for."""
        return VOLUME_PREFIX + self._name_digest()

    def snapshot_name(self) -> str:
        """The Oxide snapshot name of the CSI snapshot this record was written for."""
        return SNAPSHOT_PREFIX + self._name_digest()

    def image_name(self) -> str:
        """The Oxide image name of the CSI snapshot (kept as an image) this record was written
        for."""
        return IMAGE_PREFIX + self._name_digest()

    def image_snapshot_name(self) -> str:
        """The temporary snapshot of an image this record was written for (its name is the
        image's name)."""
        return IMAGE_SNAPSHOT_PREFIX + self._name_digest()

    def clone_snapshot_name(self) -> str:
        """The temporary clone snapshot this record was written for (its name is the target
        disk's name)."""
        return CLONE_PREFIX + self._name_digest()

    def encode(self) -> str:
        """The description text; shortened (hash instead of name, no PVC/PV) to fit 512."""
        text = self._encode()
        if len(text) > MAX_DESCRIPTION_LENGTH:
            digest = hashlib.sha256(self.name.encode()).hexdigest() if self.name else self.name_hash
            text = replace(self, name="", name_hash=digest, pvc="", pv="")._encode()
        if len(text) > MAX_DESCRIPTION_LENGTH:
            raise ValueError("description record does not fit in 512 characters")
        return text

    def _encode(self) -> str:
        fields: dict[str, str | int] = {"c": self.cluster}
        for key, value in (
            ("n", self.name),
            ("h", self.name_hash),
            ("s", self.size),
            ("src", str(self.source) if self.source else ""),
            ("pvc", self.pvc),
            ("pv", self.pv),
            ("gf", self.grow_from),
            ("gt", self.grow_to),
            ("b", self.block_size),
            ("ro", int(self.read_only)),
        ):
            if value:
                fields[key] = value
        return PREFIX + json.dumps(fields, separators=(",", ":"), ensure_ascii=True)


_TEXT_KEYS = ("c", "n", "h", "src", "pvc", "pv")
_NUMBER_KEYS = ("s", "gf", "gt", "b", "ro")
_INT64 = 2**63


def decode(description: str) -> Record | None:
    """The record in ``description``, or None when it is not one of ours (or is damaged).

    Strict, because ownership hangs on it: duplicate keys (which parsers resolve differently), a
    known field of the wrong type, a number that is negative, not whole or beyond int64, or JSON
    nested beyond the decoder's depth make the record damaged, never a guess. Unknown keys are
    ignored (a later version may add some)."""
    if not description.startswith(PREFIX):
        return None
    try:
        data = json.loads(description[len(PREFIX) :], object_pairs_hook=_without_duplicates)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    for key in _TEXT_KEYS:
        if key in data and not isinstance(data[key], str):
            return None
    for key in _NUMBER_KEYS:
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT64:
            return None
    try:
        source = _decode_source(data.get("src", ""))
    except ValueError:
        return None
    return Record(
        cluster=data["c"],
        name=data.get("n", ""),
        name_hash=data.get("h", ""),
        size=data.get("s", 0),
        source=source,
        pvc=data.get("pvc", ""),
        pv=data.get("pv", ""),
        grow_from=data.get("gf", 0),
        grow_to=data.get("gt", 0),
        block_size=data.get("b", 0),
        read_only=bool(data.get("ro", 0)),
    )


def _without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def owned_by(description: str, cluster: str) -> Record | None:
    """The record if ``description`` carries our cluster's marker, else None.

    The marker alone does not make an object ours (a record can be copied onto another object):
    operations decide with ``controller.owner``, which also checks the name.
    """
    rec = decode(description)
    return rec if rec is not None and rec.cluster == cluster else None


def check_cluster_id(cluster: str) -> None:
    """Refuse a cluster ID that could not be written into every record (ConfigurationError).

    Letters, digits, ``.``, ``_`` and ``-`` (starting and ending with a letter or digit), at most
    63 characters: short enough that the longest record the driver writes still fits in Oxide's
    512-character description, and nothing JSON would have to escape.
    """
    if len(cluster) > MAX_CLUSTER_ID_LENGTH:
        raise ConfigurationError(
            f"--cluster-id is {len(cluster)} characters long; at most {MAX_CLUSTER_ID_LENGTH} fit "
            "in the record each disk's description carries"
        )
    if not _CLUSTER_ID_RE.fullmatch(cluster):
        raise ConfigurationError(
            f"--cluster-id {cluster!r} is not usable: use letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit"
        )
    longest = Record(
        cluster=cluster,
        name_hash="f" * 64,
        size=MAX_DISK_SIZE,
        source=Source(SourceKind.SNAPSHOT, "s" * 63),
        grow_from=MAX_DISK_SIZE,
        grow_to=MAX_DISK_SIZE,
        block_size=max(BLOCK_SIZES),
        read_only=True,
    )
    try:
        longest.encode()
    except ValueError as exc:  # pragma: no cover - the length limit above keeps it in bounds
        raise ConfigurationError(f"--cluster-id {cluster!r} does not fit in a record") from exc
