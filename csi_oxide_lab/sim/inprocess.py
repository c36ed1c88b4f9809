"""Test support: a simulator a test drives in-process, with direct looks at and changes to its
state that the published API does not offer (content on disks, forced states, name lists).

The stable name is ``InProcessSimulator``: a ``Simulator`` plus these helpers; build it where a
test would build a ``Simulator`` and serve it in-process: the driver's client with
``carrier=csi_oxide_lab.asgi.AsgiCarrier(sim.asgi_app(validate=True))`` (or
``csi_oxide_lab.testing.sim_client``), plain requests with ``csi_oxide_lab.asgi.AsgiClient``.
Nothing in the product uses this module.
"""

from __future__ import annotations

import uuid

from csi_oxide_lab.sim.records import DiskRecord, ImageRecord, InstanceRecord
from csi_oxide_lab.sim.simulator import Simulator
from csi_oxide_lab.sim.spec import ATTACHED_STATES, DiskState, InstanceState


class InProcessSimulator(Simulator):
    """A ``Simulator`` whose state a test can read and force directly (not through HTTP); every
    helper takes the simulator's lock."""

    def _disk(self, name: str) -> DiskRecord:
        for disk in self._state.disks.values():
            if disk.name == name:
                return disk
        raise KeyError(f"no disk named {name!r}")

    def _instance(self, instance_id: str) -> InstanceRecord:
        return self._state.instances[instance_id]

    def write_content(self, disk: str, data: bytes) -> None:
        """Put ``data`` on the disk named ``disk`` (memory backing: its content token, which a
        snapshot copies and a disk created from that snapshot inherits)."""
        self._locked(lambda: self.backing.write_content(self._disk(disk).name, data))

    def read_content(self, disk: str) -> bytes:
        """What the disk named ``disk`` holds (memory: its token; loop: its first MiB, trailing
        zeros stripped)."""
        return self._locked(lambda: self.backing.read_content(self._disk(disk).name))

    def device_path(self, disk: str) -> str | None:
        """The loop device of a disk attached to the local instance (loop backing only)."""
        return self._locked(lambda: self.backing.device(self._disk(disk).name))

    def set_run_state(self, instance_id: str, state: str) -> None:
        """Force an instance's run_state (no transition in flight afterwards)."""

        def change() -> None:
            self._instance(instance_id).set_run_state(InstanceState(state))

        self._locked(change)

    def set_disk_state(self, disk: str, state: str) -> None:
        """Force a disk's state (keeps its instance for the attached-like states)."""

        def change() -> None:
            record = self._disk(disk)
            record.state = DiskState(state)
            if record.state not in ATTACHED_STATES:
                record.instance_id = None

        self._locked(change)

    def disk_names(self) -> list[str]:
        """The names of all disks, sorted."""
        return self._locked(lambda: sorted(d.name for d in self._state.disks.values()))

    def image_names(self) -> list[str]:
        """The names of all images (the project's, the silo's, other projects'), sorted."""
        return self._locked(lambda: sorted(i.name for i in self._state.images.values()))

    def add_foreign_image(self, name: str, size: int, block_size: int = 4096) -> str:
        """An image of another project of the silo (no data), which the simulated project's
        user cannot see; its ID."""

        def add() -> str:
            image = ImageRecord(
                id=str(uuid.uuid4()),
                name=name,
                description="",
                project_id=str(uuid.uuid4()),
                size=size,
                block_size=block_size,
                os="linux",
                version="1",
            )
            self._state.images[image.id] = image
            return image.id

        return self._locked(add)

    def snapshot_names(self) -> list[str]:
        """The names of all snapshots, sorted."""
        return self._locked(lambda: sorted(s.name for s in self._state.snapshots.values()))
