"""The QMP client against a real qemu (no guest: a paused q35 machine answers QMP at once)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide_lab.guest.qmp import QmpClient, QmpError
from tests import skips

pytestmark = skips.skip_if(
    "qemu-system-x86_64 is not installed (`make system-deps` as root installs it)"
    if skips.missing_tools("qemu-system-x86_64")
    else None
)


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[Path]:
    """A paused q35 machine with one PCIe root port; yields its QMP socket path."""
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
            "-device",
            "pcie-root-port,id=hp1,chassis=1,slot=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, "qemu exited"
            assert time.monotonic() < deadline, "qemu made no QMP socket"
            time.sleep(0.05)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_negotiates_and_runs_commands(qemu: Path) -> None:
    client = QmpClient.connect(str(qemu))
    try:
        status = client.execute("query-status")
        assert status["status"] == "prelaunch"
        assert status["running"] is False
    finally:
        client.close()


def test_adds_an_nvme_disk_with_its_serial_on_a_root_port(qemu: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    client = QmpClient.connect(str(qemu))
    try:
        file = {"driver": "file", "filename": str(image)}
        client.execute("blockdev-add", {"driver": "raw", "node-name": "b1", "file": file})
        args = {"driver": "nvme", "id": "n1", "serial": "csi-0123456789abcdef", "drive": "b1"}
        client.execute("device_add", {**args, "bus": "hp1"})
        serial = client.execute("qom-get", {"path": "/machine/peripheral/n1", "property": "serial"})
        assert serial == "csi-0123456789abcdef"
    finally:
        client.close()


def test_an_error_answer_raises_with_qemus_description(qemu: Path) -> None:
    client = QmpClient.connect(str(qemu))
    try:
        with pytest.raises(QmpError, match="can't find value 'missing'"):
            client.execute(
                "device_add", {"driver": "nvme", "id": "n2", "drive": "missing", "bus": "hp1"}
            )
        assert client.execute("query-status")["status"] == "prelaunch"  # still usable
    finally:
        client.close()


def test_waiting_for_an_event_that_never_comes_ends_in_an_error(qemu: Path) -> None:
    client = QmpClient.connect(str(qemu))
    try:
        with pytest.raises(QmpError, match="no answer in time"):
            client.wait_event("DEVICE_DELETED", lambda data: True, timeout=0.5)
    finally:
        client.close()


def test_connecting_to_no_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match="cannot connect"):
        QmpClient.connect(str(tmp_path / "absent.sock"), timeout=1)
