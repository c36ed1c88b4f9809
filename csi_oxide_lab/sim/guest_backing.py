"""The simulator's ``guest`` backing: disks are sparse files (as with loop backing), and the local
instance is a real qemu guest in which attach is an NVMe hot-plug and detach a hot-unplug."""

from __future__ import annotations

from pathlib import Path

from csi_oxide_lab.guest.vm import GuestVM
from csi_oxide_lab.sim.backing import LoopBacking


class GuestBacking(LoopBacking):
    """Files under ``<state_dir>/devices`` and ``<state_dir>/snapshots`` like ``LoopBacking``;
    ``boot`` starts the guest (it needs the instance ID and the boot disk, which the simulator
    makes first). ``guest_dir`` is shared read-write with the guest at the same path."""

    def __init__(self, state_dir: Path | None) -> None:
        super().__init__(state_dir)
        self.guest_dir = self.state_dir / "guest"
        self.vm: GuestVM | None = None
        self._boot_disk: str | None = None

    def boot(self, instance_id: str, boot_disk: str) -> GuestVM:
        """Boot the guest as instance ``instance_id`` with ``boot_disk`` cold-plugged."""
        self._boot_disk = boot_disk
        self.vm = GuestVM(
            workdir=self.guest_dir,
            instance_id=instance_id,
            boot_disk=self._disk_file(boot_disk),
            boot_serial=boot_disk,
        )
        self.vm.start()
        return self.vm

    def _running(self) -> GuestVM:
        if self.vm is None:
            raise RuntimeError("the guest has not been booted")
        return self.vm

    def attach_local(
        self, disk: str, block_size: int, local: int = 0, *, read_only: bool = False
    ) -> None:
        """Hot-plug the disk's file into the guest. A read-only disk does not show as such yet:
        the guest sees a writable namespace (only the node's read-only mount protects it)."""
        if local != 0:
            raise ValueError("the guest is the only local instance")
        self._running().hotplug(disk, self._disk_file(disk), block_size)

    def detach_local(self, disk: str) -> None:
        self._running().unplug(disk)

    def device(self, disk: str) -> str | None:
        return None  # the device lives in the guest; only the guest's udev names it

    def snapshot(self, disk: str, snapshot: str) -> None:
        """A disk the guest has (hot-plugged, or its boot disk) is copied with the guest paused,
        so that the copy is one instant of the disk (crash-consistent, as an Oxide snapshot of
        an attached disk is): QMP ``stop`` answers once qemu has stopped the vCPUs and drained
        and flushed every disk's I/O to its file, and ``cont`` resumes the guest after the copy.
        Any other disk is copied as with loop backing (nothing writes it)."""
        vm = self.vm
        if vm is None or (disk not in vm.plugged() and disk != self._boot_disk):
            super().snapshot(disk, snapshot)
            return
        with vm.paused():
            super().snapshot(disk, snapshot)

    def close(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            self.vm = None
        super().close()
