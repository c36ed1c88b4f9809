"""What ControllerPublishVolume tells the node plugin through ``publish_context``.

The controller knows how a disk was born and which disk it is; the node plugin cannot tell either
from the device alone (the guest sees the disk's name as its NVMe serial, and a name can be given
to a new disk once the old one is deleted). The node uses both when it decides whether a device
without a filesystem signature may be formatted: a disk created blank for filesystem use whose
mkfs, started by this node on that very disk, was interrupted may be formatted again; everything
else must read as zeros. The disk's UUID is what ties the node's history to one disk: a new disk
under an old name has another UUID, so it starts with no history. A missing or unknown value
proves nothing.

It also says when the disk is an Oxide read-only disk: the node then mounts it read-only, never
formats or grows it (on a rack the device refuses writes anyway; the flag makes the node refuse
first, with a clear error, rather than fail inside a tool).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from csi_oxide.contract.oxide_rules import is_canonical_uuid

ORIGIN_KEY = "csi.oxide.computer/origin"
DISK_ID_KEY = "csi.oxide.computer/disk-id"
READ_ONLY_KEY = "csi.oxide.computer/read-only"


class Origin(StrEnum):
    """How the disk behind a volume came to be."""

    BLANK = "blank"  # created blank by this driver, for this cluster
    SNAPSHOT = "snapshot"  # restored from a snapshot
    VOLUME = "volume"  # cloned from another volume
    STATIC = "static"  # not made by this driver (no record): a pre-provisioned disk


@dataclass(frozen=True, slots=True)
class Birth:
    """Which disk is behind the volume (its Oxide UUID, which never names another disk) and how
    it came to be; either may be unknown (None). ``read_only``: an Oxide read-only disk."""

    origin: Origin | None = None
    disk_id: str | None = None
    read_only: bool = False


UNKNOWN_BIRTH = Birth()


def encode(birth: Birth) -> dict[str, str]:
    """The ``publish_context`` entries for ``birth`` (unknown parts are left out)."""
    entries: dict[str, str] = {}
    if birth.origin is not None:
        entries[ORIGIN_KEY] = birth.origin.value
    if birth.disk_id is not None:
        entries[DISK_ID_KEY] = birth.disk_id
    if birth.read_only:
        entries[READ_ONLY_KEY] = "true"
    return entries


def decode(context: Mapping[str, str]) -> Birth:
    """The birth in a publish (or NodeStageVolume) context; each part None if absent or not
    well formed (a disk ID must be a canonical UUID); read-only only when the key says "true"."""
    try:
        origin: Origin | None = Origin(context.get(ORIGIN_KEY, ""))
    except ValueError:
        origin = None
    disk_id = context.get(DISK_ID_KEY, "")
    read_only = context.get(READ_ONLY_KEY) == "true"
    return Birth(origin, disk_id if is_canonical_uuid(disk_id) else None, read_only)
