"""Reads that treat "not there" as an answer, not an error."""

from __future__ import annotations

from csi_oxide.errors import CsiOxideError
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import OxideNotFoundError
from csi_oxide.oxide.types import Disk, Image, Snapshot


async def disk_or_none(api: OxideApi, name: str) -> Disk | None:
    """The disk named ``name``, or None when Oxide has none."""
    try:
        return await api.disk_view(name)
    except OxideNotFoundError:
        return None


async def snapshot_or_none(api: OxideApi, name: str) -> Snapshot | None:
    """The snapshot named ``name``, or None when Oxide has none."""
    try:
        return await api.snapshot_view(name)
    except OxideNotFoundError:
        return None


async def image_or_none(api: OxideApi, name: str, *, silo_too: bool = True) -> Image | None:
    """The image named ``name``: the project's, else (``silo_too``) the silo's; None when there
    is none."""
    for silo in (False, True) if silo_too else (False,):
        try:
            return await api.image_view(name, silo=silo)
        except OxideNotFoundError:
            continue
    return None


async def instance_label(api: OxideApi, instance_id: str) -> str:
    """How messages name an instance: ``'worker-1' (instance <uuid>)``, the UUID alone when the
    name cannot be read (the message is about something else; it must not fail on this)."""
    try:
        instance = await api.instance_view(instance_id)
    except CsiOxideError:
        return f"instance {instance_id}"
    return f"{instance.name!r} (instance {instance_id})"
