"""``csi-oxide static-pv``: the PersistentVolume for a disk attached to a node by an operator.

On today's racks a disk can be attached only while its instance is stopped, so a pod on a
running node can use a disk only if it was attached before the node started. This command reads
the disk and its instance from the Oxide API and prints a PV that names the disk, pinned to that
node, for ``kubectl apply -f -`` (docs/todays-racks.md). It refuses what would be unsafe to hand
out: the instance's boot disk, a disk this driver made (those have PVs already), a disk whose
NVMe serial (its name's first 20 bytes) another disk of the instance shares, so the node could
not tell them apart.

``describe`` asks the API and checks; ``manifest`` is pure and renders YAML by hand (every value
is a validated name or a number, and strings are JSON-quoted, which YAML reads as they are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from csi_oxide import DRIVER_NAME
from csi_oxide.contract.oxide_rules import is_valid_name
from csi_oxide.contract.volumes import FILESYSTEMS, SERIAL_BYTES, serial_of
from csi_oxide.controller.record import PREFIX
from csi_oxide.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.errors import OxideNotFoundError
from csi_oxide.oxide.types import GIB, Disk, DiskState, Instance


@dataclass(frozen=True, slots=True)
class AttachedDisk:
    """A disk and the instance it is attached to, checked fit to be a static volume there."""

    disk: Disk
    instance: Instance


async def describe(api: OxideApi, disk_name: str) -> AttachedDisk:
    """The disk named ``disk_name`` and its instance; an error saying why it cannot serve as a
    static volume otherwise."""
    if not is_valid_name(disk_name):
        raise InvalidArgumentError(f"{disk_name!r} is not an Oxide disk name")
    try:
        disk = await api.disk_view(disk_name)
    except OxideNotFoundError:
        raise NotFoundError(f"no disk {disk_name!r} in project {api.project}") from None
    if disk.state is not DiskState.ATTACHED or disk.instance_id is None:
        raise FailedPreconditionError(
            f"disk {disk_name} is {disk.state}, not attached to an instance: attach it while the "
            "instance is stopped, then start the instance"
        )
    instance = await api.instance_view(disk.instance_id)
    _refuse_unsafe(disk, instance, await api.disk_list())
    return AttachedDisk(disk, instance)


def _refuse_unsafe(disk: Disk, instance: Instance, disks: list[Disk]) -> None:
    if instance.boot_disk_id == disk.id:
        raise FailedPreconditionError(
            f"disk {disk.name} is the boot disk of instance {instance.name}: never a volume"
        )
    if disk.description.startswith(PREFIX):
        raise FailedPreconditionError(
            f"disk {disk.name} was made by csi-oxide: its volume has a PersistentVolume already"
        )
    twins = [
        d.name
        for d in disks
        if d.instance_id == instance.id and d.id != disk.id
        if serial_of(d.name) == serial_of(disk.name)
    ]
    if twins:
        raise FailedPreconditionError(
            f"disk {disk.name} and {', '.join(sorted(twins))} of instance {instance.name} share "
            f"their first {SERIAL_BYTES} characters, the NVMe serial the node finds a disk by: "
            "the node could not tell them apart (rename by re-creating one of them)"
        )


def manifest(
    attached: AttachedDisk, *, node_name: str, fs_type: str, pv_name: str | None = None
) -> str:
    """The PersistentVolume YAML for ``attached``, pinned to the Kubernetes node ``node_name``.

    Reclaim policy Retain: deleting its claim never deletes the operator's disk."""
    if fs_type not in FILESYSTEMS:
        raise InvalidArgumentError(f"fs type {fs_type!r}: one of {', '.join(FILESYSTEMS)}")
    disk = attached.disk
    name = pv_name or f"oxide-{disk.name}"
    lines = [
        "apiVersion: v1",
        "kind: PersistentVolume",
        "metadata:",
        f"  name: {_q(name)}",
        "  annotations:",
        f"    csi.oxide.computer/instance: {_q(attached.instance.name)}",
        "spec:",
        "  capacity:",
        f"    storage: {_q(f'{disk.size // GIB}Gi')}",
        "  accessModes: [ReadWriteOnce]",
        "  persistentVolumeReclaimPolicy: Retain",
        '  storageClassName: ""',
        "  volumeMode: Filesystem",
        "  csi:",
        f"    driver: {_q(DRIVER_NAME)}",
        f"    volumeHandle: {_q(disk.name)}",
        f"    fsType: {_q(fs_type)}",
        f"    readOnly: {json.dumps(disk.read_only)}",
        "  nodeAffinity:",
        "    required:",
        "      nodeSelectorTerms:",
        "        - matchExpressions:",
        "            - key: kubernetes.io/hostname",
        "              operator: In",
        f"              values: [{_q(node_name)}]",
    ]
    return "\n".join(lines) + "\n"


def _q(value: str) -> str:
    return json.dumps(value)
