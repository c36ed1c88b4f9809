"""The guest's hot-plug bookkeeping, with a recording stand-in for qemu's QMP session (the real
one is exercised by test_guest_rack.py, which boots qemu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csi_oxide_lab.guest.vm import HOTPLUG_PORTS, GuestVM


class _RecordingQmp:
    def __init__(self) -> None:
        self.commands: list[str] = []
        self.buses: list[str] = []

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        self.commands.append(command)
        if command == "device_add" and arguments is not None:
            self.buses.append(arguments["bus"])

    def wait_event(self, name: str, match: object, timeout: float) -> None:
        self.commands.append(f"event {name}")


def _vm(tmp_path: Path) -> tuple[GuestVM, _RecordingQmp]:
    vm = GuestVM(workdir=tmp_path, instance_id="i", boot_disk=tmp_path / "b", boot_serial="b")
    qmp = _RecordingQmp()
    vm._qmp = qmp  # type: ignore[assignment]
    return vm, qmp


def test_the_device_is_added_while_the_guest_is_stopped(tmp_path: Path) -> None:
    vm, qmp = _vm(tmp_path)
    vm.hotplug("disk-a", tmp_path / "a", 512)
    assert qmp.commands == ["blockdev-add", "stop", "device_add", "cont"]
    assert vm.plugged() == ["disk-a"]


def test_a_port_just_freed_is_the_last_one_reused(tmp_path: Path) -> None:
    vm, qmp = _vm(tmp_path)
    for _ in range(HOTPLUG_PORTS + 2):  # plug and unplug one disk over and over
        vm.hotplug("disk-a", tmp_path / "a", 512)
        vm.unplug("disk-a")
    first_round = [f"hp{i}" for i in range(1, HOTPLUG_PORTS + 1)]
    assert qmp.buses == [*first_round, "hp1", "hp2"]  # every port once before any again


def test_ports_in_use_are_skipped(tmp_path: Path) -> None:
    vm, qmp = _vm(tmp_path)
    vm.hotplug("disk-a", tmp_path / "a", 512)
    vm.hotplug("disk-b", tmp_path / "b", 512)
    vm.unplug("disk-a")
    vm.hotplug("disk-c", tmp_path / "c", 512)
    assert qmp.buses == ["hp1", "hp2", "hp3"]


def test_a_port_freed_just_now_waits_even_when_its_disk_was_plugged_first(
    tmp_path: Path,
) -> None:
    vm, qmp = _vm(tmp_path)
    vm.hotplug("long-lived", tmp_path / "l", 512)  # hp1, kept while another disk cycles
    for _ in range(HOTPLUG_PORTS):
        vm.hotplug("cycling", tmp_path / "c", 512)
        vm.unplug("cycling")
    vm.unplug("long-lived")  # hp1 is now the port freed last
    vm.hotplug("next", tmp_path / "n", 512)
    # The cycling disk took hp2..hp12, then hp2 again: hp3 is the port freed longest ago.
    assert qmp.buses == ["hp1", *(f"hp{i}" for i in range(2, HOTPLUG_PORTS + 1)), "hp2", "hp3"]
