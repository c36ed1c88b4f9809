"""Which mount options a VolumeCapability may carry: an allow-list, checked one option at a time.

The options come from the StorageClass (or the PV) and reach ``mount -o`` on the node, both when
the volume's filesystem is mounted at the staging path and when it is bound at a publish target.
``mount -o`` takes options that change WHAT is mounted, not only how: ``loop``, ``offset=`` or
``sizelimit=`` put a new loop device over the volume and mount that instead, ``bind``/``move``/
``remount`` turn the call into another operation, ``X-mount.subdir=`` mounts a part of the
filesystem, ext4's ``journal_path=`` and xfs's ``logdev=``/``rtdev=`` bring in another device,
``helper=`` runs a program at unmount. A deny-list of those would have to know every such option
of every util-linux and kernel to come; an allow-list refuses what it has not heard of. So a flag
is accepted only when every comma-separated option in it is one of:

- mount(8)'s filesystem-independent options that set how the mount behaves (``noatime``,
  ``nodev``, ``ro``...);
- the options of the volume's own filesystem (ext4, ext3 or xfs) that tune it, with their values
  checked (``data=ordered``, ``commit=30``, ``allocsize=64k``...).

``ro`` and ``rw`` are both accepted: a read-only publish puts ``ro`` after the caller's options,
and the last of them wins, so a flag can never make a read-only publish writable.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from csi_oxide.errors import InvalidArgumentError

_NUMBER = r"[0-9]{1,10}"
_SIZE = r"[0-9]{1,10}[kKmMgG]?"

# mount(8), "FILESYSTEM-INDEPENDENT MOUNT OPTIONS", less those for fstab and mount(8) itself
# (auto, user, nofail, _netdev, x-*, X-*, owner, group, comment=, context=, ...).
GENERIC = frozenset(
    {
        "defaults",
        "ro",
        "rw",
        "async",
        "sync",
        "dirsync",
        "atime",
        "noatime",
        "diratime",
        "nodiratime",
        "relatime",
        "norelatime",
        "strictatime",
        "nostrictatime",
        "lazytime",
        "nolazytime",
        "iversion",
        "noiversion",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "nosymfollow",
        "silent",
        "loud",
    }
)

# ext4(5), "Mount options for ext4", less those that name another device or file (journal_dev=,
# journal_path=, usrjquota=...), skip the journal (noload, norecovery) or are for debugging.
EXT4 = frozenset(
    {
        "acl",
        "noacl",
        "user_xattr",
        "barrier",
        "nobarrier",
        "discard",
        "nodiscard",
        "delalloc",
        "nodelalloc",
        "auto_da_alloc",
        "noauto_da_alloc",
        "dioread_lock",
        "dioread_nolock",
        "journal_checksum",
        "nojournal_checksum",
        "journal_async_commit",
        "block_validity",
        "noblock_validity",
        "init_itable",
        "noinit_itable",
        "grpid",
        "bsdgroups",
        "nogrpid",
        "sysvgroups",
        "bsddf",
        "minixdf",
        "i_version",
        "nombcache",
        "prefetch_block_bitmaps",
        "no_prefetch_block_bitmaps",
        "quota",
        "noquota",
        "usrquota",
        "grpquota",
        "prjquota",
    }
)
EXT4_VALUES = {
    "data": "journal|ordered|writeback",
    "data_err": "abort|ignore",
    "errors": "continue|remount-ro|panic",
    "barrier": "0|1",
    "commit": _NUMBER,
    "stripe": _NUMBER,
    "min_batch_time": _NUMBER,
    "max_batch_time": _NUMBER,
    "journal_ioprio": "[0-7]",
    "inode_readahead_blks": _NUMBER,
    "init_itable": _NUMBER,
    "max_dir_size_kb": _NUMBER,
    "resuid": _NUMBER,
    "resgid": _NUMBER,
}

# ext4(5), "Mount options for ext3" (which ext3 takes with ext2's): of EXT4's, those that are not
# ext4's own. The ext4-only ones (EXT4_ONLY; "barrier"/"nobarrier" without a value among them, as
# ext3 has barrier=0|1) and the ext4-only values (stripe=, min_batch_time=, max_batch_time=,
# journal_ioprio=, inode_readahead_blks=, max_dir_size_kb=) stay out; the kernel's ext4 driver,
# which serves ext3, refuses several of them on an ext3 mount ("incompatible with ext3"). What
# ext3's section lists beyond EXT4 stays out for the reasons it does for ext4 (journal_dev=,
# journal_path=, usrjquota=, noload, sb=, debug...).
EXT4_ONLY = frozenset(
    {
        "barrier",
        "nobarrier",
        "discard",
        "nodiscard",
        "delalloc",
        "nodelalloc",
        "auto_da_alloc",
        "noauto_da_alloc",
        "dioread_lock",
        "dioread_nolock",
        "journal_checksum",
        "nojournal_checksum",
        "journal_async_commit",
        "block_validity",
        "noblock_validity",
        "init_itable",
        "noinit_itable",
        "i_version",
        "nombcache",
        "prefetch_block_bitmaps",
        "no_prefetch_block_bitmaps",
        "prjquota",
    }
)
EXT3 = EXT4 - EXT4_ONLY
EXT3_VALUES = {
    key: EXT4_VALUES[key]
    for key in ("data", "data_err", "errors", "barrier", "commit", "resuid", "resgid")
}

# xfs(5), "MOUNT OPTIONS", less logdev= and rtdev= (other devices) and norecovery.
XFS = frozenset(
    {
        "discard",
        "nodiscard",
        "grpid",
        "bsdgroups",
        "nogrpid",
        "sysvgroups",
        "filestreams",
        "ikeep",
        "noikeep",
        "inode32",
        "inode64",
        "largeio",
        "nolargeio",
        "noalign",
        "nouuid",
        "swalloc",
        "wsync",
        "uquota",
        "usrquota",
        "quota",
        "uqnoenforce",
        "qnoenforce",
        "gquota",
        "grpquota",
        "gqnoenforce",
        "pquota",
        "prjquota",
        "pqnoenforce",
        "noquota",
    }
)
XFS_VALUES = {
    "allocsize": _SIZE,
    "logbufs": _NUMBER,
    "logbsize": _SIZE,
    "sunit": _NUMBER,
    "swidth": _NUMBER,
}

_BY_FILESYSTEM: Mapping[str, tuple[frozenset[str], Mapping[str, str]]] = {
    "ext4": (EXT4, EXT4_VALUES),
    "ext3": (EXT3, EXT3_VALUES),
    "xfs": (XFS, XFS_VALUES),
}


def mount_flags(flags: Iterable[str], fstype: str) -> tuple[str, ...]:
    """The options in ``flags``, one per item (a flag such as ``"noatime,nodiscard"`` is split
    at its commas), each checked for a ``fstype`` mount; InvalidArgumentError naming the first
    that is empty, malformed or not on the allow-list."""
    return tuple(option for flag in flags for option in _options(flag, fstype))


def _options(flag: str, fstype: str) -> list[str]:
    if any(unicodedata.category(c) == "Cc" for c in flag):
        raise InvalidArgumentError(f"mount flag {flag!r} contains control characters")
    options = [piece.strip() for piece in flag.split(",")]
    for option in options:
        _check(option, flag, fstype)
    return options


def _check(option: str, flag: str, fstype: str) -> None:
    if not option:
        raise InvalidArgumentError(f"mount flag {flag!r} has an empty option (check the commas)")
    where = f"mount option {option!r}" + (f" (in mount flag {flag!r})" if option != flag else "")
    if any(c.isspace() for c in option):
        raise InvalidArgumentError(f"{where} contains whitespace")
    words, values = _BY_FILESYSTEM.get(fstype, (frozenset(), {}))
    name, sep, value = option.partition("=")
    if not sep and (name in GENERIC or name in words):
        return
    pattern = values.get(name)
    if sep and pattern is not None:
        if re.fullmatch(pattern, value):
            return
        raise InvalidArgumentError(f"{where}: {fstype} does not take that value ({name}={pattern})")
    raise InvalidArgumentError(
        f"{where} is not allowed for {fstype} volumes: accepted are mount(8)'s "
        f"filesystem-independent options and {fstype}'s own tuning options, never one that "
        "changes what is mounted (loop, offset=, sizelimit=, bind, remount...)"
    )
