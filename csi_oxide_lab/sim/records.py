"""The simulator's stored objects and their JSON views (the published `Disk`, `Snapshot`, `Image`,
`Instance` and `Project` shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from csi_oxide_lab.sim.spec import ATTACHED_STATES, DiskState, InstanceState, SnapshotState

JsonObject = dict[str, object]


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def rfc3339(when: datetime) -> str:
    """RFC 3339 with microseconds and a ``Z``, as the real server prints timestamps."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class DiskRecord:
    """A simulated disk. ``instance_id`` is set in the attaching/attached/detaching states."""

    id: str
    name: str
    description: str
    size: int
    block_size: int
    state: DiskState = DiskState.DETACHED
    instance_id: str | None = None
    snapshot_id: str | None = None
    image_id: str | None = None
    read_only: bool = False
    created: datetime = field(default_factory=now)
    modified: datetime = field(default_factory=now)

    def to_json(self, project_id: str, *, state: DiskState | None = None) -> JsonObject:
        """The published `Disk` view (``state`` overrides the stored state, for the stale 201)."""
        shown = self.state if state is None else state
        disk_state: JsonObject = {"state": shown.value}
        if shown in ATTACHED_STATES:
            disk_state["instance"] = self.instance_id
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": project_id,
            "size": self.size,
            "block_size": self.block_size,
            "state": disk_state,
            "device_path": f"/mnt/{self.name}",
            "disk_type": "distributed",
            "read_only": self.read_only,
            "image_id": self.image_id,
            "snapshot_id": self.snapshot_id,
            "time_created": rfc3339(self.created),
            "time_modified": rfc3339(self.modified),
        }


@dataclass(slots=True)
class SnapshotRecord:
    """A simulated snapshot (ready as soon as it exists)."""

    id: str
    name: str
    description: str
    disk_id: str
    size: int
    block_size: int
    state: SnapshotState = SnapshotState.READY
    created: datetime = field(default_factory=now)
    modified: datetime = field(default_factory=now)

    def to_json(self, project_id: str) -> JsonObject:
        """The published `Snapshot` view."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": project_id,
            "disk_id": self.disk_id,
            "size": self.size,
            "state": self.state.value,
            "time_created": rfc3339(self.created),
            "time_modified": rfc3339(self.modified),
        }


@dataclass(slots=True)
class ImageRecord:
    """A simulated image: a copy of a snapshot's data, in a project (``project_id``) or, with
    ``project_id`` None, in the silo (visible to every project)."""

    id: str
    name: str
    description: str
    project_id: str | None
    size: int
    block_size: int
    os: str
    version: str
    created: datetime = field(default_factory=now)
    modified: datetime = field(default_factory=now)

    def to_json(self) -> JsonObject:
        """The published `Image` view. ``digest`` (optional, null here) is left out: the
        validator cannot match a null against its nullable ``allOf``."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "project_id": self.project_id,
            "size": self.size,
            "block_size": self.block_size,
            "os": self.os,
            "version": self.version,
            "time_created": rfc3339(self.created),
            "time_modified": rfc3339(self.modified),
        }


@dataclass(slots=True)
class InstanceRecord:
    """A simulated instance. ``settles_to`` is the state a start or stop is heading for."""

    id: str
    name: str
    ncpus: int = 4
    memory: int = 16 * 1024**3
    run_state: InstanceState = InstanceState.RUNNING
    settles_to: InstanceState | None = None
    boot_disk_id: str | None = None
    run_state_updated: datetime = field(default_factory=now)
    created: datetime = field(default_factory=now)
    modified: datetime = field(default_factory=now)

    def set_run_state(self, state: InstanceState, settles_to: InstanceState | None = None) -> None:
        """Move to ``state`` (heading for ``settles_to``, if any)."""
        self.run_state = state
        self.settles_to = settles_to
        self.run_state_updated = now()

    def settle(self) -> None:
        """Finish a start or stop in flight."""
        if self.settles_to is not None:
            self.set_run_state(self.settles_to)

    def to_json(self, project_id: str) -> JsonObject:
        """The published `Instance` view.

        ``auto_restart_policy`` and ``cpu_platform`` (both optional, null here) are left out: the
        validator cannot match a null against their nullable ``allOf``-of-``oneOf`` schemas.
        """
        return {
            "id": self.id,
            "name": self.name,
            "description": "simulated Kubernetes node",
            "hostname": self.name,
            "project_id": project_id,
            "ncpus": self.ncpus,
            "memory": self.memory,
            "run_state": self.run_state.value,
            "time_run_state_updated": rfc3339(self.run_state_updated),
            "boot_disk_id": self.boot_disk_id,
            "auto_restart_enabled": True,
            "auto_restart_cooldown_expiration": None,
            "enable_jumbo_frames": False,
            "time_created": rfc3339(self.created),
            "time_modified": rfc3339(self.modified),
        }
