"""Run the simulator and the driver as real processes, and csi-sanity against them.

Used by ``csi-oxide demo``, by the conformance tests and by the benchmarks: the same code path a
user takes (``csi-oxide sim`` writes an env file, ``csi-oxide serve`` reads the environment).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from csi_oxide.host import tools

START_TIMEOUT = 30.0


class HarnessError(RuntimeError):
    """A process of the harness did not start or misbehaved."""


def parse_env_file(text: str) -> dict[str, str]:
    """Parse the simulator's ``export NAME='value'`` lines."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        name, _, value = line[len("export ") :].partition("=")
        parts = shlex.split(value)
        out[name] = parts[0] if parts else ""
    return out


@dataclass
class Proc:
    """A started child process and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def output(self) -> str:
        """What the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def _spawn(name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path) -> Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, popen, log_path)


def _wait_for(
    what: str, proc: Proc, ready: Callable[[], bool], timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.popen.poll() is not None:
            raise HarnessError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.output()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} not ready after {timeout}s:\n{proc.output()}")
        time.sleep(0.05)


def _socket_accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def csi_oxide_argv(*args: str) -> list[str]:
    """The command line that runs ``csi-oxide`` with this interpreter."""
    return [sys.executable, "-m", "csi_oxide", *args]


@dataclass
class Sim:
    """A running ``csi-oxide sim`` and the environment it published."""

    proc: Proc
    env: dict[str, str]


def start_sim(
    workdir: Path,
    *args: str,
    base_env: Mapping[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> Sim:
    """Start the simulator with ``args`` and wait (up to ``timeout``) for its env file."""
    env_file = workdir / "sim.env"
    env_file.unlink(missing_ok=True)
    env = dict(base_env if base_env is not None else os.environ)
    proc = _spawn("sim", csi_oxide_argv("sim", "--env-file", str(env_file), *args), env, workdir)
    _wait_for("simulator", proc, env_file.exists, timeout)
    return Sim(proc, parse_env_file(env_file.read_text()))


@dataclass
class Driver:
    """A running ``csi-oxide serve``."""

    proc: Proc
    endpoint: str
    socket_path: Path


def start_driver(
    workdir: Path,
    env: Mapping[str, str],
    *,
    mode: str = "all",
    name: str = "driver",
    extra: Sequence[str] = (),
) -> Driver:
    """Start ``csi-oxide serve`` in ``mode`` on a socket in ``workdir``; wait until it accepts."""
    sock = workdir / f"{name}.sock"
    endpoint = f"unix://{sock}"
    argv = csi_oxide_argv(
        "serve", "--mode", mode, "--endpoint", endpoint, "--log-format", "console", *extra
    )
    full_env = {**os.environ, **env}
    if mode in ("node", "all") and "CSI_OXIDE_NODE_STATE_DIR" not in env:
        # The node's records live in the run's directory (kept across restarts of this driver).
        full_env["CSI_OXIDE_NODE_STATE_DIR"] = str(workdir / f"{name}-node-state")
    proc = _spawn(name, argv, full_env, workdir)
    _wait_for(f"{name} socket", proc, lambda: _socket_accepts(sock))
    return Driver(proc, endpoint, sock)


@dataclass
class SanityResult:
    """Figures from one csi-sanity run (from its JUnit report)."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)
    exit_code: int = 0
    output: str = ""

    def summary(self) -> str:
        """``N passed, N failed, N skipped``."""
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


# Every spec csi-sanity may skip, with why. A skip outside this list fails the run: a capability
# dropped by mistake turns passes into skips, which would otherwise stay green.
KNOWN_SKIPS = {
    "GroupController": "no group snapshots (Oxide has no consistency groups)",
    "ModifyVolume": "no ControllerModifyVolume (Oxide disks cannot change after creation)",
    "volume attribute class": "no VolumeAttributesClass (needs ModifyVolume)",
    "should fail when the volume is already published but is incompatible": (
        "no PUBLISH_READONLY capability: csi-sanity needs it to make an incompatible publish"
    ),
    "ListVolumes pagination should detect volumes added between pages": (
        "pending in csi-sanity itself"
    ),
}


def unexplained_skips(skips: list[str]) -> list[str]:
    """The skipped specs that no entry of ``KNOWN_SKIPS`` explains."""
    return [name for name in skips if not any(key in name for key in KNOWN_SKIPS)]


def parse_junit(path: Path) -> SanityResult:
    """Count test cases of a Ginkgo JUnit report by outcome."""
    result = SanityResult()
    root = ET.parse(path).getroot()  # noqa: S314 - a report our own csi-sanity run just wrote
    for case in root.iter("testcase"):
        name = case.get("name", "")
        status = case.get("status", "")
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
            result.failures.append(name)
        elif case.find("skipped") is not None or status in ("skipped", "pending"):
            result.skipped += 1
            result.skips.append(name)
        else:
            result.passed += 1
    return result


def run_csi_sanity(
    binary: str,
    workdir: Path,
    endpoint: str,
    *,
    controller_endpoint: str | None = None,
    args: Sequence[str] = (),
    timeout: float = 1500.0,
) -> SanityResult:
    """Run csi-sanity against ``endpoint``; its mount and staging dirs live in ``workdir``."""
    report = workdir / "sanity-junit.xml"
    argv = [
        binary,
        f"--csi.endpoint={endpoint}",
        f"--csi.mountdir={workdir / 'mnt'}",
        f"--csi.stagingdir={workdir / 'stage'}",
        f"--ginkgo.junit-report={report}",
        "--ginkgo.no-color",
        *args,
    ]
    if controller_endpoint:
        argv.append(f"--csi.controllerendpoint={controller_endpoint}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if not report.exists():
        raise HarnessError(f"csi-sanity wrote no report (exit {done.returncode}):\n{done.stdout}")
    result = parse_junit(report)
    result.exit_code = done.returncode
    result.output = done.stdout + done.stderr
    return result


def unmount_below(path: Path) -> list[str]:
    """Unmount everything mounted at or below ``path`` (deepest first); what was unmounted.

    Clean-up after a failed run: a loop device the simulator detached while it was still mounted
    is freed by the kernel at this last unmount.
    """
    from csi_oxide.node import mountinfo

    prefix = str(path.resolve())
    points = [m.mount_point for m in mountinfo.read() if m.mount_point.startswith(prefix)]
    umount = _tool("umount")
    for point in sorted(points, key=len, reverse=True):
        subprocess.run([umount, point], check=False, capture_output=True)
    return points


def leftovers(path: Path) -> list[str]:
    """Mounts at or below ``path`` and loop devices over files below it that still exist."""
    from csi_oxide.node import mountinfo

    prefix = str(path.resolve())
    found = [f"mount {m.mount_point}" for m in mountinfo.read() if m.mount_point.startswith(prefix)]
    losetup = tools.find("losetup")
    if losetup is None:  # then the simulator cannot have made loop devices either
        return found
    loops = subprocess.run(
        [losetup, "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return found + [f"loop {line}" for line in loops.splitlines() if prefix in line]


def blkid_value(device: Path, tag: str = "TYPE") -> str:
    """What ``blkid -p`` reads for ``tag`` on ``device`` (or a disk image file); "" for none."""
    probe = subprocess.run(
        [_tool("blkid"), "-p", "-o", "value", "-s", tag, str(device)],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip()


def _tool(name: str) -> str:
    """The path of a util-linux tool (also where Debian puts it off a user's PATH)."""
    found = tools.find(name)
    if found is None:
        raise HarnessError(f"{name} is not installed (Debian: apt-get install util-linux)")
    return found


@contextlib.contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    """Stop ``procs`` (last first) when the block ends, whatever happens."""
    try:
        yield
    finally:
        for proc in reversed(procs):
            proc.stop()
