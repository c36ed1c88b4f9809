"""The mount options a VolumeCapability may carry, option by option (issue 24, item 4).

Both NodeStageVolume and NodePublishVolume (and the controller's RPCs) validate their capability
with ``parse.capability``, so what is refused here never reaches ``mount -o``;
``tests/node/test_node_escape_loop.py`` shows it on real loop devices, and mounts with every
accepted option to show that each one mounts the volume itself.
"""

from __future__ import annotations

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.mount_options import (
    EXT3,
    EXT3_VALUES,
    EXT4,
    EXT4_VALUES,
    GENERIC,
    XFS,
    mount_flags,
)
from csi_oxide.errors import InvalidArgumentError
from csi_oxide.server import parse

Mode = csi.VolumeCapability.AccessMode


def _capability(fstype: str, *flags: str) -> parse.Capability:
    mount = csi.VolumeCapability.MountVolume(fs_type=fstype, mount_flags=list(flags))
    return parse.capability(
        csi.VolumeCapability(mount=mount, access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER))
    )


@pytest.mark.parametrize(
    ("fstype", "option"),
    [("ext4", o) for o in sorted(GENERIC | EXT4)]
    + [("ext3", o) for o in sorted(GENERIC | EXT3)]
    + [("xfs", o) for o in sorted(GENERIC | XFS)],
)
def test_every_listed_option_is_accepted_for_its_filesystem(fstype: str, option: str) -> None:
    assert _capability(fstype, option).mount_flags == (option,)


@pytest.mark.parametrize(
    ("fstype", "option"),
    [
        ("ext4", "data=ordered"),
        ("ext4", "data=writeback"),
        ("ext4", "errors=remount-ro"),
        ("ext4", "commit=30"),
        ("ext4", "barrier=0"),
        ("ext4", "journal_ioprio=7"),
        ("ext4", "inode_readahead_blks=64"),
        ("ext3", "data=journal"),
        ("ext3", "data_err=abort"),
        ("ext3", "errors=remount-ro"),
        ("ext3", "commit=30"),
        ("ext3", "barrier=0"),
        ("ext3", "resuid=0"),
        ("xfs", "allocsize=64k"),
        ("xfs", "logbsize=256k"),
        ("xfs", "logbufs=8"),
        ("xfs", "sunit=8"),
    ],
)
def test_options_with_values_are_accepted(fstype: str, option: str) -> None:
    assert _capability(fstype, option).mount_flags == (option,)


def test_ext3_takes_ext4s_options_less_ext4s_own() -> None:
    """ext4(5): ext3's options are ext2's and its own; of ext4's list, ext3 takes those."""
    assert EXT3 < EXT4
    assert EXT3_VALUES.items() < EXT4_VALUES.items()


@pytest.mark.parametrize(
    "option",
    [
        "barrier",
        "nobarrier",
        "discard",
        "nodiscard",
        "delalloc",
        "nodelalloc",
        "auto_da_alloc",
        "dioread_nolock",
        "journal_checksum",
        "journal_async_commit",
        "block_validity",
        "noinit_itable",
        "i_version",
        "nombcache",
        "prjquota",
        "stripe=16",
        "min_batch_time=0",
        "max_batch_time=15000",
        "journal_ioprio=3",
        "inode_readahead_blks=32",
        "init_itable=10",
        "max_dir_size_kb=1024",
    ],
)
def test_ext4s_own_options_are_invalid_for_ext3(option: str) -> None:
    assert _capability("ext4", option).mount_flags == (option,)
    with pytest.raises(InvalidArgumentError, match="not allowed for ext3 volumes"):
        _capability("ext3", option)


def test_a_flag_is_split_at_its_commas_and_its_options_stripped() -> None:
    cap = _capability("ext4", "noatime, nodiratime", "data=ordered", " nodiscard ")
    assert cap.mount_flags == ("noatime", "nodiratime", "data=ordered", "nodiscard")


def test_ro_and_rw_are_both_accepted() -> None:
    # A read-only publish puts "ro" after these, and the last one wins (LinuxMounter.bind).
    assert _capability("ext4", "rw", "ro").mount_flags == ("rw", "ro")


@pytest.mark.parametrize(
    ("fstype", "flag"),
    [
        # a new loop device over the volume
        ("ext4", "loop"),
        ("ext4", "loop=/dev/loop7"),
        ("ext4", "offset=0"),
        ("ext4", "sizelimit=1073741824"),
        ("ext4", "encryption=aes"),
        ("ext4", "noatime,loop"),
        ("ext4", "loop,noatime"),
        ("ext4", "noatime, offset=0"),
        ("xfs", "nouuid,loop"),
        ("ext3", "loop"),
        ("ext3", "noatime,offset=0"),
        # another operation than a mount
        ("ext4", "bind"),
        ("ext4", "rbind"),
        ("ext4", "move"),
        ("ext4", "remount"),
        ("ext4", "noatime,remount"),
        ("ext4", "make-private"),
        ("ext4", "make-rshared"),
        # a part of the filesystem, a program, another device or file
        ("ext4", "X-mount.subdir=lost+found"),
        ("ext4", "X-mount.mkdir"),
        ("ext4", "x-systemd.automount"),
        ("ext4", "helper=nfs"),
        ("ext4", "uhelper=udisks2"),
        ("ext4", "journal_path=/dev/sdb"),
        ("ext3", "journal_path=/dev/sdb"),
        ("ext3", "journal_dev=2049"),
        ("ext3", "usrjquota=aquota.user"),
        ("ext3", "jqfmt=vfsv0"),
        ("ext4", "journal_dev=2049"),
        ("ext4", "usrjquota=aquota.user"),
        ("xfs", "logdev=/dev/sdb"),
        ("xfs", "rtdev=/dev/sdb"),
        # skipping the journal, a superblock of one's choosing, debugging
        ("ext4", "noload"),
        ("ext4", "norecovery"),
        ("xfs", "norecovery"),
        ("ext4", "sb=32768"),
        ("ext3", "noload"),
        ("ext3", "norecovery"),
        ("ext3", "sb=32768"),
        ("ext3", "debug"),
        ("ext3", "nouuid"),
        ("ext3", "data=bogus"),
        ("ext4", "abort"),
        ("ext4", "dax"),
        # fstab's, mount(8)'s own, another filesystem's, SELinux's
        ("ext4", "user"),
        ("ext4", "nofail"),
        ("ext4", "_netdev"),
        ("ext4", "uid=0"),
        ("ext4", 'context="system_u:object_r:container_file_t:s0"'),
        ("ext4", "nouuid"),
        ("xfs", "data=ordered"),
        ("ext4", "NOATIME"),
        # values out of their range
        ("ext4", "data=bogus"),
        ("ext4", "commit=-1"),
        ("ext4", "journal_ioprio=8"),
        ("ext4", "errors=ignore"),
        ("xfs", "allocsize=1T"),
        ("xfs", "logbufs="),
    ],
)
def test_every_other_option_is_invalid_argument(fstype: str, flag: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"not allowed|does not take"):
        _capability(fstype, flag)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("", "empty option"),
        (",", "empty option"),
        ("noatime,", "empty option"),
        (",noatime", "empty option"),
        ("noatime,,nodiratime", "empty option"),
        ("   ", "empty option"),
        ("no atime", "whitespace"),
        ("noatime\n", "control characters"),
        ("noatime\x00", "control characters"),
        ("\tnoatime", "control characters"),
        ("noatime\x1b[2J", "control characters"),
    ],
)
def test_malformed_flags_are_invalid_argument(flag: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        mount_flags([flag], "ext4")


def test_the_message_names_the_option_and_its_flag() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        _capability("ext4", "noatime,loop")
    assert "'noatime,loop'" in str(refused.value) and "'loop'" in str(refused.value)


def test_a_block_capability_carries_no_options() -> None:
    block = csi.VolumeCapability(
        block=csi.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)
    )
    assert parse.capability(block).mount_flags == ()
