"""Domain values for the parts of the Oxide API the driver uses.

Only ``csi_oxide.oxide.client`` turns JSON into these; everything else sees plain frozen values.
Oxide's rules that the node plugin follows too (names, block sizes, disks per instance) are in
``csi_oxide.contract.oxide_rules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

GIB = 1024**3
MIN_DISK_SIZE = 1 * GIB
MAX_DISK_SIZE = 1023 * GIB
MAX_DESCRIPTION_LENGTH = 512


class DiskState(StrEnum):
    """The ``state`` tag of an Oxide disk (all twelve published values)."""

    CREATING = "creating"
    DETACHED = "detached"
    IMPORT_READY = "import_ready"
    IMPORTING_FROM_URL = "importing_from_url"
    IMPORTING_FROM_BULK_WRITES = "importing_from_bulk_writes"
    FINALIZING = "finalizing"
    MAINTENANCE = "maintenance"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DESTROYED = "destroyed"
    FAULTED = "faulted"


PUBLISHED_STATES = frozenset({DiskState.ATTACHING, DiskState.ATTACHED, DiskState.DETACHING})


class SnapshotState(StrEnum):
    """The state of an Oxide snapshot."""

    CREATING = "creating"
    READY = "ready"
    FAULTED = "faulted"
    DESTROYED = "destroyed"


class InstanceState(StrEnum):
    """The ``run_state`` of an Oxide instance."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    MIGRATING = "migrating"
    REPAIRING = "repairing"
    FAILED = "failed"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class Disk:
    """An Oxide disk. ``instance_id`` is set while attaching, attached or detaching."""

    id: str
    name: str
    description: str
    project_id: str
    size: int
    block_size: int
    state: DiskState
    instance_id: str | None
    snapshot_id: str | None
    image_id: str | None
    read_only: bool
    disk_type: str
    time_created: datetime

    @property
    def published(self) -> bool:
        """True while the disk is attached to, or moving to or from, an instance."""
        return self.state in PUBLISHED_STATES


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An Oxide snapshot of a disk."""

    id: str
    name: str
    description: str
    project_id: str
    disk_id: str
    size: int
    state: SnapshotState
    time_created: datetime


@dataclass(frozen=True, slots=True)
class Image:
    """An Oxide image: a copy of a snapshot's data, in a project (``project_id``) or the silo
    (``project_id`` None). It has no state: it is usable once it exists."""

    id: str
    name: str
    description: str
    project_id: str | None
    size: int
    block_size: int
    time_created: datetime


@dataclass(frozen=True, slots=True)
class Instance:
    """An Oxide instance (a Kubernetes node, for this driver)."""

    id: str
    name: str
    project_id: str
    run_state: InstanceState
    boot_disk_id: str | None


@dataclass(frozen=True, slots=True)
class Utilization:
    """Silo storage quota (``capacity``) and what is provisioned against it, in bytes."""

    capacity_storage: int
    provisioned_storage: int

    @property
    def free_storage(self) -> int:
        """Quota left; an upper bound, since physical space can run out first."""
        return max(0, self.capacity_storage - self.provisioned_storage)


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """What ``disk_create`` needs. Exactly one of ``block_size`` (blank), ``snapshot_id`` or
    ``image_id``; ``read_only`` only with a snapshot or an image (the disk is then exactly the
    source's size)."""

    name: str
    description: str
    size: int
    block_size: int | None = None
    snapshot_id: str | None = None
    image_id: str | None = None
    read_only: bool = False

    def __post_init__(self) -> None:
        # A programmer's error, never a user's: the controller builds every spec itself.
        given = [v for v in (self.block_size, self.snapshot_id, self.image_id) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"disk {self.name!r}: give exactly one of a block size (blank), a snapshot ID "
                "or an image ID"
            )
        if self.read_only and self.block_size is not None:
            raise ValueError(f"disk {self.name!r}: a blank disk cannot be read-only")
