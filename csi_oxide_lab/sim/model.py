"""The simulated silo: one project's disks, snapshots and instances, the silo's and the project's
images, and the real API's rules.

Every public method is one API operation after its request has been parsed; it applies the rules
of docs/oxide-facts.md (messages and codes included) and raises ``ApiError`` to refuse. The
caller holds the simulator's lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from csi_oxide_lab.sim import errors
from csi_oxide_lab.sim.backing import Backing
from csi_oxide_lab.sim.records import DiskRecord, ImageRecord, InstanceRecord, SnapshotRecord, now
from csi_oxide_lab.sim.spec import (
    ATTACHED_STATES,
    GIB,
    MAX_DESCRIPTION_LENGTH,
    MAX_DISK_SIZE,
    MAX_DISKS_PER_INSTANCE,
    MIN_DISK_SIZE,
    DiskState,
    InstanceState,
    SnapshotState,
    canonical_id,
    is_uuid,
)

R = TypeVar("R", DiskRecord, SnapshotRecord, InstanceRecord, ImageRecord)

# Instance states in which a VMM (Propolis) is active.
_VMM_STATES = frozenset(
    {
        InstanceState.STARTING,
        InstanceState.RUNNING,
        InstanceState.STOPPING,
        InstanceState.REBOOTING,
        InstanceState.MIGRATING,
        InstanceState.REPAIRING,
    }
)
_SNAPSHOT_DISK_STATES = frozenset({DiskState.DETACHED, DiskState.ATTACHED, DiskState.FINALIZING})
_DELETABLE_DISK_STATES = frozenset({DiskState.DETACHED, DiskState.FAULTED})
_DELETABLE_SNAPSHOT_STATES = frozenset({SnapshotState.READY, SnapshotState.FAULTED})
CAPACITY_CPUS = 128
CAPACITY_MEMORY = 1024 * GIB


@dataclass(frozen=True, slots=True)
class BlankSource:
    """A new empty disk with this block size."""

    block_size: int


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """A new disk holding a snapshot's data."""

    snapshot_id: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class ImageSource:
    """A new disk holding an image's data."""

    image_id: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class UnservedSource:
    """A disk the published API offers but the simulator does not make (an ASSUMPTION each, see
    ``refusal``): a local disk, a disk for a bulk import."""

    kind: Literal["local", "importing_blocks"]

    def refusal(self) -> errors.ApiError:
        """The simulator's answer: local disks and imports are not modelled (400
        InvalidRequest)."""
        if self.kind == "local":
            return errors.invalid_request(
                'the simulator serves distributed disks only (disk_backend type "local")'
            )
        return errors.invalid_request("the simulator does not support importing blocks")


DiskSource = BlankSource | SnapshotSource | ImageSource | UnservedSource


@dataclass(frozen=True, slots=True)
class NewImage:
    """A parsed `ImageCreate`: ``snapshot_id`` is its source; ``project`` says whether it goes
    to the project (True) or to the silo."""

    name: str
    description: str
    os: str
    version: str
    snapshot_id: str
    project: bool


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a new disk's data and block size come from."""

    size: int
    block_size: int
    snapshot_id: str | None = None
    image_id: str | None = None
    read_only: bool = False


def check_description(description: str) -> None:
    """ASSUMPTION: at most ``MAX_DESCRIPTION_LENGTH`` characters (400 InvalidValue); the published
    document gives no limit, the simulator enforces one so the driver never depends on more."""
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise errors.invalid_value(
            "description", f"description must be at most {MAX_DESCRIPTION_LENGTH} characters"
        )


class SimState:
    """The objects of the one simulated project and the rules for changing them."""

    def __init__(
        self,
        *,
        project: str,
        backing: Backing,
        hotplug: bool,
        quota_bytes: int,
        extra_instances: int,
        local_instances: int = 1,
    ) -> None:
        self.project_name = project
        self.project_id = str(uuid.uuid4())
        self.project_created = now()
        self.backing = backing
        self.hotplug = hotplug
        self.quota_bytes = quota_bytes
        self.disks: dict[str, DiskRecord] = {}
        self.snapshots: dict[str, SnapshotRecord] = {}
        self.images: dict[str, ImageRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        for i in range(extra_instances + local_instances):
            inst = InstanceRecord(id=str(uuid.uuid4()), name=f"sim-node-{i}")
            self.instances[inst.id] = inst
        # The first ``local_instances`` instances are this machine's (the backing's local
        # instance numbers 0, 1, ...); the first of them is "the" local instance.
        self.local_instance_ids = list(self.instances)[:local_instances]
        self.local_instance_id = self.local_instance_ids[0]

    # ---- selectors (FACTS §7) ----

    def check_project(self, value: str) -> None:
        """404 unless ``value`` names (or is the ID of) the simulated project."""
        if is_uuid(value):
            if canonical_id(value) != self.project_id:
                raise errors.not_found("project", value, by_id=True)
        elif value != self.project_name:
            raise errors.not_found("project", value, by_id=False)

    def _select(
        self,
        kind: str,
        table: dict[str, R],
        value: str,
        project: str | None,
        name: Callable[[R], str],
    ) -> R:
        if is_uuid(value):
            if project is not None:
                raise errors.invalid_request(
                    f"when providing {kind} as an ID project should not be specified"
                )
            found = table.get(canonical_id(value))
            if found is None:
                raise errors.not_found(kind, value, by_id=True)
            return found
        if project is None:
            raise errors.invalid_request(
                f"{kind} should either be UUID or project should be specified"
            )
        self.check_project(project)
        return self._by_name(kind, table, value, name)

    @staticmethod
    def _by_name(kind: str, table: dict[str, R], value: str, name: Callable[[R], str]) -> R:
        for rec in table.values():
            if name(rec) == value:
                return rec
        raise errors.not_found(kind, value, by_id=False)

    def disk(self, value: str, project: str | None) -> DiskRecord:
        """The disk a ``{disk}`` path value (and ``?project``) select."""
        return self._select("disk", self.disks, value, project, lambda d: d.name)

    def snapshot(self, value: str, project: str | None) -> SnapshotRecord:
        """The snapshot a ``{snapshot}`` path value (and ``?project``) select."""
        return self._select("snapshot", self.snapshots, value, project, lambda s: s.name)

    def instance(self, value: str, project: str | None) -> InstanceRecord:
        """The instance a ``{instance}`` path value (and ``?project``) select, settled."""
        inst = self._select("instance", self.instances, value, project, lambda i: i.name)
        inst.settle()
        return inst

    def disk_in_project(self, value: str) -> DiskRecord:
        """A disk named in a body: by name in the project, or by UUID anywhere."""
        if is_uuid(value):
            found = self.disks.get(canonical_id(value))
            if found is None:
                raise errors.not_found("disk", value, by_id=True)
            return found
        return self._by_name("disk", self.disks, value, lambda d: d.name)

    def all_instances(self) -> Iterable[InstanceRecord]:
        """Every instance, settled."""
        for inst in self.instances.values():
            inst.settle()
        return list(self.instances.values())

    # ---- quota (FACTS §5) ----

    def provisioned_storage(self) -> int:
        """Bytes counted against the quota: every disk, snapshot and image, at full size.

        ASSUMPTION: images count like snapshots (the facts do not say); a driver that leaves
        images behind thereby sees its quota shrink, which it must not hide."""
        disks = sum(d.size for d in self.disks.values())
        images = sum(i.size for i in self.images.values())
        return disks + images + sum(s.size for s in self.snapshots.values())

    def _reserve(self, size: int) -> None:
        left = self.quota_bytes - self.provisioned_storage()
        if size > left:
            raise errors.insufficient_storage(size, left)

    def utilization(self) -> dict[str, object]:
        """The published `Utilization` view: capacity = quota, provisioned = what is in use."""
        active = [i for i in self.all_instances() if i.run_state in _VMM_STATES]
        return {
            "capacity": {
                "cpus": CAPACITY_CPUS,
                "memory": CAPACITY_MEMORY,
                "storage": self.quota_bytes,
            },
            "provisioned": {
                "cpus": sum(i.ncpus for i in active),
                "memory": sum(i.memory for i in active),
                "storage": self.provisioned_storage(),
            },
        }

    # ---- disks (FACTS §1) ----

    def _check_new_name(
        self, kind: str, table: dict[str, R], name: str, get: Callable[[R], str]
    ) -> None:
        if any(get(rec) == name for rec in table.values()):
            raise errors.already_exists(kind, name)

    def create_disk(self, name: str, description: str, size: int, source: DiskSource) -> DiskRecord:
        """disk_create: validate, reserve quota, create (synchronously) and store as detached."""
        check_description(description)
        if isinstance(source, UnservedSource):
            raise source.refusal()
        origin = self._origin(source, size)
        check_disk_size(size, origin.block_size)
        self._check_new_name("disk", self.disks, name, lambda d: d.name)
        self._reserve(size)
        disk = DiskRecord(
            id=str(uuid.uuid4()),
            name=name,
            description=description,
            size=size,
            block_size=origin.block_size,
            snapshot_id=origin.snapshot_id,
            image_id=origin.image_id,
            read_only=origin.read_only,
        )
        self._fill(disk, origin)
        self.disks[disk.id] = disk
        return disk

    def _origin(self, source: BlankSource | SnapshotSource | ImageSource, size: int) -> _Origin:
        if isinstance(source, BlankSource):
            return _Origin(size, source.block_size)
        if isinstance(source, SnapshotSource):
            snap = self._source_snapshot(source)
            origin = _Origin(snap.size, snap.block_size, snapshot_id=snap.id)
        else:
            image = self._source_image(source)
            origin = _Origin(image.size, image.block_size, image_id=image.id)
        kind = "snapshot" if origin.snapshot_id else "image"
        if size < origin.size:
            raise errors.invalid_value("size", f"total size must be at least the {kind}'s size")
        if source.read_only and size != origin.size:
            raise errors.invalid_value(
                "size", f"a read-only disk must be exactly the size of its {kind}"
            )
        return replace(origin, read_only=source.read_only)

    def _fill(self, disk: DiskRecord, origin: _Origin) -> None:
        if origin.snapshot_id is not None:
            snap_name = self.snapshots[origin.snapshot_id].name
            self.backing.create_disk_from_snapshot(disk.name, snap_name, disk.size)
        elif origin.image_id is not None:
            self.backing.create_disk_from_image(disk.name, origin.image_id, disk.size)
        else:
            self.backing.create_disk(disk.name, disk.size, disk.block_size)

    def _source_snapshot(self, source: SnapshotSource) -> SnapshotRecord:
        snap = self.snapshots.get(source.snapshot_id)
        if snap is None:
            raise errors.not_found("snapshot", source.snapshot_id, by_id=True)
        if snap.state != SnapshotState.READY:
            raise errors.invalid_request(f"snapshot {snap.id} is in state {snap.state.value}")
        return snap

    def _source_image(self, source: ImageSource) -> ImageRecord:
        """An image a disk of the project may be made from: the project's or the silo's."""
        image = self.images.get(source.image_id)
        if image is None:
            raise errors.not_found("image", source.image_id, by_id=True)
        if image.project_id not in (None, self.project_id):
            raise errors.invalid_request("image does not belong to this project")
        return image

    def delete_disk(self, disk: DiskRecord) -> None:
        """disk_delete: only detached or faulted disks."""
        if disk.state in ATTACHED_STATES:
            raise errors.invalid_request("disk is attached")
        if disk.state not in _DELETABLE_DISK_STATES:
            raise errors.invalid_request(f'disk cannot be deleted in state "{disk.state.value}"')
        self.backing.delete_disk(disk.name)
        del self.disks[disk.id]

    # ---- attach and detach (FACTS §2) ----

    def _vmm_refusal(self, inst: InstanceRecord, verb: str, ok: frozenset[InstanceState]) -> None:
        allowed = ok | {InstanceState.RUNNING} if self.hotplug else ok
        if inst.run_state in allowed:
            return
        if inst.run_state in _VMM_STATES:
            raise errors.invalid_request(f"cannot {verb} disk: instance is not fully stopped")
        where = "to" if verb == "attach" else "from"
        raise errors.invalid_request(
            f"cannot {verb} disk {where} instance in {inst.run_state.value} state"
        )

    def attach(self, inst: InstanceRecord, disk: DiskRecord) -> DiskRecord:
        """instance_disk_attach: idempotent for the same instance.

        The refusals follow omicron's ``instance_attach_disk`` (nexus/db-queries, datastore
        ``disk.rs``): a disk attached, attaching or detaching anywhere else, and also one still
        detaching from THIS instance, is "attached to another instance" (the server looks at the
        disk's state, not at which instance it names).
        """
        if disk.instance_id == inst.id and disk.state in (DiskState.ATTACHED, DiskState.ATTACHING):
            return disk
        if disk.state in ATTACHED_STATES:
            raise errors.invalid_request(
                f'cannot attach disk "{disk.name}": disk is attached to another instance'
            )
        if disk.state not in (DiskState.CREATING, DiskState.DETACHED):
            raise errors.invalid_request(
                f'cannot attach disk "{disk.name}": invalid state {disk.state.value}'
            )
        self._vmm_refusal(
            inst, "attach", frozenset({InstanceState.CREATING, InstanceState.STOPPED})
        )
        attached = sum(1 for d in self.disks.values() if d.instance_id == inst.id)
        if attached >= MAX_DISKS_PER_INSTANCE:  # a boot disk, if any, is one of them
            raise errors.invalid_request(
                f"cannot attach more than {MAX_DISKS_PER_INSTANCE} disks to instance"
            )
        if inst.id in self.local_instance_ids:
            local = self.local_instance_ids.index(inst.id)
            self.backing.attach_local(disk.name, disk.block_size, local, read_only=disk.read_only)
        disk.state, disk.instance_id, disk.modified = DiskState.ATTACHED, inst.id, now()
        return disk

    def detach(self, inst: InstanceRecord, disk: DiskRecord) -> DiskRecord:
        """instance_disk_detach: idempotent when already detached (or detaching from ``inst``).

        The refusals follow omicron's ``instance_detach_disk``: a disk still attaching to this
        instance is "currently being attached"; the instance's state is judged before its boot
        disk (a running instance is "not fully stopped", whichever disk is asked for).
        """
        if disk.state == DiskState.DETACHED:
            return disk
        if disk.state == DiskState.DETACHING and disk.instance_id == inst.id:
            return disk
        if disk.state == DiskState.ATTACHING and disk.instance_id == inst.id:
            raise errors.invalid_request(
                f'cannot detach disk "{disk.name}": disk is currently being attached'
            )
        if disk.state in ATTACHED_STATES and disk.instance_id != inst.id:
            raise errors.invalid_request(
                f'cannot detach disk "{disk.name}": disk is attached to another instance'
            )
        if disk.state != DiskState.ATTACHED:
            raise errors.invalid_request(
                f'cannot detach disk "{disk.name}": invalid state {disk.state.value}'
            )
        ok = frozenset({InstanceState.CREATING, InstanceState.STOPPED, InstanceState.FAILED})
        self._vmm_refusal(inst, "detach", ok)
        if inst.boot_disk_id == disk.id:
            if inst.run_state == InstanceState.FAILED:
                raise errors.invalid_request("cannot detach disk from instance in failed state")
            raise errors.ApiError(409, "Conflict", "boot disk cannot be detached")
        if inst.id in self.local_instance_ids:
            self.backing.detach_local(disk.name)
        disk.state, disk.instance_id, disk.modified = DiskState.DETACHED, None, now()
        return disk

    def instance_disks(self, inst: InstanceRecord) -> list[DiskRecord]:
        """The disks attached (or moving to or from) ``inst``."""
        return [d for d in self.disks.values() if d.instance_id == inst.id]

    # ---- instances (FACTS §4) ----

    def stop(self, inst: InstanceRecord) -> InstanceRecord:
        """instance_stop: answers ``stopping``; the next read finds it ``stopped``."""
        if inst.run_state in (InstanceState.STOPPED, InstanceState.STOPPING):
            return inst
        if inst.run_state not in _VMM_STATES:
            raise errors.invalid_request(f"cannot stop instance in state {inst.run_state.value}")
        inst.set_run_state(InstanceState.STOPPING, InstanceState.STOPPED)
        return inst

    def start(self, inst: InstanceRecord) -> InstanceRecord:
        """instance_start: answers ``starting``; the next read finds it ``running``."""
        if inst.run_state in (InstanceState.RUNNING, InstanceState.STARTING):
            return inst
        if inst.run_state not in (InstanceState.STOPPED, InstanceState.FAILED):
            raise errors.invalid_request(f"cannot start instance in state {inst.run_state.value}")
        inst.set_run_state(InstanceState.STARTING, InstanceState.RUNNING)
        return inst

    # ---- snapshots (FACTS §3) ----

    def create_snapshot(self, name: str, description: str, disk: DiskRecord) -> SnapshotRecord:
        """snapshot_create: synchronous, ready at once, size = the disk's size."""
        check_description(description)
        if disk.read_only:
            raise errors.invalid_request("can't create a snapshot of a read-only disk")
        if disk.state not in _SNAPSHOT_DISK_STATES:
            raise errors.unavailable()
        self._check_new_name("snapshot", self.snapshots, name, lambda s: s.name)
        self._reserve(disk.size)
        snap = SnapshotRecord(
            id=str(uuid.uuid4()),
            name=name,
            description=description,
            disk_id=disk.id,
            size=disk.size,
            block_size=disk.block_size,
        )
        self.backing.snapshot(disk.name, name)
        self.snapshots[snap.id] = snap
        return snap

    def delete_snapshot(self, snap: SnapshotRecord) -> None:
        """snapshot_delete: ready or faulted snapshots; disks made from it are not affected."""
        if snap.state not in _DELETABLE_SNAPSHOT_STATES:
            raise errors.invalid_request(
                f'snapshot cannot be deleted in state "{snap.state.value}"'
            )
        self.backing.delete_snapshot(snap.name)
        del self.snapshots[snap.id]

    # ---- images (FACTS §3) ----

    def image(self, value: str, project: str | None) -> ImageRecord:
        """The image an ``{image}`` path value (and ``?project``) select: by UUID any image; by
        name with a project that project's image, without one the silo's."""
        if is_uuid(value):
            return self._select("image", self._visible_images(), value, project, _image_name)
        if project is None:
            return self._by_name("image", self._scope(None), value, _image_name)
        self.check_project(project)
        return self._by_name("image", self._scope(self.project_id), value, _image_name)

    def list_images(self, project: str | None) -> list[ImageRecord]:
        """image_list: the project's images with a project, else the silo's.

        ASSUMPTION: with a project only that project's images (omicron lists project images
        for a project selector); the document's summary mentions both kinds."""
        if project is not None:
            self.check_project(project)
            return list(self._scope(self.project_id).values())
        return list(self._scope(None).values())

    def _visible_images(self) -> dict[str, ImageRecord]:
        """The images a UUID may select: the project's and the silo's (another project's image
        is not found, as to a user without access to that project)."""
        return {i.id: i for i in self.images.values() if i.project_id in (None, self.project_id)}

    def _scope(self, project_id: str | None) -> dict[str, ImageRecord]:
        """The images of ``project_id`` (None: the silo's), whose names are unique among them."""
        return {i.id: i for i in self.images.values() if i.project_id == project_id}

    def create_image(self, new: NewImage) -> ImageRecord:
        """image_create from a ready snapshot of the project; the image copies its data, size
        and block size."""
        check_description(new.description)
        snap = self.snapshots.get(new.snapshot_id)
        if snap is None:
            raise errors.not_found("snapshot", new.snapshot_id, by_id=True)
        if snap.state != SnapshotState.READY:
            raise errors.invalid_request(f"snapshot {snap.id} is in state {snap.state.value}")
        project_id = self.project_id if new.project else None
        self._check_new_name("image", self._scope(project_id), new.name, _image_name)
        self._reserve(snap.size)
        image = ImageRecord(
            id=str(uuid.uuid4()),
            name=new.name,
            description=new.description,
            project_id=project_id,
            size=snap.size,
            block_size=snap.block_size,
            os=new.os,
            version=new.version,
        )
        self.backing.image(snap.name, image.id)
        self.images[image.id] = image
        return image

    def delete_image(self, image: ImageRecord) -> None:
        """image_delete: disks made from it keep their data."""
        self.backing.delete_image(image.id)
        del self.images[image.id]

    def promote(self, image: ImageRecord) -> ImageRecord:
        """image_promote: a project image becomes the silo's (ASSUMPTION: a silo image is 400
        InvalidRequest, a silo image of that name 400 ObjectAlreadyExists)."""
        if image.project_id is None:
            raise errors.invalid_request("image is already a silo image")
        self._check_new_name("image", self._scope(None), image.name, _image_name)
        image.project_id, image.modified = None, now()
        return image

    def demote(self, image: ImageRecord, project: str) -> ImageRecord:
        """image_demote: a silo image becomes ``project``'s (same ASSUMPTIONs as ``promote``)."""
        self.check_project(project)
        if image.project_id is not None:
            raise errors.invalid_request("image is already a project image")
        self._check_new_name("image", self._scope(self.project_id), image.name, _image_name)
        image.project_id, image.modified = self.project_id, now()
        return image


def _image_name(image: ImageRecord) -> str:
    return image.name


def check_disk_size(size: int, block_size: int) -> None:
    """The server's size rules: whole GiB, 1 GiB to 1023 GiB, a multiple of the block size."""
    if size % block_size != 0:
        raise errors.invalid_value(
            "size", f"total size must be a multiple of block size {block_size}"
        )
    if size < MIN_DISK_SIZE:
        raise errors.invalid_value("size", "total size must be at least 1 GiB")
    if size % GIB != 0:
        raise errors.invalid_value("size", "total size must be a multiple of 1 GiB")
    if size > MAX_DISK_SIZE:
        raise errors.invalid_value("size", "total size must be less than 1023 GiB")
