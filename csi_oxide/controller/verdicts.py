"""The ownership verdicts this controller has read, kept by disk UUID, so that a volume's later
calls act without reading its disk again.

Oxide never changes a disk's name, description (the driver's record, hence ``owner.of_disk``'s
verdict), block size or read-only flag for the life of its UUID: a verdict read once for a UUID
stays true for that UUID. It says nothing about another UUID, and a name can pass from one UUID to
the next (deleted, then made again: by someone else, or by the volume's own expansion). So:

- verdicts are kept by UUID, and only ever from a disk this process read from the API (an answer
  of ``disk_view`` or ``disk_create``); the name index only says which UUID to try;
- an operation that uses a kept verdict acts by that UUID (attach, detach, delete), never by the
  name: a disk replaced under the name answers 404 instead of being touched, and the operation
  then forgets the UUID and reads the name again;
- what is kept is bounded (``limit`` UUIDs, the least recently used dropped first) and lives in one
  process: a restarted controller starts empty and reads again.

A disk's state (attached where, faulted) changes, and is never kept here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from csi_oxide.controller import owner
from csi_oxide.oxide.types import Disk

# Enough for every volume of a large cluster at a few hundred bytes each; past it a volume's next
# call simply reads its disk again.
DEFAULT_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Known:
    """What never changes for the disk with UUID ``id``: its name, its verdict, its block size and
    whether it is read-only."""

    id: str
    name: str
    claim: owner.Claim
    block_size: int
    read_only: bool


class Verdicts:
    """One controller's verdicts on disks, by UUID (see the module's docstring)."""

    def __init__(self, cluster: str, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._cluster = cluster
        self._limit = limit
        self._by_id: OrderedDict[str, Known] = OrderedDict()
        self._id_of: dict[str, str] = {}  # name -> the UUID last read under it

    def __len__(self) -> int:
        return len(self._by_id)

    def judge(self, disk: Disk) -> owner.Claim:
        """``owner.of_disk`` for ``disk`` as just read from the API, kept under its UUID."""
        claim = owner.of_disk(disk, self._cluster)
        known = Known(disk.id, disk.name, claim, disk.block_size, disk.read_only)
        stale = self._id_of.get(disk.name)
        if stale is not None and stale != disk.id:
            # The name now belongs to another UUID: the one before it is gone.
            self._by_id.pop(stale, None)
        before = self._by_id.get(disk.id)
        if before is not None and before.name != disk.name:  # never from Oxide: names are fixed
            self._id_of.pop(before.name, None)
        self._by_id[disk.id] = known
        self._by_id.move_to_end(disk.id)
        self._id_of[disk.name] = disk.id
        while len(self._by_id) > self._limit:
            _, dropped = self._by_id.popitem(last=False)
            if self._id_of.get(dropped.name) == dropped.id:
                del self._id_of[dropped.name]
        return claim

    def under(self, name: str) -> Known | None:
        """The verdict on the UUID last read under ``name``, if still kept. The name may have
        passed to another disk since: act only by the returned UUID."""
        disk_id = self._id_of.get(name)
        if disk_id is None:
            return None
        known = self._by_id[disk_id]
        self._by_id.move_to_end(disk_id)
        return known

    def forget(self, disk_id: str) -> None:
        """Drop the UUID ``disk_id`` (deleted, or found gone)."""
        known = self._by_id.pop(disk_id, None)
        if known is not None and self._id_of.get(known.name) == disk_id:
            del self._id_of[known.name]

    def forget_name(self, name: str) -> None:
        """Drop whatever UUID was last read under ``name`` (its disk is about to be replaced)."""
        disk_id = self._id_of.get(name)
        if disk_id is not None:
            self.forget(disk_id)
