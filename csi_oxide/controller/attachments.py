"""Where this controller last attached each disk: a hint that turns a repeated
ControllerPublishVolume into a read instead of a change.

A CO may send the same ControllerPublishVolume again right after it succeeded (Kubernetes'
external-attacher does when its informer has not yet seen the VolumeAttachment it just marked
attached). An attach is one of Oxide's slow changes (hundreds of milliseconds), a read one of
its quick answers; the attach would change nothing. So, for a disk this process attached to a
node, a repeat first reads the disk, by its UUID, and answers from what Oxide says now.

Only a hint: a disk's state (attached where) can change behind the driver's back at any moment,
so it is never an answer on its own. A read that does not show the disk attached to that very
node sends the attach as before. Kept by disk UUID (a replaced disk is never the one read), for
one process, bounded like the verdicts (``controller.verdicts``).
"""

from __future__ import annotations

from collections import OrderedDict

from csi_oxide.controller.verdicts import DEFAULT_LIMIT


class Attachments:
    """Disk UUID -> the instance this controller last attached it to (see the module)."""

    def __init__(self, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._node_of: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._node_of)

    def attached(self, disk_id: str, node_id: str) -> None:
        """The attach of ``disk_id`` to ``node_id`` succeeded."""
        self._node_of[disk_id] = node_id
        self._node_of.move_to_end(disk_id)
        while len(self._node_of) > self._limit:
            self._node_of.popitem(last=False)

    def likely(self, disk_id: str, node_id: str) -> bool:
        """Whether this controller last attached ``disk_id`` to ``node_id`` (to be confirmed by
        a read)."""
        return self._node_of.get(disk_id) == node_id

    def gone(self, disk_id: str) -> None:
        """``disk_id`` was detached, deleted, or found elsewhere: no hint for it."""
        self._node_of.pop(disk_id, None)
