"""Controller operations over the ``OxideApi`` seam: provision, attach, list, snapshot, clone.

Every operation is idempotent and keyed by deterministic Oxide names (``record``), so a retry after
a timeout or a crash finds and finishes what the first attempt started. Happy paths make the fewest
Oxide requests the API allows; when Oxide refuses something, a few extra reads explain why in the
error the Kubernetes user sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from csi_oxide.controller import lookup, record
from csi_oxide.controller.expand import Expander
from csi_oxide.controller.sizing import CapacityRange, disk_size
from csi_oxide.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    ResourceExhaustedError,
)
from csi_oxide.inflight import InFlight
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import (
    OxideAlreadyExistsError,
    OxideInvalidRequestError,
    OxideNotFoundError,
)
from csi_oxide.oxide.names import is_canonical_uuid, is_valid_name
from csi_oxide.oxide.types import (
    GIB,
    MAX_DISK_SIZE,
    MAX_DISKS_PER_INSTANCE,
    MIN_DISK_SIZE,
    Disk,
    DiskSpec,
    DiskState,
    InstanceState,
    Snapshot,
    SnapshotState,
)

DEFAULT_BLOCK_SIZE = 4096
ATTACHABLE_STATES = frozenset({InstanceState.STOPPED, InstanceState.CREATING})
NO_HOTPLUG = (
    "this Oxide release attaches and detaches disks only while the instance is stopped "
    "(disk hot-plug is not available yet)"
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a new volume's content comes from: ``kind`` is "snapshot" or "volume"."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class NewVolume:
    """A validated CreateVolume request."""

    name: str
    capacity: CapacityRange
    block_size: int = DEFAULT_BLOCK_SIZE
    source: Source | None = None
    pvc: str = ""
    pv: str = ""


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


def _source_of(rec: record.Record | None) -> Source | None:
    if rec is None or ":" not in rec.source:
        return None
    kind, _, ident = rec.source.partition(":")
    return Source(kind, ident)


def volume_info(disk: Disk, rec: record.Record | None) -> VolumeInfo:
    """The CSI view of ``disk``."""
    abnormal = None
    if disk.state is DiskState.FAULTED:
        abnormal = "the Oxide disk is faulted"
    return VolumeInfo(
        volume_id=disk.name,
        capacity_bytes=disk.size,
        source=_source_of(rec),
        published_node=disk.instance_id if disk.published else None,
        abnormal=abnormal,
    )


class ControllerOps:
    """The controller's logic; holds the Oxide API and the cluster's marker."""

    def __init__(self, api: OxideApi, *, cluster: str, inflight: InFlight | None = None) -> None:
        self._api = api
        self._cluster = cluster
        self._inflight = inflight or InFlight()
        self._expander = Expander(api, cluster=cluster)

    # ----------------------------------------------------------------------------- volumes

    async def create_volume(self, spec: NewVolume) -> VolumeInfo:
        """Create (or find, identically requested) the disk for CSI volume ``spec.name``."""
        disk_name = record.volume_name(spec.name)
        return await self._inflight.run(
            [disk_name], "CreateVolume", self._create_volume(disk_name, spec)
        )

    async def _create_volume(self, disk_name: str, spec: NewVolume) -> VolumeInfo:
        minimum = MIN_DISK_SIZE
        snapshot_id: str | None = None
        if spec.source is not None and spec.source.kind == "snapshot":
            snap = await self._source_snapshot(spec.source.id)
            minimum, snapshot_id = snap.size, snap.id
        elif spec.source is not None:
            minimum = (await self._view_volume(spec.source.id, "source volume")).size
        size = disk_size(spec.capacity, minimum=minimum)
        rec = record.Record(
            cluster=self._cluster,
            name=spec.name,
            size=spec.capacity.required,
            source=str(spec.source) if spec.source else "",
            pvc=spec.pvc,
            pv=spec.pv,
        )
        temporary: str | None = None
        if spec.source is not None and spec.source.kind == "volume":
            existing = await self._view_or_none(disk_name)
            if existing is not None:  # a retry after the clone was made
                await self._delete_snapshot_if_present(record.clone_snapshot_name(disk_name))
                return self._check_existing(existing, spec)
            temporary = record.clone_snapshot_name(disk_name)
            snapshot_id = (await self._clone_snapshot(temporary, disk_name, spec.source.id)).id
        new = DiskSpec(
            name=disk_name,
            description=rec.encode(),
            size=size,
            block_size=None if snapshot_id else spec.block_size,
            snapshot_id=snapshot_id,
        )
        try:
            # The 201 body says "creating" although disk_create is synchronous: its state is never
            # read (name, size, block size and description are final), so no re-read is needed.
            disk = await self._api.disk_create(new)
        except OxideAlreadyExistsError:
            # A retry, or a crash after create: compare what exists with the request.
            disk = await self._api.disk_view(disk_name)
        if temporary is not None:
            await self._delete_snapshot_if_present(temporary)
        return self._check_existing(disk, spec)

    def _check_existing(self, disk: Disk, spec: NewVolume) -> VolumeInfo:
        rec = record.owned_by(disk.description, self._cluster)
        if rec is None or not rec.matches_name(spec.name):
            raise AlreadyExistsError(
                f"Oxide disk {disk.name} exists but was not created by this cluster for volume "
                f"name {spec.name!r}"
            )
        wanted = str(spec.source) if spec.source else ""
        if rec.source != wanted:
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with content source {rec.source or 'none'!r}, "
                f"not {wanted or 'none'!r}"
            )
        if not spec.capacity.admits(disk.size):
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with {disk.size} bytes, outside the requested range "
                f"(required {spec.capacity.required}, limit {spec.capacity.limit or 'none'})"
            )
        if spec.source is None and disk.block_size != spec.block_size:
            raise AlreadyExistsError(
                f"volume {spec.name!r} exists with block size {disk.block_size}, "
                f"not {spec.block_size}"
            )
        return volume_info(disk, rec)

    async def _clone_snapshot(self, name: str, target: str, source_volume: str) -> Snapshot:
        rec = record.Record(cluster=self._cluster, name=target, source=f"volume:{source_volume}")
        try:
            return await self._api.snapshot_create(name, rec.encode(), source_volume)
        except OxideAlreadyExistsError:
            return await self._api.snapshot_view(name)  # left by an earlier attempt: reuse it
        except OxideNotFoundError as exc:
            raise NotFoundError(f"source volume {source_volume} does not exist") from exc

    async def delete_volume(self, volume_id: str) -> None:
        """Delete the disk; a missing volume is success (the spec's idempotency rule)."""
        if not _plausible_name(volume_id):
            return  # not a name Oxide could hold: it cannot exist
        await self._inflight.run([volume_id], "DeleteVolume", self._delete_volume(volume_id))

    async def _delete_volume(self, volume_id: str) -> None:
        try:
            await self._api.disk_delete(volume_id)
        except OxideNotFoundError:
            pass
        except OxideInvalidRequestError as exc:
            disk = await self._view_or_none(volume_id)
            if disk is None:
                return
            if disk.published:
                raise FailedPreconditionError(
                    f"volume {volume_id} is attached to node {disk.instance_id}; it must be "
                    "unpublished (detached) before it can be deleted"
                ) from exc
            raise FailedPreconditionError(
                f"Oxide refused to delete volume {volume_id} in state {disk.state}: {exc.message}"
            ) from exc
        # A crash mid-expansion leaves the data in a snapshot; the volume's deletion ends it too.
        await self._expander.discard(volume_id)

    async def expand_volume(self, volume_id: str, capacity: CapacityRange) -> int:
        """Grow the (detached) disk offline; returns its size. See ``controller.expand``."""
        self._require_volume_id(volume_id)
        return await self._inflight.run(
            [volume_id], "ControllerExpandVolume", self._expander.expand(volume_id, capacity)
        )

    async def get_volume(self, volume_id: str) -> VolumeInfo:
        """The volume and its condition; NotFoundError if there is no such disk."""
        disk = await self._view_or_recover(volume_id)
        return volume_info(disk, record.decode(disk.description))

    async def list_volumes(self) -> list[VolumeInfo]:
        """This cluster's volumes, sorted by ID."""
        out = []
        for disk in await self._api.disk_list():
            rec = record.owned_by(disk.description, self._cluster)
            if rec is not None and record.is_driver_volume_name(disk.name):
                out.append(volume_info(disk, rec))
        return sorted(out, key=lambda v: v.volume_id)

    async def capacity(self) -> Capacity:
        """Quota left in the silo (``utilization_view``)."""
        free = (await self._api.utilization_view()).free_storage
        largest = min(MAX_DISK_SIZE, free // GIB * GIB)
        return Capacity(available=free, maximum_volume_size=largest, minimum_volume_size=GIB)

    # ----------------------------------------------------------------------------- attachment

    async def publish(self, volume_id: str, node_id: str) -> None:
        """Attach the disk to the node's instance (idempotent)."""
        self._require_volume_id(volume_id)
        if not is_canonical_uuid(node_id):
            raise NotFoundError(f"node {node_id!r} does not exist: node IDs are instance UUIDs")
        await self._inflight.run(
            [volume_id], "ControllerPublishVolume", self._publish(volume_id, node_id)
        )

    async def _publish(self, volume_id: str, node_id: str) -> None:
        try:
            await self._api.instance_disk_attach(node_id, volume_id)
        except OxideNotFoundError:
            # The instance is missing, or the disk is (perhaps mid-expansion: finish that first).
            await self._api.instance_view(node_id)
            if await self._expander.settle(volume_id) is None:
                raise NotFoundError(f"volume {volume_id} does not exist") from None
            await self._api.instance_disk_attach(node_id, volume_id)
        except OxideInvalidRequestError as exc:
            raise await self._explain_attach(volume_id, node_id, exc) from exc

    async def _explain_attach(
        self, volume_id: str, node_id: str, exc: OxideInvalidRequestError
    ) -> Exception:
        disk = await self._view_volume(volume_id, "volume")
        if disk.instance_id and disk.instance_id != node_id:
            return FailedPreconditionError(
                f"volume {volume_id} is attached to node {disk.instance_id}; a volume can be "
                f"published to one node at a time (unpublish it there first)"
            )
        if "more than" in exc.message and "disks" in exc.message:
            return ResourceExhaustedError(
                f"node {node_id} already has {MAX_DISKS_PER_INSTANCE} disks attached, the Oxide "
                f"limit per instance (Oxide said: {exc.message})"
            )
        instance = await self._api.instance_view(node_id)
        if instance.run_state not in ATTACHABLE_STATES:
            return FailedPreconditionError(
                f"cannot attach volume {volume_id} to node {node_id} (instance {instance.name!r}, "
                f"{instance.run_state}): {NO_HOTPLUG}. Nothing was changed. "
                f"(Oxide said: {exc.message})"
            )
        return FailedPreconditionError(f"Oxide refused to attach volume {volume_id}: {exc}")

    async def unpublish(self, volume_id: str, node_id: str) -> None:
        """Detach the disk from the node; OK when it is not attached there (or does not exist)."""
        if not _plausible_name(volume_id) or (node_id and not is_canonical_uuid(node_id)):
            return  # unknown volume or node: regarded as unpublished, as the spec allows
        await self._inflight.run(
            [volume_id], "ControllerUnpublishVolume", self._unpublish(volume_id, node_id)
        )

    async def _unpublish(self, volume_id: str, node_id: str) -> None:
        if not node_id:
            disk = await self._view_or_none(volume_id)
            if disk is None or disk.instance_id is None:
                return
            node_id = disk.instance_id
        try:
            await self._api.instance_disk_detach(node_id, volume_id)
        except OxideNotFoundError:
            return  # the disk or the instance is gone: nothing is attached
        except OxideInvalidRequestError as exc:
            disk = await self._view_or_none(volume_id)
            if disk is None or disk.instance_id != node_id:
                return  # not attached to that node: unpublished already
            instance = await self._api.instance_view(node_id)
            raise FailedPreconditionError(
                f"cannot detach volume {volume_id} from node {node_id} (instance "
                f"{instance.name!r}, {instance.run_state}): {NO_HOTPLUG}. Nothing was changed. "
                f"(Oxide said: {exc.message})"
            ) from exc

    # ----------------------------------------------------------------------------- snapshots

    async def create_snapshot(self, name: str, source_volume_id: str) -> SnapshotInfo:
        """Snapshot a volume under CSI name ``name`` (idempotent for the same source)."""
        snap_name = record.snapshot_name(name)
        return await self._inflight.run(
            [snap_name], "CreateSnapshot", self._create_snapshot(snap_name, name, source_volume_id)
        )

    async def _create_snapshot(self, snap_name: str, name: str, source: str) -> SnapshotInfo:
        rec = record.Record(cluster=self._cluster, name=name, source=f"volume:{source}")
        try:
            if not _plausible_name(source):
                raise OxideNotFoundError("no such disk")
            snap = await self._snapshot_create(snap_name, rec, source)
        except OxideAlreadyExistsError:
            snap = await self._api.snapshot_view(snap_name)
            existing = record.owned_by(snap.description, self._cluster)
            if existing is None or not existing.matches_name(name):
                raise AlreadyExistsError(
                    f"Oxide snapshot {snap_name} exists but was not made by this cluster for "
                    f"snapshot name {name!r}"
                ) from None
            if existing.source != rec.source:
                raise AlreadyExistsError(
                    f"snapshot {name!r} exists for source {existing.source.partition(':')[2]}, "
                    f"not {source}"
                ) from None
        except OxideNotFoundError as exc:
            raise NotFoundError(f"source volume {source} does not exist") from exc
        return self._snapshot_info(snap)

    async def _snapshot_create(self, name: str, rec: record.Record, source: str) -> Snapshot:
        try:
            return await self._api.snapshot_create(name, rec.encode(), source)
        except OxideNotFoundError:
            await self._view_or_recover(source)  # NotFoundError unless it was mid-expansion
            return await self._api.snapshot_create(name, rec.encode(), source)

    def _snapshot_info(self, snap: Snapshot) -> SnapshotInfo:
        rec = record.decode(snap.description)
        source = rec.source.partition(":")[2] if rec and rec.source.startswith("volume:") else ""
        return SnapshotInfo(
            snapshot_id=snap.name,
            source_volume_id=source or snap.disk_id,
            size_bytes=snap.size,
            created=snap.time_created,
            ready=snap.state is SnapshotState.READY,
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot; missing is success. Temporary snapshots are not CSI snapshots."""
        if not _plausible_name(snapshot_id) or record.is_temporary_snapshot_name(snapshot_id):
            return
        await self._inflight.run(
            [snapshot_id], "DeleteSnapshot", self._delete_snapshot_if_present(snapshot_id)
        )

    async def _delete_snapshot_if_present(self, name: str) -> None:
        try:
            await self._api.snapshot_delete(name)
        except OxideNotFoundError:
            return
        except OxideInvalidRequestError as exc:
            raise AbortedError(f"snapshot {name} cannot be deleted yet: {exc.message}") from exc

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot; NotFoundError if missing (or not a CSI snapshot)."""
        snap = await self._snapshot_or_none(snapshot_id)
        if snap is None:
            raise NotFoundError(f"snapshot {snapshot_id} does not exist")
        return self._snapshot_info(snap)

    async def list_snapshots(
        self, *, snapshot_id: str = "", source_volume_id: str = ""
    ) -> list[SnapshotInfo]:
        """This cluster's snapshots (never temporary ones), sorted by ID, optionally filtered."""
        if snapshot_id:
            snap = await self._snapshot_or_none(snapshot_id)
            found = [self._snapshot_info(snap)] if snap is not None else []
        else:
            found = [
                self._snapshot_info(s)
                for s in await self._api.snapshot_list()
                if record.is_driver_snapshot_name(s.name)
                and record.owned_by(s.description, self._cluster) is not None
            ]
        if source_volume_id:
            found = [s for s in found if s.source_volume_id == source_volume_id]
        return sorted(found, key=lambda s: s.snapshot_id)

    async def _snapshot_or_none(self, snapshot_id: str) -> Snapshot | None:
        if not _plausible_name(snapshot_id) or record.is_temporary_snapshot_name(snapshot_id):
            return None
        return await lookup.snapshot_or_none(self._api, snapshot_id)

    # ----------------------------------------------------------------------------- helpers

    def _require_volume_id(self, volume_id: str) -> None:
        if not _plausible_name(volume_id):
            raise NotFoundError(f"volume {volume_id!r} does not exist")

    async def _view_volume(self, volume_id: str, what: str) -> Disk:
        if not _plausible_name(volume_id):
            raise NotFoundError(f"{what} {volume_id!r} does not exist")
        try:
            return await self._api.disk_view(volume_id)
        except OxideNotFoundError as exc:
            raise NotFoundError(f"{what} {volume_id} does not exist") from exc

    async def _view_or_recover(self, volume_id: str) -> Disk:
        """The disk; one caught mid-expansion is finished first (under its guard: ABORTED when
        another operation on it is running)."""
        if not _plausible_name(volume_id):
            raise NotFoundError(f"volume {volume_id!r} does not exist")
        disk = await self._view_or_none(volume_id)
        if disk is None:
            disk = await self._inflight.run(
                [volume_id], "finish expansion", self._expander.settle(volume_id)
            )
        if disk is None:
            raise NotFoundError(f"volume {volume_id} does not exist")
        return disk

    async def _view_or_none(self, volume_id: str) -> Disk | None:
        return await lookup.disk_or_none(self._api, volume_id)

    async def _source_snapshot(self, snapshot_id: str) -> Snapshot:
        snap = await self._snapshot_or_none(snapshot_id)
        if snap is None:
            raise NotFoundError(f"source snapshot {snapshot_id} does not exist")
        if snap.state is not SnapshotState.READY:
            raise AbortedError(f"source snapshot {snapshot_id} is {snap.state}, not ready yet")
        return snap


def _plausible_name(value: str) -> bool:
    """True when ``value`` could name an Oxide object (IDs are Oxide names, never UUIDs)."""
    return is_valid_name(value)
