"""What ControllerPublishVolume tells the node plugin through ``publish_context``.

The controller knows how a disk was born; the node plugin cannot tell from the device alone. The
node uses the origin when it decides whether a device without a filesystem signature may be
formatted (a disk created blank for filesystem use whose mkfs was interrupted may be formatted
again; everything else must read as zeros). A missing or unknown value proves nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

ORIGIN_KEY = "csi.oxide.computer/origin"


class Origin(StrEnum):
    """How the disk behind a volume came to be."""

    BLANK = "blank"  # created blank by this driver, for this cluster
    SNAPSHOT = "snapshot"  # restored from a snapshot
    VOLUME = "volume"  # cloned from another volume
    STATIC = "static"  # not made by this driver (no record): a pre-provisioned disk


def encode(origin: Origin) -> dict[str, str]:
    """The ``publish_context`` entries for ``origin``."""
    return {ORIGIN_KEY: origin.value}


def decode(context: Mapping[str, str]) -> Origin | None:
    """The origin in a publish (or NodeStageVolume) context; None if absent or unknown."""
    try:
        return Origin(context.get(ORIGIN_KEY, ""))
    except ValueError:
        return None
