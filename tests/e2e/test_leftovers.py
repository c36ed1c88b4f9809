"""leftovers.py: what a killed cluster run left is found through its ledger and swept away by the
next run; a run still going is left alone.

The ledger parts run anywhere; the sweep of real processes, mounts, loop devices and cgroups needs
root (skipped with that reason otherwise)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import leftovers
from tests.e2e.leftovers import Ledger, alive, mounts_below, start_time, sweep
from tests.loops import attach, detach_if_ours


def _dead_owner(folder: Path) -> Ledger:
    """A ledger whose owner process has exited (a SIGKILLed test run)."""
    owner = subprocess.Popen(["true"])
    started = start_time(owner.pid)
    owner.wait()
    return Ledger(owner.pid, started or 1, folder=folder)


def test_a_ledger_round_trips_and_knows_its_owner(tmp_path: Path) -> None:
    ledger = Ledger.for_this_process(tmp_path)
    ledger.record_pid("me", os.getpid())
    ledger.record_dir(tmp_path / "state")
    ledger.record_cgroup("kubepods")
    loaded = Ledger.load(ledger.path)
    assert loaded == ledger
    assert alive(loaded.owner, loaded.owner_started)
    assert not alive(loaded.owner, loaded.owner_started + 1)  # a reused PID is not ours
    ledger.drop()
    assert list(tmp_path.iterdir()) == []


def test_a_live_run_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ledger = Ledger.for_this_process(tmp_path / "ledgers")
    ledger.record_dir(state)
    assert sweep(tmp_path / "ledgers", log=lambda _: None) == []
    assert state.exists() and ledger.path.exists()


def test_an_unreadable_ledger_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "1-2-x.json").write_text("{not json")
    assert sweep(tmp_path, log=lambda _: None) == []
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def scratch_cgroup() -> Iterator[str]:
    name = f"csi-oxide-e2e-test-{os.getpid()}"
    yield name
    leftovers.kill_cgroups([name])


@pytest.mark.root
def test_a_killed_run_is_swept(tmp_path: Path, scratch_cgroup: str) -> None:
    state = tmp_path / "state"
    (state / "mnt").mkdir(parents=True)
    ledger = _dead_owner(tmp_path / "ledgers")
    ledger.record_dir(state)
    ledger.record_cgroup(scratch_cgroup)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    ledger.record_pid("sleeper", sleeper.pid)
    memory = leftovers.CGROUP_ROOT / "memory" / scratch_cgroup
    memory.mkdir()
    pod = subprocess.Popen(["sleep", "600"], start_new_session=True)
    (memory / "cgroup.procs").write_text(str(pod.pid))
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(state / "mnt")], check=True)
    disk = state / "disk"
    with disk.open("wb") as f:
        f.truncate(1 << 20)
    host_dir = tmp_path / "host" / "device-plugins"  # as a kubelet makes below /var/lib
    host_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as dead:  # a socket left by a killed kubelet
        dead.bind(str(host_dir / "kubelet.sock"))
    ledger.record_host_dir(host_dir.parent)
    ledger.record_host_dir(host_dir)
    loop = attach(disk)
    try:
        found = sweep(tmp_path / "ledgers", log=lambda _: None)
        assert sleeper.wait(10) == -9 and pod.wait(10) == -9
        assert f"process sleeper ({sleeper.pid})" in found
        assert f"pod process {pod.pid}" in found
        assert f"mount {state / 'mnt'}" in found
        assert f"loop device {loop}" in found
        assert mounts_below([str(state)]) == []
        assert not Path(f"/sys/block/{Path(loop).name}/loop").exists() or _unbound(loop)
        assert not memory.exists() and not state.exists()
        assert not host_dir.parent.exists()
        assert list((tmp_path / "ledgers").iterdir()) == []
    finally:
        for proc in (sleeper, pod):
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(state / "mnt")], capture_output=True, check=False)
        detach_if_ours(loop, disk)  # the sweep detached it: the number may be another's now


def _unbound(loop: str) -> bool:
    """The loop device lost its backing file (the kernel may take a moment to free it)."""
    deadline = time.monotonic() + 5
    backing = Path(f"/sys/block/{Path(loop).name}/loop/backing_file")
    while backing.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not backing.exists()
