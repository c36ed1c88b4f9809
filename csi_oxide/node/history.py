"""A disk's format history on this node: its states, and the rules that read and move them.

The history is what this plugin did to the contents of the disk behind a volume. It is kept in
the volume's record (``VolumeRecord.history``, with the disk's UUID: a history speaks only for
its own disk) and is one of:

- ``""``: nothing; whether the disk is blank is for its device to show.
- ``MKFS_STARTED``: this plugin proved the disk blank and started mkfs on it (saved and fsynced
  before mkfs writes a byte). A mkfs cut short leaves metadata and no superblock behind.
- ``MKFS_DONE``: mkfs completed: the disk has carried a whole filesystem and is never blank again.
- ``RAW``: the disk was handed out as a raw block device: its contents are someone's data.

The rules decide, from the history and what ``ops.py`` found on the device (what ``blkid -p``
recognised, whether it reads as zeros) and heard from the controller (``publish_context``),
whether the device may be formatted and which history each step leaves. They only decide: no
I/O, nothing saved. ``state.py`` keeps the records durably, and ``ops.py`` reads the device,
saves each history before the step it stands for and runs mkfs; the rule itself reads here, in
one place, beside the states it reads. Why it is so: ``docs/node-safety.md``, "Formatting".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from csi_oxide.contract.publish_context import Birth, Origin
from csi_oxide.errors import FailedPreconditionError

if TYPE_CHECKING:  # the rules read what blkid found; they never run it
    from csi_oxide.node.fs import Signature

MKFS_STARTED = "mkfs-started"
MKFS_DONE = "mkfs-done"
RAW = "raw"
HISTORIES = ("", MKFS_STARTED, MKFS_DONE, RAW)


def handed_out_raw(history: str) -> str:
    """The history once the disk is handed out as a raw block device: ``raw``, what is written
    through it being someone's data (an interrupted mkfs's disk too), unless the history already
    says the disk holds data (``mkfs-done`` stays)."""
    return RAW if history in ("", MKFS_STARTED) else history


def mkfs_finished(history: str) -> bool:
    """Whether finding the filesystem asked for on the disk completes its history: after
    ``mkfs-started``, a superblock of that filesystem means the mkfs did finish (the plugin died
    before recording it), and the history becomes ``mkfs-done``."""
    return history == MKFS_STARTED


def interrupted_mkfs(history: str, recorded_disk: str | None, disk_id: str | None) -> bool:
    """Whether the history (about the disk ``recorded_disk``) says this plugin started mkfs on
    the disk ``disk_id`` itself and that mkfs never completed; never for an unknown disk."""
    return history == MKFS_STARTED and disk_id is not None and recorded_disk == disk_id


def vouched_blank(birth: Birth, history: str, recorded_disk: str | None) -> bool:
    """Whether the disk counts as blank without reading as zeros: the controller says it created
    the disk blank, and the history says this plugin's own mkfs on that very disk never
    completed (what a kill in the middle of mkfs leaves, which the zero check refuses for ever).
    """
    return birth.origin is Origin.BLANK and interrupted_mkfs(history, recorded_disk, birth.disk_id)


def check_formattable(
    where: str, history: str, found: Signature, fstype: str, *, zeros: bool, vouched: bool
) -> None:
    """FailedPreconditionError unless the device ``where`` names, which does not hold ``fstype``,
    may be formatted with it. Never over any signature ``blkid -p`` found (``found``), nor a
    disk whose history says it holds data; otherwise only when it reads as zeros (``zeros``) or
    ``vouched_blank`` says it is blank all the same (``vouched``)."""
    if found.found:
        what = found.fstype or found.pttype or found.usage
        raise FailedPreconditionError(
            f"{where} holds {what!r}, not {fstype}; it was left untouched (a volume is never "
            "re-formatted)"
        )
    if history in (MKFS_DONE, RAW):
        was = "a complete filesystem" if history == MKFS_DONE else "raw block data"
        raise FailedPreconditionError(
            f"{where} has no filesystem signature, but this node recorded that it held {was}; "
            "it is not blank and was left untouched"
        )
    if not zeros and not vouched:
        raise FailedPreconditionError(
            f"{where} has no filesystem but is not blank (it holds data, perhaps written in "
            "raw block mode, or by an interrupted mkfs of a disk this node cannot prove was "
            "created blank); it was left untouched"
        )
