"""Controller operations over the ``OxideApi`` seam: provision, attach, list, snapshot, clone.

Every operation is idempotent and keyed by deterministic Oxide names (``record``), so a retry after
a timeout or a crash finds and finishes what the first attempt started; a leftover of an
interrupted operation is finished or refused, never built on when it came from elsewhere. Every
operation on an object by ID applies the one ownership rule (``owner``) before it reads or changes
anything. Happy paths make the fewest
Oxide requests the API allows; when Oxide refuses something, a few extra reads explain why in the
error the Kubernetes user sees.

Changes (delete, attach, detach) address the disk or snapshot that passed the ownership check by
its UUID, never by name: between the check and the change, someone else may have deleted it and
made an object of their own under the same name, which must never be touched. A snapshot taken by
name is checked to be of the disk that was checked.

A disk's verdict, once read, is kept by its UUID (``verdicts``): Oxide never changes what it rests
on. ControllerPublish, ControllerUnpublish (from a named node) and DeleteVolume of a volume whose
disk was read before therefore go straight to the attach, detach or delete by that UUID. A 404
means the disk was deleted or replaced under its name since: the UUID is forgotten and the name
read again, and only a disk that carries this very volume's record (the volume re-created by an
expansion, perhaps by another controller replica) is then acted on in the same call; anything
else under the name is not the volume that was checked, and is left untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from csi_oxide.contract.oxide_rules import MAX_DISKS_PER_INSTANCE, is_canonical_uuid, is_valid_name
from csi_oxide.contract.publish_context import Birth, Origin
from csi_oxide.contract.volumes import DEFAULT_BLOCK_SIZE, CapacityRange, is_volume_name, require_id
from csi_oxide.controller import lookup, owner, record, verdicts
from csi_oxide.controller.attachments import Attachments
from csi_oxide.controller.expand import Expander, leftover_record
from csi_oxide.controller.record import Source, SourceKind
from csi_oxide.controller.sizing import disk_size, exact_size
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import (
    AbortedError,
    AlreadyExistsError,
    CsiOxideError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import (
    OxideAlreadyExistsError,
    OxideInvalidRequestError,
    OxideNotFoundError,
)
from csi_oxide.oxide.types import (
    GIB,
    MAX_DISK_SIZE,
    Disk,
    DiskSpec,
    DiskState,
    Image,
    InstanceState,
    Snapshot,
    SnapshotState,
)

log = structlog.get_logger(__name__)

ATTACHABLE_STATES = frozenset({InstanceState.STOPPED, InstanceState.CREATING})
NO_HOTPLUG = (
    "this Oxide release attaches and detaches disks only while the instance is stopped "
    "(disk hot-plug is not available yet)"
)
ATTACH_ADVICE = (
    "What to do: stop the instance, let the attach happen (the attacher retries on its own), "
    "then start it again; or wait for disk hot-plug. Meanwhile the PVC stays bound and the pod "
    "waits in ContainerCreating."
)
DETACH_ADVICE = (
    "What to do: stop the instance, let the detach happen (the attacher retries on its own), "
    "then start it again; or wait for disk hot-plug."
)


@dataclass(frozen=True, slots=True)
class NewVolume:
    """A validated CreateVolume request."""

    name: str
    capacity: CapacityRange
    block_size: int | None = None  # None: the default for a blank volume; refused with a source
    source: Source | None = None
    pvc: str = ""
    pv: str = ""
    read_only: bool = False  # an Oxide read-only disk: only with a snapshot (or image) source


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume as the CO sees it."""

    volume_id: str
    capacity_bytes: int
    source: Source | None
    published_node: str | None
    abnormal: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot as the CO sees it."""

    snapshot_id: str
    source_volume_id: str
    size_bytes: int
    created: datetime
    ready: bool


@dataclass(frozen=True, slots=True)
class Capacity:
    """Silo quota left (an upper bound: physical space can run out first) and volume size bounds."""

    available: int
    maximum_volume_size: int
    minimum_volume_size: int


def origin_of(claim: owner.Claim) -> Origin | None:
    """How the volume's disk was born, for the node (``publish_context``); None if unknown."""
    if claim.owner is owner.Owner.STATIC:
        return Origin.STATIC
    if claim.record is None:
        return None
    source = claim.record.source
    if source is None:
        return Origin.BLANK
    return Origin.SNAPSHOT if source.kind is SourceKind.SNAPSHOT else Origin.VOLUME


def volume_info(disk: Disk, rec: record.Record | None) -> VolumeInfo:
    """The CSI view of ``disk``."""
    abnormal = None
    if disk.state is DiskState.FAULTED:
        abnormal = "the Oxide disk is faulted"
    return VolumeInfo(
        volume_id=disk.name,
        capacity_bytes=disk.size,
        source=rec.source if rec is not None else None,
        published_node=disk.instance_id if disk.published else None,
        abnormal=abnormal,
    )


class ControllerOps:
    """The controller's logic; holds the Oxide API and the cluster's marker.

    Every operation on a disk or snapshot by ID first asks ``controller.owner`` whose it is, and
    treats another cluster's (or a forged) object as absent without touching it. For a disk
    read before, the answer may be the one kept under its UUID (``controller.verdicts``), and
    the change then goes to that UUID.
    """

    def __init__(
        self,
        api: OxideApi,
        *,
        cluster: str,
        inflight: InFlight,
        expander: Expander,
        known: verdicts.Verdicts | None = None,
    ) -> None:
        """``inflight``: the per-volume guard (shared with the reconciler); ``expander`` grows
        and repairs disks. Both are built in ``csi_oxide.wiring``. ``known``: the verdicts read
        so far (``controller.verdicts``; by default an empty one of the default bound)."""
        record.check_cluster_id(cluster)
        self._api = api
        self._cluster = cluster
        self._inflight = inflight
        self._expander = expander
        self._known = known if known is not None else verdicts.Verdicts(cluster)
        self._attachments = Attachments()

    # ----------------------------------------------------------------------------- volumes

    async def create_volume(self, spec: NewVolume) -> VolumeInfo:
        """Create (or find, identically requested) the disk for CSI volume ``spec.name``."""
        disk_size(spec.capacity)  # OUT_OF_RANGE before any request when no size can fit
        if spec.read_only and (spec.source is None or spec.source.kind is not SourceKind.SNAPSHOT):
            raise InvalidArgumentError(
                f"volume {spec.name!r}: readOnly volumes are made from a snapshot (or an image "
                "snapshot); give the PVC a VolumeSnapshot dataSource, or drop readOnly"
            )
        disk_name = record.volume_name(spec.name)
        return await self._inflight.run(
            [disk_name], "CreateVolume", self._create_volume(disk_name, spec)
        )

    async def _create_volume(self, disk_name: str, spec: NewVolume) -> VolumeInfo:
        resumed = await self._expander.resume(disk_name, spec.name)
        if resumed is not None:
            return self._check_existing(resumed, spec)
        if spec.source is None:
            blank = DiskSpec(
                name=disk_name,
                description=self._record(spec).encode(),
                size=disk_size(spec.capacity),
                block_size=spec.block_size or DEFAULT_BLOCK_SIZE,
            )
            return await self._create_disk(blank, spec)
        if record.is_image_id(spec.source.id) and spec.source.kind is SourceKind.SNAPSHOT:
            return await self._restore_image(disk_name, spec, spec.source.id)
        if spec.source.kind is SourceKind.SNAPSHOT:
            return await self._restore(disk_name, spec, spec.source.id)
        return await self._clone(disk_name, spec, spec.source.id)

    def _record(self, spec: NewVolume) -> record.Record:
        return record.Record(
            cluster=self._cluster,
            name=spec.name,
            size=spec.capacity.required,
            source=spec.source,
            pvc=spec.pvc,
            pv=spec.pv,
            read_only=spec.read_only,
        )

    async def _create_disk(self, new: DiskSpec, spec: NewVolume) -> VolumeInfo:
        try:
            # The 201 body says "creating" although disk_create is synchronous: its state is never
            # read (name, size, block size and description are final), so no re-read is needed.
            disk = await self._api.disk_create(new)
        except OxideAlreadyExistsError:
            # A retry, or a crash after create: compare what exists with the request.
            disk = await self._api.disk_view(new.name)
        return self._check_existing(disk, spec)

    async def _restore(self, disk_name: str, spec: NewVolume, snapshot_id: str) -> VolumeInfo:
        try:
            snap, claim = await self._usable_snapshot(snapshot_id, "source snapshot")
        except NotFoundError:
            # Idempotency by name outlives the source: a retry finds the volume it made.
            existing = await lookup.disk_or_none(self._api, disk_name)
            if existing is None:
                raise
            return self._check_existing(existing, spec)
        if snap.state is not SnapshotState.READY:
            raise AbortedError(f"source snapshot {snapshot_id} is {snap.state}, not ready yet")
        if spec.block_size is not None:
            _check_block_size(spec, await self._snapshot_block_size(snap, claim))
        new = DiskSpec(
            name=disk_name,
            description=self._record(spec).encode(),
            size=_restored_size(spec, snap.size),
            snapshot_id=snap.id,
            read_only=spec.read_only,
        )
        return await self._create_disk(new, spec)

    async def _restore_image(self, disk_name: str, spec: NewVolume, image_name: str) -> VolumeInfo:
        """A volume from an image (this cluster's snapshot kept as an image, or a
        pre-provisioned one): it takes the image's block size and at least its size."""
        try:
            image, _ = await self._usable_image(image_name, "source snapshot")
        except NotFoundError:
            existing = await lookup.disk_or_none(self._api, disk_name)
            if existing is None:
                raise
            return self._check_existing(existing, spec)
        _check_block_size(spec, image.block_size)
        new = DiskSpec(
            name=disk_name,
            description=self._record(spec).encode(),
            size=_restored_size(spec, image.size),
            image_id=image.id,
            read_only=spec.read_only,
        )
        return await self._create_disk(new, spec)

    async def _clone(self, disk_name: str, spec: NewVolume, source_id: str) -> VolumeInfo:
        if source_id == disk_name:
            # A clone of itself. Its source's guard is this call's own (it would answer ABORTED
            # for ever): the source does not exist yet, or it is an existing volume of this name.
            existing = await lookup.disk_or_none(self._api, disk_name)
            if existing is None:
                raise NotFoundError(f"source volume {source_id} is the volume being created")
            return await self._cloned(existing, spec)
        try:
            source, _ = await self._usable_volume(source_id, "source volume")
        except NotFoundError:
            # Idempotency by name outlives the source: a retry finds the volume it made.
            existing = await lookup.disk_or_none(self._api, disk_name)
            if existing is None:
                raise
            return await self._cloned(existing, spec)
        existing = await lookup.disk_or_none(self._api, disk_name)
        if existing is not None:  # a retry after the clone was made
            return await self._cloned(existing, spec)
        _check_block_size(spec, source.block_size)
        size = disk_size(spec.capacity, minimum=source.size)
        _check_snapshottable(source, "cloned")
        temporary = await self._clone_snapshot(disk_name, source)
        new = DiskSpec(
            name=disk_name,
            description=self._record(spec).encode(),
            size=size,
            snapshot_id=temporary.id,
        )
        try:
            info = await self._create_disk(new, spec)
        except CsiOxideError:
            # Not left for the reconciler: the snapshot holds quota and nothing needs it now.
            with contextlib.suppress(CsiOxideError):
                await self._delete_snapshot_if_present(temporary)
            raise
        await self._delete_snapshot_if_present(temporary)
        return info

    async def _cloned(self, disk: Disk, spec: NewVolume) -> VolumeInfo:
        await self._discard_temporary(record.clone_snapshot_name(disk.name))
        return self._check_existing(disk, spec)

    async def _clone_snapshot(self, target: str, source: Disk) -> Snapshot:
        """The clone's temporary snapshot of ``source``: taken now, or left by an interrupted
        attempt of this very clone (same record, same source disk); any other leftover is
        deleted and taken afresh, never built on."""
        name = record.clone_snapshot_name(target)
        rec = record.Record.of_clone_snapshot(
            self._cluster, target, Source(SourceKind.VOLUME, source.name)
        )
        return await self._temporary_snapshot(name, rec, source, f"volume {target}")

    async def _temporary_snapshot(
        self, name: str, rec: record.Record, source: Disk, purpose: str
    ) -> Snapshot:
        """The temporary snapshot ``name`` of ``source`` for ``purpose``: taken now, or left by
        an interrupted attempt of the same operation (same record source, same disk); any
        other leftover of ours is deleted and taken afresh, never built on."""
        try:
            return await self._of_disk(await self._take_snapshot(name, rec, source.name), source)
        except OxideAlreadyExistsError:
            pass
        left = await self._api.snapshot_view(name)
        claim = owner.of_snapshot(left, self._cluster)
        if claim.record is None:
            raise AlreadyExistsError(
                f"temporary snapshot {name} for {purpose} exists but is not this "
                "cluster's; it was left untouched and nothing was created"
            )
        if (
            claim.record.source == rec.source
            and left.disk_id == source.id
            and left.state is SnapshotState.READY
        ):
            return left
        await self._delete_snapshot_if_present(left)
        return await self._of_disk(await self._take_snapshot(name, rec, source.name), source)

    async def _of_disk(self, snap: Snapshot, disk: Disk) -> Snapshot:
        """``snap``, just taken of ``disk`` by name, if it is of that very disk; otherwise the disk
        was replaced under its name since it was checked, and the snapshot is deleted again: by
        the volume's own expansion (a new disk of this cluster: ABORTED, the retry takes it
        afresh), or by someone else (NOT_FOUND: the volume's disk is gone, the newcomer is not
        this cluster's and nothing of it is copied)."""
        if snap.disk_id == disk.id:
            return snap
        with contextlib.suppress(CsiOxideError):
            await self._delete_snapshot_if_present(snap)
        current = await lookup.disk_or_none(self._api, disk.name)
        if current is not None and owner.of_disk(current, self._cluster).owner is owner.Owner.OURS:
            raise AbortedError(
                f"volume {disk.name} was re-created (expanded) while this operation ran; retry"
            )
        raise NotFoundError(
            f"volume {disk.name} does not exist any more: its disk was deleted and another disk "
            "made under its name while this operation ran (that disk was left untouched)"
        )

    async def _take_snapshot(self, name: str, rec: record.Record, source: str) -> Snapshot:
        try:
            return await self._api.snapshot_create(name, rec.encode(), source)
        except OxideNotFoundError as exc:
            raise NotFoundError(f"source volume {source} does not exist") from exc

    def _check_existing(self, disk: Disk, spec: NewVolume) -> VolumeInfo:
        rec = self._known.judge(disk).record
        if rec is None or not rec.matches_name(spec.name):
            raise AlreadyExistsError(
                f"Oxide disk {disk.name} exists but was not created by this cluster for volume "
                f"name {spec.name!r}"
            )
        if rec.source != spec.source:
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with content source {str(rec.source or 'none')!r}, "
                f"not {str(spec.source or 'none')!r}"
            )
        if rec.read_only != spec.read_only:
            state = "read-only" if rec.read_only else "writable"
            raise AlreadyExistsError(f"volume {spec.name!r} exists and is {state}")
        if not spec.capacity.admits(disk.size):
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with {disk.size} bytes, outside the requested range "
                f"(required {spec.capacity.required}, limit {spec.capacity.limit or 'none'})"
            )
        if spec.source is not None:
            _check_block_size(spec, disk.block_size)
        elif disk.block_size != (spec.block_size or DEFAULT_BLOCK_SIZE):
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with block size {disk.block_size}, "
                f"not {spec.block_size or DEFAULT_BLOCK_SIZE}"
            )
        return volume_info(disk, rec)

    async def _snapshot_block_size(self, snap: Snapshot, claim: owner.Claim) -> int | None:
        """The block size a disk made from ``snap`` gets: from our record, else from the disk it
        was taken of; None when neither tells."""
        if claim.record is not None and claim.record.block_size:
            return claim.record.block_size
        try:
            return (await self._api.disk_view(snap.disk_id)).block_size
        except OxideNotFoundError:
            return None

    async def delete_volume(self, volume_id: str) -> None:
        """Delete the disk; a missing volume (or another cluster's) is success, as the spec asks
        of a missing one."""
        if not is_valid_name(volume_id):
            return  # not a name Oxide could hold: it cannot exist
        await self._inflight.run([volume_id], "DeleteVolume", self._delete_volume(volume_id))

    async def _delete_volume(self, volume_id: str) -> None:
        known = self._actionable(volume_id)
        if known is None:
            await self._delete_read_volume(volume_id)
            return
        if not await self._delete_disk(known.id, volume_id):
            # Gone since it was read: deleted by an earlier attempt, or replaced under its name.
            await self._delete_read_volume(volume_id, checked=known.id)
            return
        # A crash mid-expansion leaves the data in a snapshot; the volume's deletion ends it too.
        await self._expander.discard(volume_id)

    async def _delete_read_volume(self, volume_id: str, *, checked: str | None = None) -> None:
        """DeleteVolume after reading the volume's disk. ``checked``: the UUID a kept verdict
        named, found gone; a disk of another UUID under the name is then deleted only when it
        carries this volume's record (the volume's own, re-created by an expansion)."""
        disk = await lookup.disk_or_none(self._api, volume_id)
        if disk is not None:
            claim = self._known.judge(disk)
            if not claim.usable:
                log.info("not this cluster's volume: answered OK, left untouched", volume=volume_id)
                return
            if _replaced(disk, claim, checked):
                log.warning(
                    "the volume's disk was deleted and another made under its name: left untouched",
                    volume=volume_id,
                )
            elif self._maybe_impostor(disk) and await self._expander.pending(volume_id):
                # The volume's data is in its expansion snapshot (deleted below); the disk under
                # its name was made by someone else in the gap and is not the volume.
                log.warning("disk under the volume's name is not the volume: left untouched")
            else:
                await self._delete_disk(disk.id, volume_id)
        # A crash mid-expansion leaves the data in a snapshot; the volume's deletion ends it too.
        await self._expander.discard(volume_id)

    async def _delete_disk(self, disk_id: str, volume_id: str) -> bool:
        """Delete the disk of ``volume_id`` by its UUID ``disk_id``; False when it was gone."""
        try:
            await self._api.disk_delete(disk_id)
        except OxideNotFoundError:
            self._known.forget(disk_id)
            return False
        except OxideInvalidRequestError as exc:
            current = await lookup.disk_or_none(self._api, disk_id)
            if current is None:
                self._known.forget(disk_id)
                return False
            if current.published and current.instance_id:
                node = await lookup.instance_label(self._api, current.instance_id)
                raise FailedPreconditionError(
                    f"volume {volume_id} is attached to node {node}; it must be unpublished "
                    "(detached) before it can be deleted"
                ) from exc
            raise FailedPreconditionError(
                f"Oxide refused to delete volume {volume_id} in state {current.state}: "
                f"{exc.message}"
            ) from exc
        self._known.forget(disk_id)
        self._attachments.gone(disk_id)
        return True

    async def expand_volume(self, volume_id: str, capacity: CapacityRange) -> int:
        """Grow the (detached) disk offline; returns its size. See ``controller.expand``."""
        require_id(volume_id)
        return await self._inflight.run(
            [volume_id], "ControllerExpandVolume", self._expand(volume_id, capacity)
        )

    async def _expand(self, volume_id: str, capacity: CapacityRange) -> int:
        self._known.forget_name(volume_id)  # re-created under a new UUID: read it afresh after
        disk = await self._expander.settle(volume_id)  # an interrupted expansion ends first
        if disk is None:
            raise NotFoundError(f"volume {volume_id} does not exist")
        claim = owner.of_disk(disk, self._cluster)
        if not claim.usable:
            raise NotFoundError(owner.not_ours("volume", volume_id))
        return await self._expander.expand(disk, claim.record, capacity)

    async def get_volume(self, volume_id: str) -> VolumeInfo:
        """The volume and its condition; NotFoundError if there is no such disk of ours."""
        disk, claim = await self._usable_volume(volume_id, "volume")
        return volume_info(disk, claim.record)

    async def list_volumes(self) -> list[VolumeInfo]:
        """This cluster's volumes, sorted by ID, including one caught mid-expansion."""
        snapshots = await self._api.snapshot_list()
        disks = await self._api.disk_list()
        out = []
        for disk in disks:
            rec = owner.of_disk(disk, self._cluster).record
            if rec is not None:
                out.append(volume_info(disk, rec))
        present = {disk.name for disk in disks}
        for snap in snapshots:
            rec = leftover_record(snap, self._cluster)
            if rec is not None and rec.disk_name() not in present:
                out.append(_half_expanded(snap, rec))
        return sorted(out, key=lambda v: v.volume_id)

    async def capacity(self) -> Capacity:
        """Quota left in the silo (``utilization_view``)."""
        free = (await self._api.utilization_view()).free_storage
        largest = min(MAX_DISK_SIZE, free // GIB * GIB)
        return Capacity(available=free, maximum_volume_size=largest, minimum_volume_size=GIB)

    # ----------------------------------------------------------------------------- attachment

    async def publish(self, volume_id: str, node_id: str) -> Birth:
        """Attach the disk to the node's instance (idempotent); which disk it is (its UUID) and
        how it was born, for the node (``publish_context``)."""
        require_id(volume_id)
        if not is_canonical_uuid(node_id):
            raise NotFoundError(f"node {node_id!r} does not exist: node IDs are instance UUIDs")
        return await self._inflight.run(
            [volume_id], "ControllerPublishVolume", self._publish(volume_id, node_id)
        )

    async def _publish(self, volume_id: str, node_id: str) -> Birth:
        known = self._actionable(volume_id)
        if known is None:
            return await self._publish_read(volume_id, node_id)
        birth = Birth(origin_of(known.claim), known.id, read_only=known.read_only)
        if self._attachments.likely(known.id, node_id) and await self._attached_to(
            known.id, node_id
        ):
            return birth  # a repeat: Oxide says it is attached there, so no attach is sent
        try:
            # By UUID: idempotent when attached there already; a disk replaced under the name
            # since its verdict was read answers 404 and is never attached.
            await self._api.instance_disk_attach(node_id, known.id)
        except OxideNotFoundError:
            self._known.forget(known.id)  # or the node is missing: reading again tells which
            return await self._publish_read(volume_id, node_id, checked=known.id)
        except OxideInvalidRequestError:
            return await self._publish_read(volume_id, node_id)  # reads, then acts or explains
        self._attachments.attached(known.id, node_id)
        return birth

    async def _attached_to(self, disk_id: str, node_id: str) -> bool:
        """Whether Oxide says now that the disk with UUID ``disk_id`` is attached to
        ``node_id`` (``controller.attachments``: a read where a repeated attach would change
        nothing)."""
        disk = await lookup.disk_or_none(self._api, disk_id)
        if disk is not None and disk.state is DiskState.ATTACHED and disk.instance_id == node_id:
            return True
        self._attachments.gone(disk_id)
        return False

    async def _publish_read(
        self, volume_id: str, node_id: str, *, checked: str | None = None
    ) -> Birth:
        """ControllerPublish after reading the volume's disk (``checked``: see
        ``_delete_read_volume``)."""
        # Under the volume's guard already: a half-done expansion is finished right here.
        disk, claim = await self._usable_volume(volume_id, "volume", guarded=True)
        if _replaced(disk, claim, checked):
            raise NotFoundError(
                f"volume {volume_id} does not exist any more: its disk was deleted and another "
                "disk, not this cluster's, made under its name (that disk was left untouched)"
            )
        birth = Birth(origin_of(claim), disk.id, read_only=disk.read_only)
        if disk.state is DiskState.ATTACHED and disk.instance_id == node_id:
            self._attachments.attached(disk.id, node_id)
            return birth
        try:
            await self._api.instance_disk_attach(node_id, disk.id)
        except OxideNotFoundError:
            if await lookup.disk_or_none(self._api, disk.id) is None:
                raise NotFoundError(f"volume {volume_id} does not exist") from None
            raise NotFoundError(
                f"node {node_id} does not exist: no Oxide instance has that UUID"
            ) from None
        except OxideInvalidRequestError as exc:
            raise await self._explain_attach(volume_id, node_id, exc) from exc
        self._attachments.attached(disk.id, node_id)
        return birth

    async def _explain_attach(
        self, volume_id: str, node_id: str, exc: OxideInvalidRequestError
    ) -> Exception:
        disk = await self._view_volume(volume_id, "volume")
        if disk.instance_id and disk.instance_id != node_id:
            where = await lookup.instance_label(self._api, disk.instance_id)
            return FailedPreconditionError(
                f"volume {volume_id} is attached to node {where}; a volume can be published to "
                "one node at a time (unpublish it there first)"
            )
        if "more than" in exc.message and "disks" in exc.message:
            node = await lookup.instance_label(self._api, node_id)
            return ResourceExhaustedError(
                f"node {node} already has {MAX_DISKS_PER_INSTANCE} disks attached, the Oxide "
                f"limit per instance (Oxide said: {exc.message})"
            )
        instance = await self._api.instance_view(node_id)
        if instance.run_state not in ATTACHABLE_STATES:
            return FailedPreconditionError(
                f"cannot attach volume {volume_id} to node {instance.name!r} (instance {node_id}, "
                f"{instance.run_state}): {NO_HOTPLUG}. Nothing was changed. {ATTACH_ADVICE} "
                f"(Oxide said: {exc.message})"
            )
        return FailedPreconditionError(f"Oxide refused to attach volume {volume_id}: {exc}")

    async def unpublish(self, volume_id: str, node_id: str) -> None:
        """Detach the disk from the node; OK when it is not attached there (or does not exist,
        or is not this cluster's).

        A static volume (a disk this driver did not make) that the platform cannot detach
        because its instance runs (no hot-plug) is left attached and the answer is OK: on
        today's racks such a disk was attached while the instance was stopped, for the life of
        that instance (docs/todays-racks.md). The kubelet has unmounted it before this call;
        Oxide refuses to attach it anywhere else while it stays, so no second node can get it.
        A volume of this cluster keeps the FAILED_PRECONDITION answer."""
        if not is_valid_name(volume_id) or (node_id and not is_canonical_uuid(node_id)):
            return  # unknown volume or node: regarded as unpublished, as the spec allows
        await self._inflight.run(
            [volume_id], "ControllerUnpublishVolume", self._unpublish(volume_id, node_id)
        )

    async def _unpublish(self, volume_id: str, node_id: str) -> None:
        known = self._actionable(volume_id) if node_id else None
        if known is None:
            await self._unpublish_read(volume_id, node_id)
            return
        self._attachments.gone(known.id)
        try:
            # By UUID: OK when not attached at all; a disk replaced under the name since its
            # verdict was read answers 404 and is never detached.
            await self._api.instance_disk_detach(node_id, known.id)
        except OxideNotFoundError:
            self._known.forget(known.id)  # or the node is gone: reading again tells which
            await self._unpublish_read(volume_id, node_id, checked=known.id)
        except OxideInvalidRequestError:
            await self._unpublish_read(volume_id, node_id)  # reads, then acts or explains

    async def _unpublish_read(
        self, volume_id: str, node_id: str, *, checked: str | None = None
    ) -> None:
        """ControllerUnpublish after reading the volume's disk (``checked``: see
        ``_delete_read_volume``)."""
        disk = await lookup.disk_or_none(self._api, volume_id)
        if disk is None or disk.instance_id is None:
            return
        self._attachments.gone(disk.id)
        claim = self._known.judge(disk)
        if not claim.usable:
            log.info("not this cluster's volume: answered OK, left untouched", volume=volume_id)
            return
        if _replaced(disk, claim, checked):
            log.warning(
                "the volume's disk was deleted and another made under its name: left untouched",
                volume=volume_id,
            )
            return
        if node_id and disk.instance_id != node_id:
            return  # not attached to that node: unpublished from it already
        node_id = disk.instance_id
        try:
            await self._api.instance_disk_detach(node_id, disk.id)
        except OxideNotFoundError:
            return  # the disk or the instance is gone: nothing is attached
        except OxideInvalidRequestError as exc:
            current = await lookup.disk_or_none(self._api, disk.id)
            if current is None or current.instance_id != node_id:
                return  # not attached to that node: unpublished already
            instance = await self._api.instance_view(node_id)
            if owner.of_disk(current, self._cluster).owner is owner.Owner.STATIC:
                # A disk an operator attached to the instance (today's racks: at its creation)
                # stays with it while it runs; a publish elsewhere is refused while it is here.
                log.warning(
                    "static volume stays attached to its running instance",
                    volume=volume_id,
                    instance=node_id,
                    run_state=instance.run_state,
                )
                return
            raise FailedPreconditionError(
                f"cannot detach volume {volume_id} from node {instance.name!r} (instance "
                f"{node_id}, {instance.run_state}): {NO_HOTPLUG}. Nothing was changed. "
                f"{DETACH_ADVICE} (Oxide said: {exc.message})"
            ) from exc

    # ----------------------------------------------------------------------------- snapshots

    async def create_snapshot(
        self, name: str, source_volume_id: str, *, as_image: bool = False
    ) -> SnapshotInfo:
        """Snapshot a volume under CSI name ``name`` (idempotent for the same source, also once
        the source is gone); ``as_image``: keep it as an Oxide image (``img-`` + hash), made
        through a temporary snapshot, so it outlives the disk and can be promoted to the silo."""
        if as_image:
            image_name = record.image_name(name)
            return await self._inflight.run(
                [image_name],
                "CreateSnapshot",
                self._create_image(image_name, name, source_volume_id),
            )
        snap_name = record.snapshot_name(name)
        return await self._inflight.run(
            [snap_name], "CreateSnapshot", self._create_snapshot(snap_name, name, source_volume_id)
        )

    async def _create_snapshot(self, snap_name: str, name: str, source: str) -> SnapshotInfo:
        rec = record.Record(
            cluster=self._cluster, name=name, source=Source(SourceKind.VOLUME, source)
        )
        try:
            disk, _ = await self._usable_volume(source, "source volume")
        except NotFoundError:
            # Idempotency by name outlives the source: a retry finds the snapshot it made.
            existing = await lookup.snapshot_or_none(self._api, snap_name)
            if existing is None:
                raise
            return self._existing_snapshot(existing, name, rec)
        _check_snapshottable(disk, "snapshotted")
        try:
            snap = await self._snapshot_create(
                snap_name, replace(rec, block_size=disk.block_size), disk
            )
        except OxideAlreadyExistsError:
            snap = await self._api.snapshot_view(snap_name)
            return self._existing_snapshot(snap, name, rec)
        return _snapshot_info(snap, source)

    async def _snapshot_create(self, name: str, rec: record.Record, disk: Disk) -> Snapshot:
        """A snapshot of volume ``disk.name``, checked to be of the disk the volume has."""
        try:
            snap = await self._api.snapshot_create(name, rec.encode(), disk.name)
        except OxideNotFoundError:
            # Gone since it was read: perhaps an expansion is re-creating it (ABORTED while it
            # runs, finished here when it was interrupted: a new disk), else NOT_FOUND.
            disk, _ = await self._usable_volume(disk.name, "source volume")
            snap = await self._take_snapshot(name, rec, disk.name)
        return await self._of_disk(snap, disk)

    def _existing_snapshot(self, snap: Snapshot, name: str, rec: record.Record) -> SnapshotInfo:
        existing = owner.of_snapshot(snap, self._cluster).record
        _check_same_snapshot(existing, f"Oxide snapshot {snap.name}", name, rec)
        return _snapshot_info(snap, _source_id(rec.source))

    async def _create_image(self, image_name: str, name: str, source: str) -> SnapshotInfo:
        """The image ``image_name`` of volume ``source``, made through a temporary snapshot
        (``tmp-image-``) that is deleted afterwards; a retry finds the image (and deletes a
        temporary snapshot a crash left), or takes up the temporary snapshot an interrupted
        attempt took of the same disk."""
        rec = record.Record(
            cluster=self._cluster, name=name, source=Source(SourceKind.VOLUME, source)
        )
        existing = await lookup.image_or_none(self._api, image_name, silo_too=False)
        if existing is not None:
            info = self._existing_image(existing, name, rec)
            await self._discard_temporary(record.image_snapshot_name(image_name))
            return info
        disk, _ = await self._usable_volume(source, "source volume")
        _check_snapshottable(disk, "snapshotted")
        image = await self._image_through_snapshot(
            image_name, replace(rec, block_size=disk.block_size), disk
        )
        return self._existing_image(image, name, rec)

    def _existing_image(self, image: Image, name: str, rec: record.Record) -> SnapshotInfo:
        _check_same_snapshot(
            self._image_claim(image).record, f"Oxide image {image.name}", name, rec
        )
        return _image_info(image, _source_id(rec.source))

    def _image_claim(self, image: Image) -> owner.Claim:
        """``owner.of_image``, except that a silo image is never this cluster's (someone
        promoted it for the whole silo: the driver neither lists nor deletes it)."""
        claim = owner.of_image(image, self._cluster)
        if image.project_id is None and claim.owner is owner.Owner.OURS:
            return owner.STATIC
        return claim

    async def _image_through_snapshot(
        self, image_name: str, rec: record.Record, disk: Disk
    ) -> Image:
        """A project image of ``disk`` under ``image_name`` with record ``rec``: snapshot, image
        from it, and the snapshot deleted (also when the image cannot be made)."""
        temp = record.Record.of_image_snapshot(
            self._cluster, image_name, Source(SourceKind.VOLUME, disk.name)
        )
        name = record.image_snapshot_name(image_name)
        snap = await self._temporary_snapshot(name, temp, disk, f"image {image_name}")
        try:
            return await self._api.image_create(image_name, rec.encode(), snap.id)
        except OxideAlreadyExistsError:
            return await self._api.image_view(image_name)
        finally:
            with contextlib.suppress(CsiOxideError):
                await self._delete_snapshot_if_present(snap)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot; missing (or another cluster's) is success. Temporary snapshots are
        not CSI snapshots."""
        if not is_valid_name(snapshot_id) or record.is_temporary_snapshot_name(snapshot_id):
            return
        if record.is_image_id(snapshot_id):
            work = self._delete_image(snapshot_id)
        else:
            work = self._delete_snapshot(snapshot_id)
        await self._inflight.run([snapshot_id], "DeleteSnapshot", work)

    async def _delete_image(self, image_name: str) -> None:
        """Delete this cluster's image (and the temporary snapshot a crash may have left). An
        image the driver did not make is never deleted, and the answer is OK: it may be shared
        (a silo image serves every project), and CSI's delete answers OK for what it need not
        remove; a pre-provisioned content should say ``deletionPolicy: Retain``."""
        image = await lookup.image_or_none(self._api, image_name)
        if image is not None and self._image_claim(image).owner is owner.Owner.OURS:
            with contextlib.suppress(OxideNotFoundError):
                await self._api.image_delete(image.id)
        elif image is not None:
            log.info(
                "image not made by this cluster: answered OK, left untouched", image=image_name
            )
        await self._discard_temporary(record.image_snapshot_name(image_name))

    async def _delete_snapshot(self, snapshot_id: str) -> None:
        snap = await lookup.snapshot_or_none(self._api, snapshot_id)
        if snap is None:
            return
        if not owner.of_snapshot(snap, self._cluster).usable:
            log.info("not this cluster's snapshot: answered OK, left untouched", snapshot=snap.name)
            return
        await self._delete_snapshot_if_present(snap)

    async def _delete_snapshot_if_present(self, snap: Snapshot) -> None:
        """Delete ``snap`` by its UUID (never a snapshot made under its name since it was read)."""
        try:
            await self._api.snapshot_delete(snap.id)
        except OxideNotFoundError:
            return
        except OxideInvalidRequestError as exc:
            raise AbortedError(
                f"snapshot {snap.name} cannot be deleted yet: {exc.message}"
            ) from exc

    async def _discard_temporary(self, name: str) -> None:
        """Delete the temporary snapshot ``name`` if it exists and is this cluster's."""
        snap = await lookup.snapshot_or_none(self._api, name)
        if snap is not None and owner.of_snapshot(snap, self._cluster).owner is owner.Owner.OURS:
            await self._delete_snapshot_if_present(snap)

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot; NotFoundError if missing (or not a CSI snapshot, or another cluster's)."""
        if record.is_image_id(require_id(snapshot_id, "snapshot")):
            return await self._describe_image(snapshot_id)
        snap, claim = await self._usable_snapshot(snapshot_id, "snapshot")
        return await self._describe_snapshot(snap, claim)

    async def _describe_image(self, image_name: str) -> SnapshotInfo:
        image, claim = await self._usable_image(image_name, "snapshot")
        return _image_info(image, _source_id(claim.record.source) if claim.record else "")

    async def _usable_image(self, image_name: str, what: str) -> tuple[Image, owner.Claim]:
        """The image behind a CSI snapshot ID (``img-``...), the project's or the silo's, ours
        or pre-provisioned; NotFoundError otherwise."""
        image = await lookup.image_or_none(self._api, require_id(image_name, what))
        if image is None:
            raise NotFoundError(
                f"{what} {image_name} does not exist (no Oxide image of that name in the "
                "project or the silo)"
            )
        claim = self._image_claim(image)
        if not claim.usable:
            raise NotFoundError(owner.not_ours(what, image_name))
        return image, claim

    async def list_snapshots(
        self, *, snapshot_id: str = "", source_volume_id: str = ""
    ) -> list[SnapshotInfo]:
        """This cluster's snapshots (never temporary ones), sorted by ID, optionally filtered; by
        ID also a static (pre-provisioned) snapshot."""
        if snapshot_id:
            try:
                found = [await self.get_snapshot(snapshot_id)]
            except NotFoundError:
                return []
        else:
            found = []
            for snap in await self._api.snapshot_list():
                claim = owner.of_snapshot(snap, self._cluster)
                if claim.record is not None and not record.is_temporary_snapshot_name(snap.name):
                    found.append(await self._describe_snapshot(snap, claim))
            found.extend(await self._listed_images())
        if source_volume_id:
            found = [s for s in found if s.source_volume_id == source_volume_id]
        return sorted(found, key=lambda s: s.snapshot_id)

    async def _listed_images(self) -> list[SnapshotInfo]:
        """This cluster's snapshots kept as images (the project's images with our record)."""
        found = []
        for image in await self._api.image_list():
            claim = self._image_claim(image)
            if claim.record is not None:
                found.append(_image_info(image, _source_id(claim.record.source)))
        return found

    async def _describe_snapshot(self, snap: Snapshot, claim: owner.Claim) -> SnapshotInfo:
        if claim.record is not None:
            return _snapshot_info(snap, _source_id(claim.record.source))
        # A snapshot made outside the driver: its source is the disk it was taken of, named as
        # a volume ID (the disk's name), never the disk's UUID; unknown once that disk is gone.
        try:
            disk = await self._api.disk_view(snap.disk_id)
        except OxideNotFoundError:
            return _snapshot_info(snap, "")
        usable = owner.of_disk(disk, self._cluster).usable
        return _snapshot_info(snap, disk.name if usable else "")

    async def _usable_snapshot(self, snapshot_id: str, what: str) -> tuple[Snapshot, owner.Claim]:
        """The snapshot behind a CSI snapshot ID, ours or static; NotFoundError otherwise."""
        if record.is_temporary_snapshot_name(require_id(snapshot_id, what)):
            raise NotFoundError(f"{what} {snapshot_id!r} does not exist")
        snap = await lookup.snapshot_or_none(self._api, snapshot_id)
        if snap is None:
            raise NotFoundError(f"{what} {snapshot_id} does not exist")
        claim = owner.of_snapshot(snap, self._cluster)
        if not claim.usable:
            raise NotFoundError(owner.not_ours(what, snapshot_id))
        return snap, claim

    # ----------------------------------------------------------------------------- helpers

    async def _view_volume(self, volume_id: str, what: str) -> Disk:
        try:
            return await self._api.disk_view(require_id(volume_id, what))
        except OxideNotFoundError as exc:
            raise NotFoundError(f"{what} {volume_id} does not exist") from exc

    def _maybe_impostor(self, disk: Disk) -> bool:
        """A disk without a record under a name only this driver makes (rare: one more read)."""
        claim = owner.of_disk(disk, self._cluster)
        return claim.owner is owner.Owner.STATIC and is_volume_name(disk.name)

    def _actionable(self, volume_id: str) -> verdicts.Known | None:
        """The kept verdict on the disk last read as volume ``volume_id``, when an attach, detach
        or delete may go to that UUID without reading it again: the disk is ours or static, and
        not a possible impostor (those are always read, see ``_usable_volume``)."""
        known = self._known.under(volume_id)
        if known is None or not known.claim.usable:
            return None
        if known.claim.owner is owner.Owner.STATIC and is_volume_name(known.name):
            return None
        return known

    async def _usable_volume(
        self, volume_id: str, what: str, *, guarded: bool = False
    ) -> tuple[Disk, owner.Claim]:
        """The disk behind a volume ID, ours or static; one caught mid-expansion is finished
        first (``guarded``: the caller's RPC is on the volume and holds its guard; otherwise the
        guard is taken for the settle alone, ``Expander.settle_aside``, and the answer is ABORTED
        while another operation on the volume runs). NotFoundError when there is no such disk, or
        it is not this cluster's."""
        disk = await lookup.disk_or_none(self._api, require_id(volume_id, what))
        if disk is None or self._maybe_impostor(disk):
            # No disk (an interrupted expansion may hold the data), or a disk without a record
            # under a driver-made name: if this cluster's expansion of the volume is pending, that
            # disk is someone else's made in the gap, and settling refuses it (INTERNAL).
            if guarded:
                disk = await self._expander.settle(volume_id)
            else:
                disk = await self._expander.settle_aside(
                    self._inflight, volume_id, "finish expansion"
                )
        if disk is None:
            raise NotFoundError(f"{what} {volume_id} does not exist")
        claim = self._known.judge(disk)
        if not claim.usable:
            raise NotFoundError(owner.not_ours(what, volume_id))
        return disk, claim


def _replaced(disk: Disk, claim: owner.Claim, checked: str | None) -> bool:
    """True when ``disk`` is under the name of a volume whose disk ``checked`` (a UUID whose
    verdict was kept) is gone, and is not that volume: another UUID without this cluster's
    record. The volume's own disk re-created by an expansion (here or by another controller
    replica) carries its record, and is the volume."""
    return checked is not None and disk.id != checked and claim.owner is not owner.Owner.OURS


def _check_block_size(spec: NewVolume, source_block_size: int | None) -> None:
    """A requested block size must be the one the source gives the new disk: it cannot apply
    otherwise, and is refused rather than ignored."""
    if spec.block_size is None or spec.block_size == source_block_size:
        return
    kind = spec.source.kind if spec.source else "source"
    has = (
        f"has block size {source_block_size}"
        if source_block_size
        else "has a block size that cannot be read any more (its source disk is gone)"
    )
    raise InvalidArgumentError(
        f"blockSize {spec.block_size} cannot apply to volume {spec.name!r}: a disk made from a "
        f"{kind} takes its source's block size, and this {kind} {has}. Use a StorageClass "
        "without blockSize (or with the matching one) for restores and clones."
    )


def _check_snapshottable(disk: Disk, verb: str) -> None:
    """Oxide refuses to snapshot a read-only disk: say so before asking (FAILED_PRECONDITION)."""
    if disk.read_only:
        raise FailedPreconditionError(
            f"volume {disk.name} is a read-only Oxide disk, which Oxide cannot snapshot, so it "
            f"cannot be {verb}; use the snapshot or image it was restored from instead"
        )


def _restored_size(spec: NewVolume, source_size: int) -> int:
    """The size of a disk made from a snapshot or image of ``source_size`` bytes: at least that,
    and exactly that for a read-only disk (OUT_OF_RANGE when the request cannot have it)."""
    if spec.read_only:
        return exact_size(spec.capacity, source_size)
    return disk_size(spec.capacity, minimum=source_size)


def _check_same_snapshot(
    existing: record.Record | None, what: str, name: str, rec: record.Record
) -> None:
    """Refuse (ALREADY_EXISTS) an object found under a CSI snapshot's Oxide name unless this
    cluster made it for that very CSI name and source."""
    if existing is None or not existing.matches_name(name):
        raise AlreadyExistsError(
            f"{what} exists but was not made by this cluster for snapshot name {name!r}"
        )
    if existing.source != rec.source:
        raise AlreadyExistsError(
            f"snapshot {name!r} exists for source {_source_id(existing.source)}, "
            f"not {_source_id(rec.source)}"
        )


def _image_info(image: Image, source_volume_id: str) -> SnapshotInfo:
    """An image as a CSI snapshot: ready as soon as it exists."""
    return SnapshotInfo(
        snapshot_id=image.name,
        source_volume_id=source_volume_id,
        size_bytes=image.size,
        created=image.time_created,
        ready=True,
    )


def _shown(source: Source | None) -> str:
    """A content source in a message."""
    return str(source) if source else "none"


def _source_id(source: Source | None) -> str:
    """The ID in ``source``; "" for none."""
    return source.id if source else ""


def _snapshot_info(snap: Snapshot, source_volume_id: str) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=snap.name,
        source_volume_id=source_volume_id,
        size_bytes=snap.size,
        created=snap.time_created,
        ready=snap.state is SnapshotState.READY,
    )


def _half_expanded(snap: Snapshot, rec: record.Record) -> VolumeInfo:
    """A volume whose expansion was interrupted after its disk was deleted (data in ``snap``)."""
    return VolumeInfo(
        volume_id=rec.disk_name(),
        capacity_bytes=rec.grow_from or snap.size,
        source=rec.source,
        published_node=None,
        abnormal=(
            f"an expansion was interrupted after the disk was deleted; the data is in snapshot "
            f"{snap.name}, and the next operation on the volume (or the controller's periodic "
            "pass) re-creates the disk from it"
        ),
    )
