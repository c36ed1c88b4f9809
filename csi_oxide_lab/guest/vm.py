"""The local instance as a real Linux guest: qemu (TCG) booted by virtme-ng with the host's root
filesystem read-only, SMBIOS UUID = the instance ID, a cold-plugged boot NVMe disk, PCIe root ports
for NVMe hot-plug over QMP, and the node plugin running inside.

The node plugin's gRPC socket reaches the host through two bridges: in the guest from its
user-network address to the plugin's unix socket, and on the host from a unix socket to qemu's
``hostfwd``, bound to 127.0.0.1. The user network is ``restrict=on``: the guest can reach nothing
outside, and the host side sends nothing beyond the loopback range.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from csi_oxide_lab.guest.bridge import BridgeThread
from csi_oxide_lab.guest.qmp import QmpClient, QmpError

HOTPLUG_PORTS = 12  # an Oxide instance holds at most 12 disks, boot disk included
GUEST_PORT = 10000  # the guest-side bridge's TCP port on the guest's own network
GUEST_ADDRESS = "10.0.2.15"  # the address qemu's user network forwards to
BOOT_TIMEOUT = 300.0
UNPLUG_TIMEOUT = 60.0
GUEST_LOGS = ("qemu.log", "node.log", "bridge.log", "kernel.log")  # in ``workdir``


def guest_logs(workdir: Path) -> dict[str, str]:
    """The guest's logs in ``workdir`` (``GUEST_LOGS``) that can be read, by name."""
    logs = {}
    for name in GUEST_LOGS:
        with contextlib.suppress(OSError):
            logs[name] = (workdir / name).read_text(errors="replace")
    return logs


class GuestError(RuntimeError):
    """The guest could not be booted, or a hot-plug operation failed."""


def _vng() -> str | None:
    beside = Path(sys.executable).parent / "vng"
    return str(beside) if beside.exists() else shutil.which("vng")


def find_kernel() -> Path | None:
    """The kernel to boot: ``CSI_OXIDE_GUEST_KERNEL``, else the newest ``/boot/vmlinuz-*``."""
    chosen = os.environ.get("CSI_OXIDE_GUEST_KERNEL")
    if chosen:
        return Path(chosen) if Path(chosen).exists() else None
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    return kernels[-1] if kernels else None


def unavailable_reason() -> str | None:
    """Why a guest cannot boot on this machine (None when it can)."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian qemu-system-x86; `make system-deps`)"
    if find_kernel() is None:
        return "no kernel in /boot (Debian linux-image-amd64; `make system-deps`)"
    if _vng() is None:
        return "virtme-ng (vng) is not installed in this environment (pip install -e '.[dev]')"
    if shutil.which("busybox") is None:
        return "busybox is not installed (Debian busybox-static; `make system-deps`)"
    return None


def spawn_tethered(
    argv: list[str], *, output: IO[bytes], env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, under ``csi_oxide_lab.guest.tether``: its whole
    process group (qemu, a grandchild of vng, included) is killed when this process dies, even
    by SIGKILL. The returned process is the tether; it ends with ``argv``'s status, and closing
    its ``stdin`` kills the group."""
    tether = [sys.executable, "-m", "csi_oxide_lab.guest.tether", "--", *argv]
    return subprocess.Popen(  # noqa: S603 (our own argv)
        tether,
        stdin=subprocess.PIPE,  # the tether: its write end lives exactly as long as we do
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class _Plugged:
    device_id: str
    node_name: str
    port: str


@dataclass
class GuestVM:
    """One guest. ``workdir`` is shared read-write with the guest at the same path (its logs,
    and where a CO puts staging and target paths the guest must see)."""

    workdir: Path
    instance_id: str
    boot_disk: Path
    boot_serial: str
    memory: str = "1536M"
    # One vCPU: a hot-unplug's memory-map change then happens on the vCPU that asked for it (its
    # ACPI eject), which drops its cached translations at once; with two, the other vCPU could
    # write to a device through a stale translation and qemu 7.2 crashed (see ``paused``).
    cpus: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _qmp: QmpClient | None = None
    _bridge: BridgeThread | None = None
    _plugged: dict[str, _Plugged] = field(default_factory=dict)
    _port_freed: dict[str, int] = field(default_factory=dict)  # port -> its unplug's rank
    _serial: int = 0

    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    @property
    def node_socket(self) -> Path:
        """The host unix socket that reaches the node plugin in the guest."""
        return self.workdir / "node.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "qemu.log"

    def _guest_script(self) -> Path:
        py = shlex.quote(sys.executable)
        work = shlex.quote(str(self.workdir))
        script = f"""#!/bin/sh
# The guest's init: network, the kernel's log kept (kernel.log), the node plugin (node ID
# from SMBIOS), the guest-side bridge.
ip link set lo up
for dev in /sys/class/net/*; do
  name=${{dev##*/}}
  [ "$name" = lo ] && continue
  ip link set "$name" up
  ip addr add {GUEST_ADDRESS}/24 dev "$name"
done
mkdir -p /tmp/csi /var/lib/csi-oxide/node
cd /tmp
dmesg --follow > {work}/kernel.log 2>&1 &
env -u CSI_OXIDE_NODE_ID -u CSI_OXIDE_SIM_DEVICE_DIR -u OXIDE_TOKEN -u OXIDE_HOST \\
  {py} -m csi_oxide serve --mode node --endpoint unix:///tmp/csi/csi.sock \\
  --log-format console --state-dir /var/lib/csi-oxide/node > {work}/node.log 2>&1 &
{py} -m csi_oxide_lab.guest.bridge --listen tcp:0.0.0.0:{GUEST_PORT} \\
  --connect unix:/tmp/csi/csi.sock --ready-file /tmp/csi/bridge-ready > {work}/bridge.log 2>&1 &
while [ ! -S /tmp/csi/csi.sock ] || [ ! -e /tmp/csi/bridge-ready ]; do sleep 0.2; done
cut -d' ' -f1 /proc/uptime > {work}/ready.tmp && mv {work}/ready.tmp {work}/ready
wait
"""
        path = self.workdir / "guest-init.sh"
        path.write_text(script)
        path.chmod(0o755)
        return path

    def _argv(self, host_port: int) -> list[str]:
        vng = _vng()
        kernel = find_kernel()
        if vng is None or kernel is None:
            raise GuestError(unavailable_reason() or "cannot boot a guest here")
        opts = [
            f"-uuid {self.instance_id}",
            f"-qmp unix:{self.qmp_path},server=on,wait=off",
            f"-drive file={self.boot_disk},if=none,id=bootdisk,format=raw",
            f"-device nvme,serial={self.boot_serial[:20]},drive=bootdisk",
            f"-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}",
            "-device virtio-net-pci,netdev=n0",
        ]
        opts += [
            f"-device pcie-root-port,id=hp{i},chassis={i},slot={i}"
            for i in range(1, HOTPLUG_PORTS + 1)
        ]
        return [
            vng,
            "--disable-kvm",
            "--disable-microvm",
            f"--memory={self.memory}",
            f"--cpus={self.cpus}",
            f"--rwdir={self.workdir}",
            f"--run={kernel}",
            f"--qemu-opts={' '.join(opts)}",
            f"--exec={self._guest_script()}",
        ]

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot and wait until the node plugin in the guest is reachable."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("ready", "qmp.sock", "node.sock"):
            (self.workdir / name).unlink(missing_ok=True)
        host_port = _free_port()
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._proc = spawn_tethered(
                self._argv(host_port), output=log, env=env, cwd=self.workdir
            )
        try:
            self._wait(lambda: self.qmp_path.exists(), "qemu's QMP socket", started + timeout)
            self._qmp = QmpClient.connect(str(self.qmp_path))
            self.timings["qemu_up_s"] = time.monotonic() - started
            self._wait(
                lambda: (self.workdir / "ready").exists(), "the node plugin", started + timeout
            )
            self.timings["node_ready_s"] = time.monotonic() - started
            with contextlib.suppress(ValueError, OSError):  # the guest's own clock at that point
                uptime = (self.workdir / "ready").read_text().strip()
                self.timings["guest_uptime_at_ready_s"] = float(uptime)
            self._bridge = BridgeThread(f"unix:{self.node_socket}", f"tcp:127.0.0.1:{host_port}")
        except BaseException:
            self.stop()
            raise

    def _wait(self, ready: object, what: str, deadline: float) -> None:
        assert callable(ready)
        while not ready():
            if self._proc is not None and self._proc.poll() is not None:
                raise GuestError(f"the guest exited before {what} was up:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise GuestError(f"{what} not up in time:\n{self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self) -> str:
        logs = guest_logs(self.workdir)
        return "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in logs.items())

    def _client(self) -> QmpClient:
        if self._qmp is None:
            raise GuestError("the guest is not running")
        return self._qmp

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The guest stopped for the length of the block (QMP ``stop``: every vCPU still, every
        disk's I/O drained and flushed to its file), resumed after it (``cont``).

        Used around a snapshot's copy (one instant of the disk) and around ``device_add``:
        qemu 7.2's TCG updates a running vCPU's view of the memory map before that vCPU drops
        its cached translations, and a guest MMIO write in between crashed qemu (a NULL memory
        region in ``memory_region_dispatch_write``) in a hot-plug stress run. A stopped vCPU
        drops them before it runs again."""
        qmp = self._client()
        try:
            qmp.execute("stop")
        except QmpError as exc:
            raise GuestError(f"pausing the guest: {exc}") from exc
        try:
            yield
        finally:
            try:
                qmp.execute("cont")
            except QmpError as exc:
                raise GuestError(f"resuming the guest: {exc}") from exc

    def hotplug(self, disk: str, path: Path, block_size: int) -> None:
        """Plug ``path`` in as an NVMe controller with serial ``disk[:20]`` on a free root port."""
        if disk in self._plugged:
            return
        port = self._free_port()
        self._serial += 1
        plugged = _Plugged(f"nvme-{self._serial}", f"blk-{self._serial}", port)
        qmp = self._client()
        started = time.monotonic()
        try:
            qmp.execute(
                "blockdev-add",
                {
                    "driver": "raw",
                    "node-name": plugged.node_name,
                    "file": {"driver": "file", "filename": str(path)},
                },
            )
            try:
                with self.paused():  # see paused(): no vCPU runs while the memory map changes
                    qmp.execute(
                        "device_add",
                        {
                            "driver": "nvme",
                            "id": plugged.device_id,
                            "serial": disk[:20],
                            "drive": plugged.node_name,
                            "bus": plugged.port,
                            "logical_block_size": block_size,
                            "physical_block_size": block_size,
                        },
                    )
            except QmpError:
                with contextlib.suppress(QmpError):
                    qmp.execute("blockdev-del", {"node-name": plugged.node_name})
                raise
        except QmpError as exc:
            raise GuestError(f"hot-plug of {disk}: {exc}") from exc
        self._plugged[disk] = plugged
        self.timings["last_hotplug_s"] = time.monotonic() - started

    def _free_port(self) -> str:
        """The free root port freed longest ago (one never used first): a port whose unplug the
        guest has only just finished is not handed a new device at once (the guest's hot-plug
        handling of the slot may still be settling; a device plugged there then vanished at once
        in stress runs). Ordered by when each port was freed, not by when its last device was
        plugged: a disk plugged early and unplugged just now frees the port used longest ago."""
        used = {p.port for p in self._plugged.values()}
        free = [f"hp{i}" for i in range(1, HOTPLUG_PORTS + 1) if f"hp{i}" not in used]
        if not free:
            raise GuestError("no free PCIe root port in the guest")
        return min(free, key=lambda port: self._port_freed.get(port, 0))

    def unplug(self, disk: str, timeout: float = UNPLUG_TIMEOUT) -> None:
        """Ask the guest to release the disk and wait until qemu reports it gone."""
        plugged = self._plugged.get(disk)
        if plugged is None:
            return
        qmp = self._client()
        started = time.monotonic()
        try:
            qmp.execute("device_del", {"id": plugged.device_id})
            qmp.wait_event(
                "DEVICE_DELETED", lambda data: data.get("device") == plugged.device_id, timeout
            )
            qmp.execute("blockdev-del", {"node-name": plugged.node_name})
        except QmpError as exc:
            raise GuestError(f"hot-unplug of {disk}: {exc}") from exc
        del self._plugged[disk]
        self._port_freed[plugged.port] = max(self._port_freed.values(), default=0) + 1
        self.timings["last_unplug_s"] = time.monotonic() - started

    def plugged(self) -> list[str]:
        """The disks hot-plugged now."""
        return sorted(self._plugged)

    def stop(self, timeout: float = 30.0) -> None:
        """Power the guest off (QMP ``quit``); kill qemu if it does not go."""
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        if self._qmp is not None:
            with contextlib.suppress(QmpError, OSError):
                self._qmp.execute("quit")
            self._qmp.close()
            self._qmp = None
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # vng's session may hold helpers (qemu itself): end what is left of it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                proc.stdin.close()
            self._proc = None
        self._plugged.clear()
