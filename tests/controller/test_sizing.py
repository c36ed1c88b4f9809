from __future__ import annotations

import pytest

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller.sizing import disk_size
from csi_oxide.errors import OutOfRangeError
from tests.units import GIB


@pytest.mark.parametrize(
    ("rng", "minimum", "size"),
    [
        (CapacityRange(0, 0), GIB, GIB),
        (CapacityRange(1, 0), GIB, GIB),
        (CapacityRange(GIB, GIB), GIB, GIB),
        (CapacityRange(GIB + 1, 0), GIB, 2 * GIB),
        (CapacityRange(0, 5 * GIB), GIB, GIB),
        (CapacityRange(1023 * GIB, 0), GIB, 1023 * GIB),
        (CapacityRange(GIB, 0), 3 * GIB, 3 * GIB),  # from a 3 GiB snapshot
        (CapacityRange(5 * GIB, 0), 3 * GIB, 5 * GIB),
    ],
)
def test_disk_size(rng: CapacityRange, minimum: int, size: int) -> None:
    assert disk_size(rng, minimum=minimum) == size


@pytest.mark.parametrize(
    ("rng", "minimum"),
    [
        (CapacityRange(GIB + 1, GIB + 100), GIB),  # rounding up breaks the limit
        (CapacityRange(0, 100), GIB),  # below the 1 GiB minimum
        (CapacityRange(1024 * GIB, 0), GIB),  # above Oxide's maximum
        (CapacityRange(0, 2 * GIB), 3 * GIB),  # smaller than the source
    ],
)
def test_out_of_range(rng: CapacityRange, minimum: int) -> None:
    with pytest.raises(OutOfRangeError):
        disk_size(rng, minimum=minimum)


def test_admits() -> None:
    assert CapacityRange(GIB, 0).admits(5 * GIB)
    assert not CapacityRange(GIB, GIB).admits(2 * GIB)
    assert not CapacityRange(2 * GIB, 0).admits(GIB)


@pytest.mark.parametrize(
    ("rng", "size", "admitted"),
    [
        (CapacityRange(GIB, GIB), GIB, True),  # exactly the limit and exactly the requirement
        (CapacityRange(GIB, 0), GIB, True),  # exactly the requirement, no limit
        (CapacityRange(0, 2 * GIB), 2 * GIB, True),  # exactly the limit
        (CapacityRange(0, 2 * GIB), 2 * GIB + 1, False),  # one byte over the limit
        (CapacityRange(2 * GIB, 0), 2 * GIB - 1, False),  # one byte short
    ],
)
def test_admits_boundaries(rng: CapacityRange, size: int, admitted: bool) -> None:
    assert rng.admits(size) is admitted


def test_disk_size_boundaries() -> None:
    assert disk_size(CapacityRange(2 * GIB, 2 * GIB)) == 2 * GIB  # rounded size == limit fits
    assert disk_size(CapacityRange(1023 * GIB, 1023 * GIB)) == 1023 * GIB  # == Oxide's maximum
    with pytest.raises(OutOfRangeError):
        disk_size(CapacityRange(1023 * GIB + 1, 0))  # rounds up past the maximum
