"""A guest's qemu dies with the simulator that started it, even when the simulator is SIGKILLed.

The first tests need no qemu: a stand-in parent starts a process tree through the code path the
guest uses (``vm.spawn_tethered``: vng forks virtme-run, which forks qemu, so the process to watch
is a grandchild), then is SIGKILLed. The last one boots a real guest under ``csi-oxide sim``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide_lab import harness
from csi_oxide_lab.guest import vm
from tests import skips
from tests.polling import wait_until

# A parent that starts `sh` (which starts `sleep`, the grandchild) as GuestVM.start starts vng,
# writes the grandchild's pid, then waits to be killed.
STAND_IN = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from csi_oxide_lab.guest import vm
    pidfile = sys.argv[1]
    with open(os.devnull, "wb") as out:
        vm.spawn_tethered(
            ["sh", "-c", f"sleep 600 & echo $! > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; wait"],
            output=out, env=dict(os.environ), cwd=Path("/"),
        )
    time.sleep(600)
    """
)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_sigkilled_parent_takes_the_whole_tethered_tree_with_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    parent = subprocess.Popen([sys.executable, "-c", STAND_IN, str(pidfile)])
    grandchild = 0
    try:
        assert wait_until(pidfile.exists, 30.0), "the stand-in never started its tree"
        grandchild = int(pidfile.read_text())
        assert _running(grandchild)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not _running(grandchild), 10.0), "the grandchild survived"
    finally:
        parent.kill()
        parent.wait()
        if grandchild and _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)  # leave nothing behind even when the test fails


@contextlib.contextmanager
def _tethered(argv: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (workdir / "out").open("wb") as out:
        proc = vm.spawn_tethered(argv, output=out, env={}, cwd=workdir)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


def test_the_tether_ends_with_its_command_and_reports_its_status(tmp_path: Path) -> None:
    with _tethered(["sh", "-c", "exit 3"], tmp_path) as proc:
        assert proc.wait(30) == 3


def test_closing_the_tether_kills_the_group(tmp_path: Path) -> None:
    with _tethered(["sleep", "600"], tmp_path) as proc:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == -signal.SIGKILL


def _qemu_of(instance_id: str) -> list[int]:
    """The qemu processes booted with SMBIOS UUID ``instance_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and instance_id.encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.mark.root
@pytest.mark.guest
@pytest.mark.timeout(900)  # boots a guest: up to 10 minutes of TCG
@skips.opt_in("CSI_OXIDE_GUEST", "boots qemu (minutes of TCG): make guest runs it")
def test_a_sigkilled_simulator_leaves_no_qemu(tmp_path: Path) -> None:
    reason = vm.unavailable_reason()
    if reason is not None:
        skips.skip(reason)
    with open("/tmp/csi-oxide-guest-tests.lock", "w") as lock:  # one guest at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        sim = harness.start_sim(tmp_path, "--backing", "guest", timeout=600)
        try:
            qemu = _qemu_of(sim.env["CSI_OXIDE_NODE_ID"])
            assert qemu, "no qemu found for the guest"
            sim.proc.popen.send_signal(signal.SIGKILL)
            sim.proc.popen.wait()
            assert wait_until(lambda: not any(map(_running, qemu)), 30.0), "qemu survived"
        finally:
            sim.proc.stop()
            for pid in _qemu_of(sim.env["CSI_OXIDE_NODE_ID"]):
                os.kill(pid, signal.SIGKILL)
