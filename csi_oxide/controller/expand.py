"""Offline expansion: Oxide cannot resize a disk, so the driver re-creates it from a snapshot.

This module owns an expansion's whole life: its start (``Expander.expand``), its resumption by
whichever call meets the volume next (``resume`` before CreateVolume, ``settle`` before any other
operation and in the reconciler's pass, ``discard`` in DeleteVolume), and the rule that recognises
its records and leftovers (``is_expansion_record``, ``leftover_name``, ``leftover_record``).

The steps, each resumable from what exists in Oxide (all names are deterministic):

1. check that the disk is ours, detached, smaller than asked, and that the silo quota holds the
   new size;
2. snapshot the disk as ``tmp-grow-<hash>``; the snapshot's description carries the disk's own
   record plus the old and new sizes, so the snapshot alone is enough to finish or undo the work;
3. delete the disk;
4. create the disk again under the same name from the snapshot, at the new size (on a late 507,
   create it at the old size instead and answer RESOURCE_EXHAUSTED);
5. delete the snapshot.

The data always sits in at least one durable object. When the disk exists, any ``tmp-grow-``
snapshot of it is redundant (the disk holds the data), with one exception that is treated as an
error rather than guessed at: a disk that is neither the one the snapshot was taken of nor made
from it (someone else's, made under the name after step 3).

Deletes address the disk or snapshot that was checked by its UUID, never by name: between the check
and the delete, someone else may have replaced it with an object of their own under the same name.

Records and leftovers. An expansion writes one record of its own, on its snapshot (step 2): the
disk's record plus ``grow_from`` and ``grow_to``. That record belongs there only: a disk whose
record carries ``grow_to`` is foreign (the record was copied onto it), and a ``tmp-grow-`` snapshot
is this cluster's only when its record carries ``grow_to`` and derives that very name from the
volume's. ``controller.owner`` applies this rule in its verdicts by asking this module, which
therefore never imports ``owner``: the verdict on the volume's disk, which step 1 needs, is read
by the caller (``owner.of_disk``), as every operation of ``ControllerOps`` reads its own.

The guard. Every method of ``Expander`` reads or changes one volume's disk and expansion snapshot,
and runs under that volume's guard (the per-volume ``InFlight``, keyed by the volume ID, which is
the disk's name), so that two of them never work on one volume at once. The expander holds no guard
of its own: the one ``InFlight`` is built in ``csi_oxide.wiring`` and handed to the only callers,
``ControllerOps`` and the ``Reconciler``, which bring it in one of two ways, and only these:

- held: the caller's RPC is on the volume and took its guard on entry, and calls the methods
  directly: CreateVolume (``resume``), ControllerExpandVolume (``settle``, then ``expand``),
  ControllerPublishVolume (``settle``), DeleteVolume (``pending``, ``discard``);
- aside: the caller meets the volume while it works on something else, without its guard:
  ControllerGetVolume, the source volume of a snapshot, an image or a clone, the reconciler's pass.
  It calls ``settle_aside``, which takes the volume's guard for the settle alone and answers
  ABORTED while another operation on the volume holds it (the reconciler then skips the volume).

``settle_aside`` is the one place the guard is taken for an expansion's sake; nothing calls the
other methods without holding it.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller import lookup, record
from csi_oxide.controller.sizing import disk_size
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import (
    OxideAlreadyExistsError,
    OxideInsufficientCapacityError,
    OxideInvalidRequestError,
    OxideNotFoundError,
)
from csi_oxide.oxide.types import Disk, DiskSpec, Snapshot


def is_expansion_record(rec: record.Record) -> bool:
    """True when ``rec`` is an expansion's (it carries ``grow_to``). It belongs on that expansion's
    snapshot: a disk that carries it is foreign (``owner.of_disk``), the record copied onto it."""
    return rec.grow_to != 0


def leftover_name(rec: record.Record) -> str:
    """The expansion snapshot ``rec`` was written for (``tmp-grow-`` + hash of its volume's disk
    name); "" when ``rec`` is no expansion's."""
    return record.grow_snapshot_name(rec.disk_name()) if is_expansion_record(rec) else ""


def leftover_record(snap: Snapshot, cluster: str) -> record.Record | None:
    """The record of ``snap`` when it is an expansion snapshot of ``cluster`` (our marker, and an
    expansion record that derives this very name: ``owner.of_snapshot`` says OURS of it); None for
    anything else, which an expansion never uses or deletes."""
    rec = record.owned_by(snap.description, cluster)
    if rec is None or leftover_name(rec) != snap.name:
        return None
    return rec


class Expander:
    """Grows (and repairs half-grown) disks of one cluster, each under its volume's guard, which
    the caller brings (see the module's docstring)."""

    def __init__(self, api: OxideApi, *, cluster: str) -> None:
        self._api = api
        self._cluster = cluster

    async def expand(self, disk: Disk, rec: record.Record | None, capacity: CapacityRange) -> int:
        """Grow volume ``disk.name`` to satisfy ``capacity``, from start to end; returns the disk's
        size in bytes. ``disk`` is the volume's disk as ``settle`` left it, and usable by the
        caller's verdict (``owner.of_disk``); ``rec``, the record that verdict found (None: a
        static disk, which is refused)."""
        volume_id = disk.name
        if rec is None:
            raise FailedPreconditionError(
                f"volume {volume_id} was not provisioned by this driver in this cluster; "
                "expanding it would re-create the disk and lose its identity, so it is refused"
            )
        if disk.size >= capacity.required:
            if capacity.limit and disk.size > capacity.limit:
                raise OutOfRangeError(
                    f"volume {volume_id} already has {disk.size} bytes, more than limit_bytes="
                    f"{capacity.limit}; an Oxide disk cannot shrink"
                )
            return disk.size
        if disk.read_only:
            raise InvalidArgumentError(
                f"volume {volume_id} is a read-only Oxide disk, exactly the size of the snapshot "
                "or image it was made from; it cannot be expanded (restore it into a writable "
                "volume of the size you need instead)"
            )
        if disk.published and disk.instance_id:
            node = await lookup.instance_label(self._api, disk.instance_id)
            raise FailedPreconditionError(
                f"volume {volume_id} is attached to node {node}: Oxide disks can only be expanded "
                "while detached (offline expansion); the resizer retries once the pod using it "
                "is gone"
            )
        if disk.published:
            raise FailedPreconditionError(
                f"volume {volume_id} is {disk.state}: Oxide disks can only be expanded while "
                "detached (offline expansion)"
            )
        new_size = disk_size(capacity, minimum=disk.size)
        await self._check_quota(volume_id, disk.size, new_size)
        snap = await self._take_snapshot(disk, replace(rec, grow_from=disk.size, grow_to=new_size))
        await self._delete_original(disk, snap)
        return await self._recreate(volume_id, snap)

    async def resume(self, volume_id: str, csi_name: str) -> Disk | None:
        """Before CreateVolume of ``csi_name`` makes its disk ``volume_id``: the disk after
        finishing an expansion of the volume that a crash interrupted (its data may sit only in
        the expansion snapshot: a blank disk must never take its place); None when there is no
        such expansion. An expansion snapshot under the volume's name that is not this cluster's
        is refused (ALREADY_EXISTS) and left untouched."""
        snap = await lookup.snapshot_or_none(self._api, record.grow_snapshot_name(volume_id))
        if snap is None:
            return None
        if leftover_record(snap, self._cluster) is None:
            raise AlreadyExistsError(
                f"volume name {csi_name!r} maps to Oxide disk {volume_id}, and an expansion "
                f"snapshot {snap.name} of that disk exists that is not this cluster's; nothing "
                "was created and the snapshot was left untouched"
            )
        return await self.settle(volume_id)

    async def settle_aside(self, guard: InFlight, volume_id: str, what: str) -> Disk | None:
        """``settle`` for a caller that met ``volume_id`` without holding its guard: takes the
        volume's guard in ``guard`` for the settle alone (``what``: the operation, as another
        call refused meanwhile is told); AbortedError while another operation holds it."""
        return await guard.run([volume_id], what, self.settle(volume_id))

    async def settle(self, volume_id: str) -> Disk | None:
        """Finish whatever expansion of ``volume_id`` a crash interrupted; the disk afterwards
        (None when there is neither a disk nor an expansion snapshot of this cluster).

        Only an expansion snapshot that is ours (``leftover_record``) is ever used or deleted;
        any other snapshot under that name is left alone.
        """
        disk = await lookup.disk_or_none(self._api, volume_id)
        snap = await self.pending(volume_id)
        if snap is None:
            return disk
        if disk is None:
            await self._recreate(volume_id, snap)
            return await self._api.disk_view(volume_id)
        _check_redundant(disk, snap)
        await self._delete_snapshot(snap)
        return disk

    async def pending(self, volume_id: str) -> Snapshot | None:
        """This cluster's expansion snapshot of ``volume_id``, if one exists."""
        snap = await lookup.snapshot_or_none(self._api, record.grow_snapshot_name(volume_id))
        if snap is None or leftover_record(snap, self._cluster) is None:
            return None
        return snap

    async def discard(self, volume_id: str) -> None:
        """Delete the expansion snapshot of a volume being deleted (DeleteVolume's cleanup); only
        this cluster's own."""
        snap = await self.pending(volume_id)
        if snap is not None:
            await self._delete_snapshot(snap)

    async def _check_quota(self, volume_id: str, old: int, new: int) -> None:
        # The snapshot (old size) is counted until the disk is deleted; then the new disk is.
        free = (await self._api.utilization_view()).free_storage
        if free < new:
            raise ResourceExhaustedError(
                f"expanding volume {volume_id} from {old} to {new} bytes needs {new} bytes of "
                f"silo quota free while it is re-created; {free} are free. Nothing was changed."
            )

    async def _take_snapshot(self, disk: Disk, rec: record.Record) -> Snapshot:
        name = record.grow_snapshot_name(disk.name)
        try:
            snap = await self._api.snapshot_create(name, rec.encode(), disk.name)
        except OxideAlreadyExistsError:
            pass
        else:
            if snap.disk_id == disk.id:
                return snap
            # Taken by name of a disk made under the volume's name since the check: not ours.
            await self._delete_snapshot(snap)
            raise NotFoundError(
                f"volume {disk.name} does not exist any more: its disk was deleted and another "
                "disk made under its name while it was being expanded (that disk was left "
                "untouched)"
            )
        # Made by a retried request of ours, or something else under our name: the disk is deleted
        # next, so only a snapshot that is ours AND of this very disk may hold its data.
        snap = await self._api.snapshot_view(name)
        if leftover_record(snap, self._cluster) is None or snap.disk_id != disk.id:
            raise InternalError(
                f"expansion snapshot name {name} of volume {disk.name} is taken by a snapshot "
                "that is not this expansion's; nothing was changed, and it was left untouched for "
                "an operator to inspect"
            )
        return snap

    async def _delete_original(self, disk: Disk, snap: Snapshot) -> None:
        try:
            await self._api.disk_delete(disk.id)  # by UUID: never a disk made since the check
        except OxideNotFoundError:
            return  # a retried request deleted it (or someone else did: the snapshot holds it)
        except OxideInvalidRequestError as exc:
            await self._delete_snapshot(snap)  # nothing else changed: undo step 2
            raise FailedPreconditionError(
                f"Oxide refused to delete volume {disk.name} for re-creation ({exc.message}); "
                "nothing was changed"
            ) from exc

    async def _recreate(self, volume_id: str, snap: Snapshot) -> int:
        rec = leftover_record(snap, self._cluster)
        if rec is None or rec.disk_name() != volume_id:
            raise InternalError(
                f"expansion snapshot {snap.name} of volume {volume_id} carries no record of this "
                "cluster; it was left untouched for an operator to inspect"
            )
        disk_rec = replace(rec, grow_from=0, grow_to=0, size=max(rec.size, rec.grow_to))
        try:
            disk = await self._create_from(volume_id, snap, disk_rec, rec.grow_to)
        except OxideInsufficientCapacityError as exc:
            old = replace(rec, grow_from=0, grow_to=0)
            await self._create_from(volume_id, snap, old, rec.grow_from or snap.size)
            await self._delete_snapshot(snap)
            raise ResourceExhaustedError(
                f"Oxide has no room for volume {volume_id} at {rec.grow_to} bytes ({exc.message}); "
                f"it was restored at its previous size, {rec.grow_from or snap.size} bytes"
            ) from exc
        await self._delete_snapshot(snap)
        return disk.size

    async def _create_from(
        self, volume_id: str, snap: Snapshot, rec: record.Record, size: int
    ) -> Disk:
        """The disk re-created from ``snap``; one that already exists under the name counts only
        when it was made from ``snap`` (a retried request made it), since the snapshot is deleted
        next."""
        spec = DiskSpec(name=volume_id, description=rec.encode(), size=size, snapshot_id=snap.id)
        try:
            return await self._api.disk_create(spec)
        except OxideAlreadyExistsError:
            disk = await self._api.disk_view(volume_id)
        if disk.snapshot_id != snap.id:
            raise InternalError(
                f"volume {volume_id} was re-created by something else while its expansion "
                f"snapshot {snap.name} held the data; both were left untouched for an operator "
                "to inspect"
            )
        return disk

    async def _delete_snapshot(self, snap: Snapshot) -> None:
        with contextlib.suppress(OxideNotFoundError):
            await self._api.snapshot_delete(snap.id)


def _check_redundant(disk: Disk, snap: Snapshot) -> None:
    """Refuse to delete ``snap`` unless ``disk`` provably holds its data: the disk was made from
    the snapshot (step 4 ran), or the snapshot was taken of this very disk (step 3 did not run).

    By UUIDs, never by timestamps: Oxide's times come from several Nexus instances whose clocks
    differ slightly, so a disk made by someone else just after step 3 may look older than the
    snapshot."""
    if disk.snapshot_id == snap.id or snap.disk_id == disk.id:
        return
    raise InternalError(
        f"volume {disk.name} exists beside expansion snapshot {snap.name} but is neither the disk "
        "it was taken of nor made from it; both were left untouched for an operator to inspect"
    )
