"""What a cluster run leaves behind when it is killed, written down as it is made, and swept away
by the next run.

A run keeps a ledger, ``/run/csi-oxide-e2e/<owner pid>-<owner start time>-<tag>.json``: its owner
(the test process), the processes it started (PID and start time, so a reused PID is never killed),
the folders it works in (state, simulator) and the cgroups its kubelets made. ``Cluster.stop()``
cleans up and drops the ledger; a SIGKILLed test cannot, so ``Cluster.start()`` first calls
``sweep()``, which, for every ledger whose owner is gone, kills the recorded processes, the
containerd shims serving a recorded folder and whatever runs in the recorded cgroups, unmounts
everything below the folders, detaches loop devices backed by files in them, removes the
cgroups, the kubelets' log links into them, the folders and the host folders the run made (once
empty), then the ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.loops import DELETED, detach_if_ours

LEDGER_DIR = Path("/run/csi-oxide-e2e")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_LOG_LINKS = Path("/var/log/containers")


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def alive(pid: int, started: int) -> bool:
    """Whether process ``pid`` runs and is the one that started at ``started``."""
    return start_time(pid) == started


@dataclass
class Ledger:
    """One run's record of what it made (see the module docstring)."""

    owner: int
    owner_started: int
    pids: dict[str, list[int]] = field(default_factory=dict)  # name -> [pid, start time]
    dirs: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # below each controller of CGROUP_ROOT
    host_dirs: list[str] = field(default_factory=list)  # made outside the folders
    tag: str = field(default_factory=lambda: secrets.token_hex(4))  # one process, several runs
    folder: Path = LEDGER_DIR

    @classmethod
    def for_this_process(cls, folder: Path = LEDGER_DIR) -> Ledger:
        me = os.getpid()
        started = start_time(me)
        assert started is not None
        return cls(me, started, folder=folder)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.owner}-{self.owner_started}-{self.tag}.json"

    def record_pid(self, name: str, pid: int) -> None:
        started = start_time(pid)
        if started is not None:
            self.pids[name] = [pid, started]
            self._save()

    def record_dir(self, path: Path) -> None:
        if str(path) not in self.dirs:
            self.dirs.append(str(path))
            self._save()

    def record_host_dir(self, path: Path) -> None:
        """A host folder the run made (removed once empty, after a kubelet's socket in it)."""
        if str(path) not in self.host_dirs:
            self.host_dirs.append(str(path))
            self._save()

    def record_cgroup(self, relative: str) -> None:
        if relative not in self.cgroups:
            self.cgroups.append(relative)
            self._save()

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = {k: v for k, v in asdict(self).items() if k != "folder"}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.path)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        body = json.loads(path.read_text())
        return cls(folder=path.parent, **body)


def sweep(folder: Path = LEDGER_DIR, log: Callable[[str], None] = print) -> list[str]:
    """Clean up after every run whose owner is gone; what was found (for the log)."""
    found: list[str] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            ledger = Ledger.load(path)
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if alive(ledger.owner, ledger.owner_started):
            continue
        found += clean(ledger)
        ledger.drop()
    if found:
        log(f"swept what a killed run left: {found}")
    return found


def clean(ledger: Ledger) -> list[str]:
    """Remove everything ``ledger`` records; what there was."""
    found = _kill_recorded(ledger)
    found += _kill_shims(ledger.dirs)
    found += kill_cgroups(ledger.cgroups)
    found += [f"mount {p}" for p in unmount_below(ledger.dirs)]
    found += [f"loop device {d}" for d in detach_loops(ledger.dirs)]
    _unlink_log_links(ledger.dirs)
    found += remove_host_dirs(ledger.host_dirs)
    for d in ledger.dirs:
        if Path(d).exists() and not mounts_below([d]):
            shutil.rmtree(d, ignore_errors=True)
            found.append(f"folder {d}")
    return found


def _kill_recorded(ledger: Ledger) -> list[str]:
    found = []
    for name, (pid, started) in ledger.pids.items():
        if alive(pid, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            found.append(f"process {name} ({pid})")
    return found


def processes_naming(needles: Iterable[str], marker: bytes) -> list[int]:
    """PIDs whose command line holds ``marker`` and one of ``needles``."""
    wanted = [n.encode() for n in needles]
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in argv and any(n in argv for n in wanted):
            pids.append(int(entry.name))
    return pids


def _kill_shims(dirs: list[str]) -> list[str]:
    found = []
    for pid in processes_naming(dirs, b"containerd-shim"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        found.append(f"shim {pid}")
    return found


def _cgroup_dirs(relative: str) -> list[Path]:
    """Every folder of cgroup ``relative`` in every hierarchy, deepest first."""
    found: list[Path] = []
    for controller in sorted(CGROUP_ROOT.iterdir()):
        top = controller / relative
        if top.is_dir() and not top.is_symlink():
            found += [p for p in top.rglob("*") if p.is_dir()] + [top]
    return sorted(found, key=lambda p: -len(p.parts))


def kill_cgroups(cgroups: list[str], deadline: float = 10) -> list[str]:
    """SIGKILL whatever runs in the cgroups, then remove them (waiting for the kernel to let
    go of the killed processes); what was still running."""
    found = []
    for relative in cgroups:
        for d in _cgroup_dirs(relative):
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                    found.append(f"pod process {pid}")
    end = time.monotonic() + deadline
    for relative in cgroups:
        for d in _cgroup_dirs(relative):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        break
                    time.sleep(0.1)  # a killed process not reaped yet keeps its cgroup busy
    return sorted(set(found))


def mounts_below(dirs: list[str]) -> list[str]:
    """Mount points at or below any of ``dirs``, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == d or point.startswith(d.rstrip("/") + "/") for d in dirs):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def unmount_below(dirs: list[str]) -> list[str]:
    """Unmount (lazily) everything below ``dirs``; what was mounted."""
    first = mounts_below(dirs)
    for _ in range(3):
        left = mounts_below(dirs)
        if not left:
            break
        for point in left:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return first


def loops_below(dirs: list[str]) -> dict[str, str]:
    """Loop devices whose backing file lies below any of ``dirs``, each with that file."""
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().rstrip("\n").removesuffix(DELETED)
            if any(path.startswith(d.rstrip("/") + "/") for d in dirs):
                found[f"/dev/{backing.parent.parent.name}"] = path
    return found


def detach_loops(dirs: list[str]) -> list[str]:
    """Detach the loop devices over files below ``dirs``: each only while it is still over the
    file it was found over (tests/loops.py), not another's that took its number meanwhile."""
    found = loops_below(dirs)
    for device, path in found.items():
        with contextlib.suppress(OSError):
            detach_if_ours(device, path)
    return list(found)


def remove_host_dirs(paths: list[str]) -> list[str]:
    """Remove the host folders, deepest first, with the dead sockets in them (a kubelet's, the
    shims'), unless something else is in them; what was removed."""
    removed = []
    for path in map(Path, sorted(paths, key=lambda p: -p.count("/"))):
        _remove_dead_sockets(path)
        with contextlib.suppress(OSError):
            path.rmdir()
            removed.append(f"host folder {path}")
    return removed


def _remove_dead_sockets(folder: Path) -> None:
    """Unlink the unix sockets in ``folder`` that nothing listens on any more."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if not stat.S_ISSOCK(entry.lstat().st_mode):
                continue
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(entry))
                except ConnectionRefusedError:
                    entry.unlink(missing_ok=True)
                except OSError:
                    continue


def _unlink_log_links(dirs: list[str]) -> None:
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(link) if link.is_symlink() else ""
            if any(target.startswith(d.rstrip("/") + "/") for d in dirs):
                link.unlink()
