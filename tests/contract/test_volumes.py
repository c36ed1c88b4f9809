from __future__ import annotations

import pytest

from csi_oxide.contract.oxide_rules import BLOCK_SIZES
from csi_oxide.contract.volumes import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FILESYSTEM,
    FILESYSTEMS,
    is_volume_name,
    is_volume_serial,
    serial_of,
)
from csi_oxide.controller import record


def test_a_volume_name_is_its_own_serial() -> None:
    name = record.volume_name("pvc-1")
    assert is_volume_name(name)
    assert serial_of(name) == name.encode()
    assert is_volume_serial(serial_of(name))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "csi-",
        "csi-0123456789abcde",
        "csi-0123456789abcdef0",
        "csi-0123456789ABCDEF",
        "csi-0123456789abcdef\n",
        "snap-0123456789abcdef",
        "xcsi-0123456789abcdef",
    ],
)
def test_other_names_are_not_volumes(name: str) -> None:
    assert not is_volume_name(name)
    assert not is_volume_serial(name.encode())


def test_serial_is_the_first_20_bytes() -> None:
    assert serial_of("a-much-longer-disk-name-here") == b"a-much-longer-disk-n"


def test_defaults_are_among_the_choices() -> None:
    assert DEFAULT_FILESYSTEM in FILESYSTEMS
    assert DEFAULT_BLOCK_SIZE in BLOCK_SIZES
