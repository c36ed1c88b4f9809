"""Capacity ranges and Oxide disk sizes (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from csi_oxide.errors import OutOfRangeError
from csi_oxide.oxide.types import GIB, MAX_DISK_SIZE, MIN_DISK_SIZE


@dataclass(frozen=True, slots=True)
class CapacityRange:
    """A validated capacity range in bytes; 0 means "not specified"."""

    required: int = 0
    limit: int = 0

    def admits(self, size: int) -> bool:
        """True when a volume of ``size`` bytes satisfies the range."""
        return size >= self.required and (self.limit == 0 or size <= self.limit)


def round_up_gib(size: int) -> int:
    """``size`` rounded up to whole GiB."""
    return -(-size // GIB) * GIB


def disk_size(rng: CapacityRange, *, minimum: int = MIN_DISK_SIZE) -> int:
    """The Oxide disk size for ``rng``: required bytes rounded up to whole GiB, at least ``minimum``
    (1 GiB, or the size of the snapshot or volume a new disk is made from).

    OUT_OF_RANGE when that size breaks ``limit`` or Oxide's maximum disk size (1023 GiB).
    """
    size = round_up_gib(max(rng.required, minimum, MIN_DISK_SIZE))
    if rng.limit and size > rng.limit:
        raise OutOfRangeError(
            f"Oxide disks come in whole GiB of at least {max(minimum, MIN_DISK_SIZE)} bytes here: "
            f"{size} bytes needed for required_bytes={rng.required} exceed limit_bytes={rng.limit}"
        )
    if size > MAX_DISK_SIZE:
        raise OutOfRangeError(
            f"{size} bytes is larger than the largest Oxide disk ({MAX_DISK_SIZE} bytes, 1023 GiB)"
        )
    return size
