"""The seam between the driver and the Oxide API.

``OxideApi`` is what the controller holds. ``HttpOxideClient`` implements it over HTTP; tests run it
against the simulator. All methods are coroutines. Selectors (``disk``, ``snapshot``, ``instance``)
are a name or a UUID: names are looked up in the client's configured project, UUIDs globally,
exactly as the API does. Every failure is an ``OxideError`` subclass (``csi_oxide.oxide.errors``).
"""

from __future__ import annotations

from typing import Protocol

from csi_oxide.oxide.types import Disk, DiskSpec, Image, Instance, Snapshot, Utilization


class OxideApi(Protocol):
    """The Oxide operations the driver uses, one method per API operation.

    ``HttpOxideClient`` has a few more (listing instances and their disks, starting and stopping an
    instance) that only tests, benchmarks and the end-to-end checks call; they are not part of
    this seam."""

    @property
    def project(self) -> str:
        """The project (name or ID) that names are resolved in and objects are created in."""
        ...

    async def disk_create(self, spec: DiskSpec) -> Disk:
        """``disk_create``. Returns the 201 body as sent, whose state is stale (``creating``)."""
        ...

    async def disk_view(self, disk: str) -> Disk:
        """``disk_view``. ``OxideNotFoundError`` when there is no such disk."""
        ...

    async def disk_list(self) -> list[Disk]:
        """``disk_list`` over all pages of the project."""
        ...

    async def disk_delete(self, disk: str) -> None:
        """``disk_delete``. Refused (400) unless the disk is detached or faulted."""
        ...

    async def snapshot_create(self, name: str, description: str, disk: str) -> Snapshot:
        """``snapshot_create`` of ``disk``; synchronous, the snapshot is ``ready`` on return."""
        ...

    async def snapshot_view(self, snapshot: str) -> Snapshot:
        """``snapshot_view``."""
        ...

    async def snapshot_list(self) -> list[Snapshot]:
        """``snapshot_list`` over all pages of the project."""
        ...

    async def snapshot_delete(self, snapshot: str) -> None:
        """``snapshot_delete``."""
        ...

    async def image_create(self, name: str, description: str, snapshot_id: str) -> Image:
        """``image_create`` of a project image from the snapshot with UUID ``snapshot_id``."""
        ...

    async def image_view(self, image: str, *, silo: bool = False) -> Image:
        """``image_view``: a name selects the project's image, or with ``silo`` the silo's."""
        ...

    async def image_list(self) -> list[Image]:
        """``image_list`` of the project's images, over all pages."""
        ...

    async def image_delete(self, image: str) -> None:
        """``image_delete``; disks made from the image keep their data."""
        ...

    async def instance_view(self, instance: str) -> Instance:
        """``instance_view``."""
        ...

    async def instance_disk_attach(self, instance: str, disk: str) -> Disk:
        """``instance_disk_attach``. Idempotent for the same instance; refused while it runs
        (unless the rack has hot-plug), past 12 disks, or when attached elsewhere."""
        ...

    async def instance_disk_detach(self, instance: str, disk: str) -> Disk:
        """``instance_disk_detach``. Idempotent when already detached."""
        ...

    async def utilization_view(self) -> Utilization:
        """``utilization_view``: the silo's storage quota and provisioned bytes."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
