"""What a volume of this driver is, as both the controller and the node must agree: what can be a
volume (or snapshot) ID, the name of its Oxide disk, the NVMe serial a guest sees for it, the
filesystems and block size it may have, and the range of sizes a request asks of it (parsed by the
servicers' shared ``server.parse``; ``controller.sizing`` turns it into a disk size).

These are the driver's own rules; Oxide's (names, block sizes, disks per instance) are in
``csi_oxide.contract.oxide_rules``. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from csi_oxide.contract.oxide_rules import is_valid_name
from csi_oxide.errors import NotFoundError

VOLUME_PREFIX = "csi-"
# The disk name of a volume: the prefix and 16 hex digits of a SHA-256 (see controller.record).
_VOLUME_NAME = VOLUME_PREFIX + "[0-9a-f]{16}"
# Matched with fullmatch: ``$`` would also accept a final newline.
_VOLUME_RE = re.compile(_VOLUME_NAME)
_VOLUME_SERIAL_RE = re.compile(_VOLUME_NAME.encode())

SERIAL_BYTES = 20  # an NVMe serial: the guest sees the first 20 bytes of the disk name

# The filesystems the node formats, mounts and grows (ext3 is served by the kernel's ext4 driver
# and made, checked and grown by the same e2fsprogs as ext4).
FILESYSTEMS = ("ext4", "ext3", "xfs")
DEFAULT_FILESYSTEM = "ext4"  # for a mount capability without an fs_type
DEFAULT_BLOCK_SIZE = 4096  # for a blank volume without a blockSize parameter


def require_id(value: str, what: str = "volume") -> str:
    """``value`` when it can be the ID of a volume or snapshot; NotFoundError otherwise.

    IDs are Oxide names (a volume ID is its disk's name, a snapshot ID its snapshot's; made by
    this driver or not, for static volumes), never UUIDs: anything else names nothing, so it is
    answered locally and never sent to Oxide. Both services check with this in their ops layer
    (``ControllerOps``, ``NodeOps``), each before taking the volume's guard; the deletes, which
    answer OK for what does not exist, ask ``is_valid_name`` instead.
    """
    if not is_valid_name(value):
        raise NotFoundError(f"{what} {value!r} does not exist ({what} IDs are Oxide names)")
    return value


def is_volume_name(name: str) -> bool:
    """True for the disk names this driver gives its volumes."""
    return bool(_VOLUME_RE.fullmatch(name))


def serial_of(volume_id: str) -> bytes:
    """The serial the guest sees for the disk named ``volume_id``."""
    return volume_id.encode()[:SERIAL_BYTES]


def is_volume_serial(serial: bytes) -> bool:
    """True for a serial (already stripped of padding) of a disk this driver made."""
    return bool(_VOLUME_SERIAL_RE.fullmatch(serial))


@dataclass(frozen=True, slots=True)
class CapacityRange:
    """A validated capacity range in bytes; 0 means "not specified"."""

    required: int = 0
    limit: int = 0

    def admits(self, size: int) -> bool:
        """True when a volume of ``size`` bytes satisfies the range."""
        return size >= self.required and (self.limit == 0 or size <= self.limit)
