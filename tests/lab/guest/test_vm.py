"""The guest's qemu command line and guest init, checked without booting (the boot itself is in
test_guest_rack.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from csi_oxide_lab.guest import vm
from tests import skips

pytestmark = skips.skip_if(vm.unavailable_reason())

INSTANCE = "6b833db9-b047-4886-a46a-42882f1d4aa1"


def _guest(tmp_path: Path) -> vm.GuestVM:
    return vm.GuestVM(
        workdir=tmp_path,
        instance_id=INSTANCE,
        boot_disk=tmp_path / "boot.img",
        boot_serial="sim-node-0-boot-disk-with-a-long-name",
    )


def test_command_line_makes_the_instance_and_stays_on_loopback(tmp_path: Path) -> None:
    argv = _guest(tmp_path)._argv(41234)
    opts = next(a for a in argv if a.startswith("--qemu-opts=")).removeprefix("--qemu-opts=")
    assert f"-uuid {INSTANCE}" in opts  # SMBIOS product_uuid = the instance ID
    assert "serial=sim-node-0-boot-disk,drive=bootdisk" in opts  # first 20 bytes of the name
    assert opts.count("-device pcie-root-port,") == vm.HOTPLUG_PORTS
    # User networking only, isolated, and the one forward listens on 127.0.0.1.
    assert "restrict=on" in opts
    assert f"hostfwd=tcp:127.0.0.1:41234-:{vm.GUEST_PORT}" in opts
    assert "-netdev user," in opts
    assert "bridge" not in opts
    assert "tap" not in opts
    assert "--disable-kvm" in argv  # nested KVM hangs on this kind of machine: TCG
    assert f"--rwdir={tmp_path}" in argv


def test_guest_init_starts_the_node_without_a_node_id(tmp_path: Path) -> None:
    script = _guest(tmp_path)._guest_script().read_text()
    assert "-u CSI_OXIDE_NODE_ID" in script  # the node must read SMBIOS
    assert "-u OXIDE_TOKEN" in script  # the node never needs a credential
    assert "serve --mode node" in script
    assert "--node-id" not in script
    assert f"tcp:0.0.0.0:{vm.GUEST_PORT}" in script  # the guest's own, qemu-made network


def test_unavailable_without_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which

    def which(name: str) -> str | None:
        return None if name == "qemu-system-x86_64" else real_which(name)

    monkeypatch.setattr(shutil, "which", which)
    assert "qemu-system-x86_64 is not installed" in str(vm.unavailable_reason())
