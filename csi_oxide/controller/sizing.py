"""Oxide disk sizes for capacity ranges (pure)."""

from __future__ import annotations

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.errors import OutOfRangeError
from csi_oxide.oxide.types import GIB, MAX_DISK_SIZE, MIN_DISK_SIZE


def round_up_gib(size: int) -> int:
    """``size`` rounded up to whole GiB."""
    return -(-size // GIB) * GIB


def exact_size(rng: CapacityRange, size: int) -> int:
    """``size``, the only size a read-only disk made from a source of ``size`` bytes can have;
    OUT_OF_RANGE when ``rng`` does not admit it."""
    if rng.required > size or (rng.limit and rng.limit < size):
        raise OutOfRangeError(
            f"a read-only volume is exactly the size of its source, {size} bytes; the request "
            f"asks for required_bytes={rng.required}, limit_bytes={rng.limit or 'none'}"
        )
    return size


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
