"""Whose disk or snapshot it is: the one ownership rule, applied by every controller operation.

Several Kubernetes clusters can share one Oxide project, and people can make disks and snapshots by
hand next to the driver's. Every operation that reads or changes an object by ID asks ``of_disk``
or ``of_snapshot`` first, and each object is one of:

- ``OURS``: its description holds a record that names this cluster AND whose CSI name derives the
  object's name (``csi-`` + hash for a volume, ``snap-`` + hash for a snapshot, the temporary
  prefixes for the driver's own temporary snapshots). A record copied onto another object, or a
  hand-made object under a driver-like name, is therefore not ours. What an expansion's record and
  leftover look like is ``controller.expand``'s to say (``is_expansion_record``,
  ``leftover_name``): such a record on a disk makes it foreign, and only it derives the name of an
  expansion snapshot.
- ``STATIC``: its description holds no record at all. Such a disk is a statically provisioned
  volume (usable, and deleted when its PersistentVolume's reclaim policy says so); such a snapshot
  a pre-provisioned snapshot. Temporary snapshot names are never static: they are ours or nothing.
  An image without a record (``of_image``) is a pre-provisioned image: volumes are made from it,
  but the driver never deletes it (it may be shared: a silo image serves every project).
- ``FOREIGN``: everything else: another cluster's record, a copied (forged) record, a damaged
  record. Operations answer as if the object did not exist (NOT_FOUND, or OK for the deletes and
  ControllerUnpublishVolume, as the CSI spec asks of a missing object) and never change it.

Listings (ListVolumes, ListSnapshots without an ID) and the reconciler consider only ``OURS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from csi_oxide.controller import expand, record
from csi_oxide.oxide.types import Disk, Image, Snapshot


class Owner(Enum):
    """The three kinds of object an operation can meet."""

    OURS = "ours"
    STATIC = "static"
    FOREIGN = "foreign"


@dataclass(frozen=True, slots=True)
class Claim:
    """The verdict on one object; ``record`` is set exactly when it is ``OURS``."""

    owner: Owner
    record: record.Record | None = None

    @property
    def usable(self) -> bool:
        """True for objects operations may use by ID (ours and static ones)."""
        return self.owner is not Owner.FOREIGN


FOREIGN = Claim(Owner.FOREIGN)
STATIC = Claim(Owner.STATIC)


def _record(description: str, cluster: str) -> record.Record | Claim:
    """Our cluster's record in ``description``, or the verdict when there is none."""
    if not description.startswith(record.PREFIX):
        return STATIC
    rec = record.decode(description)
    if rec is None or rec.cluster != cluster:
        return FOREIGN
    return rec


def of_disk(disk: Disk, cluster: str) -> Claim:
    """Whose ``disk`` is, for ``cluster``."""
    rec = _record(disk.description, cluster)
    if isinstance(rec, Claim):
        return rec
    if expand.is_expansion_record(rec) or rec.disk_name() != disk.name:
        return FOREIGN
    return Claim(Owner.OURS, rec)


def of_snapshot(snap: Snapshot, cluster: str) -> Claim:
    """Whose ``snap`` is, for ``cluster`` (CSI snapshots and the driver's temporary ones)."""
    rec = _record(snap.description, cluster)
    if isinstance(rec, Claim):
        return FOREIGN if record.is_temporary_snapshot_name(snap.name) else rec
    if snap.name.startswith(record.GROW_PREFIX):
        derived = expand.leftover_name(rec)
    elif snap.name.startswith(record.CLONE_PREFIX):
        derived = rec.clone_snapshot_name()
    elif snap.name.startswith(record.IMAGE_SNAPSHOT_PREFIX):
        derived = rec.image_snapshot_name()
    else:
        derived = rec.snapshot_name()
    if derived != snap.name:
        return FOREIGN
    return Claim(Owner.OURS, rec)


def of_image(image: Image, cluster: str) -> Claim:
    """Whose ``image`` is, for ``cluster``: ours when our record derives its name; static (a
    pre-provisioned image, used but never deleted by the driver) without a record."""
    rec = _record(image.description, cluster)
    if isinstance(rec, Claim):
        return rec
    if rec.image_name() != image.name:
        return FOREIGN
    return Claim(Owner.OURS, rec)


def not_ours(kind: str, ident: str) -> str:
    """The NOT_FOUND message for an object that exists in Oxide but is not this cluster's."""
    return (
        f"{kind} {ident} does not exist in this cluster (an Oxide object of that name exists, but "
        "its record is another cluster's or does not match its name; it was left untouched)"
    )
