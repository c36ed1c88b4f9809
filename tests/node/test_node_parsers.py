"""Pure pieces of the node: serials, blkid, superblock sizes, fs type choice."""

from __future__ import annotations

import pytest

from csi_oxide.contract.volumes import serial_of
from csi_oxide.errors import InvalidArgumentError
from csi_oxide.node import fs
from csi_oxide.node.devices import BlockDevice, normalize_serial, volume_slots


def test_serial_is_the_first_20_bytes_of_the_name() -> None:
    assert serial_of("csi-0123456789abcdef") == b"csi-0123456789abcdef"
    assert serial_of("a-much-longer-disk-name-here") == b"a-much-longer-disk-n"


@pytest.mark.parametrize(
    "raw", [b"csi-0123456789abcdef", b"csi-0123456789abcdef\n", b"csi-0123456789abcdef\x00\x00  "]
)
def test_serial_padding_is_stripped(raw: bytes) -> None:
    assert normalize_serial(raw) == b"csi-0123456789abcdef"


def test_blkid_export() -> None:
    sig = fs.parse_blkid_export("DEVNAME=/dev/loop1\nUUID=1234\nTYPE=ext4\nUSAGE=filesystem\n")
    assert (sig.fstype, sig.found) == ("ext4", True)
    # What blkid -p says of an ext3 (SEC_TYPE: ext2 could read it too): ext3, nothing else.
    ext3 = fs.parse_blkid_export("SEC_TYPE=ext2\nBLOCK_SIZE=4096\nTYPE=ext3\nUSAGE=filesystem\n")
    assert (ext3.fstype, ext3.found) == ("ext3", True)
    table = fs.parse_blkid_export("DEVNAME=/dev/loop1\nPTUUID=ab\nPTTYPE=gpt\n")
    assert (table.fstype, table.pttype, table.found) == ("", "gpt", True)
    assert not fs.parse_blkid_export("").found


def test_superblock_sizes() -> None:
    dump = "Filesystem volume name:   <none>\nBlock count:              262144\nBlock size:  4096\n"
    assert fs.parse_dumpe2fs(dump) == 1 << 30
    assert fs.parse_xfs_db("dblocks = 524288\nblocksize = 4096\n") == 2 << 30


@pytest.mark.parametrize(
    ("asked", "chosen"), [("", "ext4"), ("ext4", "ext4"), ("ext3", "ext3"), ("xfs", "xfs")]
)
def test_fstype_choice(asked: str, chosen: str) -> None:
    assert fs.check_fstype(asked) == chosen


@pytest.mark.parametrize("asked", ["btrfs", "vfat", "ext2", "EXT3"])
def test_other_filesystems_are_refused(asked: str) -> None:
    with pytest.raises(InvalidArgumentError, match=asked):
        fs.check_fstype(asked)


def _disk(name: str, serial: bytes) -> BlockDevice:
    return BlockDevice(f"/dev/{name}", serial, f"/sys/devices/virtual/block/{name}", "259:0")


def test_volume_slots_count_only_foreign_nvme_disks() -> None:
    devices = [
        _disk("nvme0n1", b"boot-disk"),  # the boot disk takes a slot
        _disk("nvme1n1", b"csi-0123456789abcdef"),  # a CSI volume does not
        _disk("nvme2n1", b"csi-0123456789ABCDEF"),  # not a driver-made name: a slot
        _disk("loop0", b"scratch"),  # a simulator loop device is not an NVMe slot
    ]
    assert volume_slots(devices) == 10
    assert volume_slots([]) == 12
    assert volume_slots([_disk(f"nvme{i}n1", b"x") for i in range(14)]) == 0


STATUS = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{}\nCapBnd:\t000001ffffffffff\n"


@pytest.mark.parametrize(
    ("cap_eff", "has"), [("000001ffffffffff", True), ("000001fffeffffff", False), ("0", False)]
)
def test_capability_from_proc_status(cap_eff: str, has: bool) -> None:
    assert fs.has_capability(STATUS.format(cap_eff), fs.CAP_SYS_RESOURCE) is has
    assert not fs.has_capability("Name:\tx\n", fs.CAP_SYS_RESOURCE)
