"""``make node-chaos``: kill -9 the node plugin at random moments of its RPCs; retries converge.

The script builds a "rack" of loop devices (backing files named after the volume IDs, as the
simulator's loop backing does), runs the real node plugin (``csi-oxide serve --mode node``) as a
subprocess, and plays kubelet over real gRPC with the project's stubs: NodeStageVolume (with the
controller's ``publish_context`` saying the disk was created blank), NodePublishVolume, writing
and checking data through the published path, NodeUnpublishVolume, NodeUnstageVolume, then
``fsck.ext4 -n`` on the unmounted device. Meanwhile it SIGKILLs the plugin at random moments
inside those RPCs, and in the middle of mkfs on fresh 1 TiB sparse disks, restarts it, and
retries every call until it succeeds, as kubelet does.

A kill inside mkfs is certain to land inside mkfs: the storm watches /proc for the plugin's child
whose ``comm`` starts with ``mkfs``, freezes it (SIGSTOP) the moment it appears, lets it run on in
short steps until it has written a chosen number of bytes to the device (``write_bytes`` of
``/proc/<pid>/io``), and kills -9 the plugin while mkfs is frozen there: for the forced kill
1 byte to 4 MiB (mid-write, the "no signature but non-zero bytes" case); for the others none at
all (a quarter of them) or up to 16 MiB, more than mkfs writes, so some of those find mkfs gone
and do not happen (counted as misses). The kernel's parent-death signal (the node runs its
tools under ``setpriv --pdeathsig KILL``) then kills mkfs too; the storm also sends it SIGCONT,
so a node without that safeguard would see mkfs run on, as it would in life. The first fresh
disk's first stage always gets such a kill; if mkfs could not be caught (it never showed up, or
ran to its end between two steps), the next fresh disk tries again, and after ``MKFS_TRIES``
misses the run fails with a clear problem.

It succeeds when every lifecycle converged, every data check matched its checksum, every fsck was
clean, no RPC answered anything but OK or "the plugin is down", and nothing is left mounted.

    python scripts/node_chaos.py --kills 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract.publish_context import Birth, Origin, encode
from csi_oxide.daemon import log
from csi_oxide.host.loops import detach_if_ours
from csi_oxide.node import fs, mountinfo, zerocheck
from csi_oxide_lab import harness

GIB = 1024**3
TIB = 1024 * GIB
MIB = 1024**2
KEPT_SIZE = GIB
FRESH_SIZE = TIB
CALL_TIMEOUT = 60.0
MAX_ATTEMPTS = 60
MKFS_APPEAR_TIMEOUT = 30.0  # a fresh disk's stage runs mkfs within this (it waits on nothing slow)
MKFS_STEP_LIMIT = 5.0  # seconds of stepping a frozen mkfs towards its target before killing anyway
MKFS_TRIES = 3  # fresh disks on which the forced kill inside mkfs may miss before the run fails
FORCED_WRITE_TARGET = (1, 4 * MIB)  # bytes mkfs has written when the forced kill lands
RANDOM_WRITE_TARGET = (1, 16 * MIB)  # the other kills in mkfs (it writes ~15 MiB on 1 TiB)
# Reconnect quickly to a restarted plugin (the default backoff grows to two minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
PLUGIN_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi.VolumeCapability.AccessMode(
        mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)


@dataclass
class Report:
    """The run's figures."""

    kills: Counter[str] = field(default_factory=Counter)
    mkfs_misses: int = 0
    lifecycles: int = 0
    converged: int = 0
    attempts: int = 0
    mkfs_outcomes: Counter[str] = field(default_factory=Counter)
    data_checks: int = 0
    data_ok: int = 0
    fsck_runs: int = 0
    fsck_clean: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> bool:
        """True when every goal held."""
        return (
            self.converged == self.lifecycles
            and self.data_ok == self.data_checks
            and self.fsck_clean == self.fsck_runs
            and not self.problems
        )

    def lines(self) -> list[str]:
        """A readable summary."""
        kills = ", ".join(f"{k} {n}" for k, n in sorted(self.kills.items()))
        return [
            f"kills: {sum(self.kills.values())} ({kills})",
            f"lifecycles: {self.lifecycles}, converged: {self.converged}, "
            f"RPC attempts: {self.attempts}",
            f"what kills in mkfs left: {dict(self.mkfs_outcomes)} "
            f"(mkfs ran to its end before a planned kill: {self.mkfs_misses})",
            f"data checks: {self.data_checks}, matched: {self.data_ok}",
            f"fsck -n: {self.fsck_runs} runs, {self.fsck_clean} clean",
            f"answers: {dict(self.codes)}",
            f"problems: {self.problems or 'none'}",
            f"time: {self.seconds:.1f}s",
        ]


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Volume:
    """A disk of the rack: its backing file, loop device, paths and the data it should hold."""

    volume_id: str
    backing: Path
    dev: str
    staging: Path
    target: Path
    fresh: bool
    disk_id: str  # the Oxide UUID the controller would name in publish_context
    checksum: str | None = None


@dataclass
class Kill:
    """A planned kill: ``fired`` once the plugin is being killed (it is then never cancelled)."""

    task: asyncio.Task[None] | None = None
    fired: bool = False
    forced: bool = False  # the kill inside mkfs the run must have


class MkfsGoneError(Exception):
    """The mkfs being watched exited (or was never caught) before the kill could land."""


def _stat(pid: int) -> tuple[str, str, int] | None:
    """``(comm, state, ppid)`` of ``pid`` from /proc, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")
    fields = tail.split()
    return head.partition("(")[2], fields[0], int(fields[1])


def _pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _written(pid: int) -> int | None:
    """Bytes ``pid`` has dirtied for storage (``write_bytes``); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "write_bytes":
            return int(value)
    return None


def _frozen(pid: int) -> bool:
    """Wait until ``pid`` is stopped; False if it exited instead."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        stat = _stat(pid)
        if stat is None or stat[1] in ("Z", "X", "x"):
            return False
        if stat[1] in ("T", "t"):
            return True
        time.sleep(0)
    raise RuntimeError(f"mkfs (pid {pid}) did not stop after SIGSTOP")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


async def find_mkfs(plugin_pid: int, known: set[int], within: float) -> int:
    """The pid of the plugin's mkfs child, frozen (SIGSTOP) the moment it is seen.

    Only processes that were not there when the watch began (``known``) are looked at, so one
    pass costs a listdir. TimeoutError when none appears ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for pid in _pids() - known:
            stat = _stat(pid)
            if stat is None:
                continue
            comm, _, ppid = stat
            if ppid == plugin_pid and comm.startswith("mkfs"):
                _signal(pid, signal.SIGSTOP)
                if not _frozen(pid):
                    raise MkfsGoneError(f"mkfs (pid {pid}) ended as it was seen")
                return pid
            if ppid != plugin_pid:
                known.add(pid)  # not the plugin's: never look at it again
        await asyncio.sleep(0.0005)
    raise TimeoutError(
        f"no mkfs appeared as a child of the node plugin (pid {plugin_pid}) within {within:.0f}s"
    )


def step_until_written(pid: int, target: int, limit: float) -> int:
    """Let the frozen mkfs ``pid`` run in short steps until it has written ``target`` bytes (or
    ``limit`` seconds passed); it is left frozen. Returns the bytes written; MkfsGoneError if mkfs
    ended in a step. Synchronous on purpose: nothing else runs between the steps."""
    deadline = time.monotonic() + limit
    while True:
        written = _written(pid)
        if written is None:
            raise MkfsGoneError(f"mkfs (pid {pid}) is gone")
        if written >= target or time.monotonic() > deadline:
            return written
        _signal(pid, signal.SIGCONT)
        time.sleep(0.0001)
        _signal(pid, signal.SIGSTOP)
        if not _frozen(pid):
            raise MkfsGoneError(f"mkfs (pid {pid}) ended after writing {written} bytes")


class Plugin:
    """The node plugin process; killed and restarted on demand."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.driver = harness.start_driver(workdir, env, mode="node", name="node")
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.driver.proc.popen.pid

    async def kill_and_restart(self, frozen_child: int | None = None) -> None:
        """SIGKILL the plugin; resume ``frozen_child`` once the plugin is dead (the parent-death
        signal has killed it already, unless that safeguard is missing); start a new plugin."""
        async with self._lock:
            popen = self.driver.proc.popen
            popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(popen.wait)
            if frozen_child is not None:
                _signal(frozen_child, signal.SIGCONT)
            self.driver = await asyncio.to_thread(
                harness.start_driver, self.workdir, self.env, mode="node", name="node"
            )

    def stop(self) -> None:
        self.driver.proc.stop()


class Storm:
    """Lifecycles under kills (see the module docstring)."""

    def __init__(self, workdir: Path, plugin: Plugin, rng: random.Random, kills: int) -> None:
        self.workdir = workdir
        self.plugin = plugin
        self.rng = rng
        self.kills_left = kills
        self.first_mkfs_kill = True  # pending until a kill landed inside mkfs (see the docstring)
        self.mkfs_tries = 0
        self.report = Report()
        self.durations: dict[str, float] = {}
        self.channel = grpc.aio.insecure_channel(plugin.driver.endpoint, options=CHANNEL_OPTIONS)
        self.stub = csi_grpc.NodeStub(self.channel)
        self.state = Path(plugin.env["CSI_OXIDE_NODE_STATE_DIR"])
        self.devices = Path(plugin.env["CSI_OXIDE_SIM_DEVICE_DIR"])

    # ---- the rack ----

    def new_volume(self, fresh: bool) -> Volume:
        volume_id = "csi-" + self.rng.randbytes(8).hex()
        backing = self.devices / volume_id
        with backing.open("wb") as f:
            f.truncate(FRESH_SIZE if fresh else KEPT_SIZE)
        dev = _sh("losetup", "--find", "--show", str(backing))
        staging = self.workdir / "kubelet" / volume_id / "globalmount"
        staging.mkdir(parents=True)
        target = self.workdir / "pods" / volume_id / "mount"
        target.parent.mkdir(parents=True)
        disk_id = str(uuid.UUID(bytes=self.rng.randbytes(16), version=4))
        return Volume(volume_id, backing, dev, staging, target, fresh, disk_id)

    def remove_volume(self, volume: Volume) -> None:
        with contextlib.suppress(OSError):  # never another's that took the number
            detach_if_ours(volume.dev, volume.backing)
        volume.backing.unlink(missing_ok=True)

    # ---- kills ----

    def _plan_kill(self, rpc: str, volume: Volume, attempt: int) -> Kill | None:
        forced = rpc == "stage" and volume.fresh and attempt == 0 and self.first_mkfs_kill
        # While the kill inside mkfs is still owed, the last kill is kept for it.
        spare = self.kills_left - (1 if self.first_mkfs_kill and not forced else 0)
        if spare <= 0 or (self.rng.random() > 0.6 and not forced):
            return None
        kill = Kill(forced=forced)
        if forced or (rpc == "stage" and volume.fresh and self.rng.random() < 0.7):
            if forced:
                self.mkfs_tries += 1
            low, high = FORCED_WRITE_TARGET if forced else RANDOM_WRITE_TARGET
            target = self.rng.randint(low, high)
            if not forced and self.rng.random() < 0.25:
                target = 0  # right as mkfs starts, before it wrote a byte
            known = _pids()  # taken before the call starts: mkfs is not among them
            kill.task = asyncio.ensure_future(self._kill_in_mkfs(kill, volume, target, known))
        else:
            delay = self.rng.uniform(0, 1.2 * self.durations.get(rpc, 0.05))
            kill.task = asyncio.ensure_future(self._kill_after(kill, delay, rpc))
        return kill

    async def _kill(self, kill: Kill, what: str, frozen_child: int | None = None) -> None:
        kill.fired = True  # from here on it runs to its end (the plugin restarted)
        self.kills_left -= 1
        self.report.kills[what] += 1
        if kill.forced:
            self.first_mkfs_kill = False
        await self.plugin.kill_and_restart(frozen_child)

    async def _kill_after(self, kill: Kill, delay: float, what: str) -> None:
        await asyncio.sleep(delay)
        await self._kill(kill, what)

    async def _kill_in_mkfs(self, kill: Kill, volume: Volume, target: int, known: set[int]) -> None:
        try:
            pid = await find_mkfs(self.plugin.pid, known, MKFS_APPEAR_TIMEOUT)
            step_until_written(pid, target, MKFS_STEP_LIMIT)
        except MkfsGoneError:
            self.report.mkfs_misses += 1
            return  # the call ends on its own: no kill happened
        except TimeoutError as exc:
            self.report.problems.append(f"stage of fresh {volume.volume_id}: {exc}")
            return
        await self._kill(kill, "mkfs", frozen_child=pid)
        # What the kill left: the wedge is no signature but non-zero bytes.
        if (await fs.probe(volume.dev)).found:
            self.report.mkfs_outcomes["filesystem complete"] += 1
        elif await asyncio.to_thread(zerocheck.reads_as_zeros, volume.dev):
            self.report.mkfs_outcomes["still zeros"] += 1
        else:
            self.report.mkfs_outcomes["no signature, non-zero bytes"] += 1

    # ---- calls ----

    async def call(
        self, rpc: str, volume: Volume, method: Callable[..., Awaitable[Any]], request: Any
    ) -> None:
        """Call until OK, killing the plugin now and then; a problem after MAX_ATTEMPTS."""
        for attempt in range(MAX_ATTEMPTS):
            killer = self._plan_kill(rpc, volume, attempt)
            started = time.monotonic()
            try:
                await method(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code not in PLUGIN_DOWN:
                    self.report.problems.append(
                        f"{rpc} {volume.volume_id}: {code.name} {exc.details()}"
                    )
            self.report.attempts += 1
            self.report.codes[code.name] += 1
            if code == grpc.StatusCode.OK:
                elapsed = time.monotonic() - started
                self.durations[rpc] = max(elapsed, 0.5 * self.durations.get(rpc, elapsed))
            if killer is not None and killer.task is not None:
                if not killer.fired:
                    killer.task.cancel()  # the call ended first: this kill did not happen
                await asyncio.gather(killer.task, return_exceptions=True)
                if killer.forced and not killer.fired and self.mkfs_tries >= MKFS_TRIES:
                    self.report.problems.append(
                        f"no kill landed inside mkfs in {self.mkfs_tries} fresh stages (mkfs "
                        "never seen as a child of the plugin, or it ended between two steps)"
                    )
            if code == grpc.StatusCode.OK:
                return
            await asyncio.sleep(0.05)
        self.report.problems.append(f"{rpc} {volume.volume_id}: never succeeded")
        raise RuntimeError(f"{rpc} of {volume.volume_id} did not converge")

    async def lifecycle(self, volume: Volume) -> None:
        self.report.lifecycles += 1
        context = encode(Birth(Origin.BLANK, volume.disk_id))
        await self.call(
            "stage",
            volume,
            self.stub.NodeStageVolume,
            csi.NodeStageVolumeRequest(
                volume_id=volume.volume_id,
                staging_target_path=str(volume.staging),
                volume_capability=CAP,
                publish_context=context,
            ),
        )
        await self.call(
            "publish",
            volume,
            self.stub.NodePublishVolume,
            csi.NodePublishVolumeRequest(
                volume_id=volume.volume_id,
                staging_target_path=str(volume.staging),
                target_path=str(volume.target),
                volume_capability=CAP,
                publish_context=context,
            ),
        )
        await asyncio.to_thread(self._check_and_write, volume)
        await self.call(
            "unpublish",
            volume,
            self.stub.NodeUnpublishVolume,
            csi.NodeUnpublishVolumeRequest(
                volume_id=volume.volume_id, target_path=str(volume.target)
            ),
        )
        await self.call(
            "unstage",
            volume,
            self.stub.NodeUnstageVolume,
            csi.NodeUnstageVolumeRequest(
                volume_id=volume.volume_id, staging_target_path=str(volume.staging)
            ),
        )
        if volume.target.exists():
            self.report.problems.append(f"{volume.target} left behind by unpublish")
        await asyncio.to_thread(self._fsck, volume)
        self.report.converged += 1

    def _check_and_write(self, volume: Volume) -> None:
        data = volume.target / "data"
        if volume.checksum is not None:
            self.report.data_checks += 1
            if data.exists() and hashlib.sha256(data.read_bytes()).hexdigest() == volume.checksum:
                self.report.data_ok += 1
            else:
                self.report.problems.append(f"{volume.volume_id}: data lost or changed")
        payload = self.rng.randbytes(256 * 1024)
        tmp = volume.target / "data.tmp"
        with tmp.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(data)
        fd = os.open(volume.target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        volume.checksum = hashlib.sha256(payload).hexdigest()

    def _fsck(self, volume: Volume) -> None:
        self.report.fsck_runs += 1
        done = subprocess.run(
            ["fsck.ext4", "-n", "-f", volume.dev], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            self.report.fsck_clean += 1
        else:
            self.report.problems.append(
                f"fsck -n {volume.volume_id}: exit {done.returncode}: {done.stdout[-500:]}"
            )

    async def close(self) -> None:
        await self.channel.close()


async def run_storm(
    workdir: Path, *, kills: int, seed: int = 0, kept: int = 2, progress: bool = False
) -> Report:
    """Lifecycles until ``kills`` kills happened: ``kept`` 1 GiB volumes that carry data from
    one lifecycle to the next, and a fresh 1 TiB volume every other lifecycle."""
    if os.geteuid() != 0:
        raise SystemExit("node chaos needs root (loop devices, mkfs, mount)")
    rng = random.Random(seed)  # noqa: S311 - reproducible runs, not secrets
    devices = workdir / "devices"
    devices.mkdir(parents=True)
    env = {
        "CSI_OXIDE_SIM_DEVICE_DIR": str(devices),
        "CSI_OXIDE_NODE_ID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "CSI_OXIDE_NODE_STATE_DIR": str(workdir / "state"),
    }
    started = time.monotonic()
    plugin = Plugin(workdir, env)
    storm = Storm(workdir, plugin, rng, kills)
    volumes = [storm.new_volume(fresh=False) for _ in range(kept)]
    try:
        turn = 0
        while storm.kills_left > 0 and not storm.report.problems:
            if turn % 2:
                fresh = storm.new_volume(fresh=True)
                try:
                    await storm.lifecycle(fresh)
                finally:
                    storm.remove_volume(fresh)
            else:
                await storm.lifecycle(volumes[(turn // 2) % len(volumes)])
            turn += 1
            if progress and turn % 10 == 0:
                r = storm.report
                print(f"  {turn} lifecycles, {sum(r.kills.values())} kills", flush=True)
        for volume in volumes:  # every kept volume checked once more after the last kill
            await storm.lifecycle(volume)
    except RuntimeError:
        pass
    finally:
        await storm.close()
        plugin.stop()
        left = [m.mount_point for m in mountinfo.read() if str(workdir) in m.mount_point]
        if left:
            storm.report.problems.append(f"left mounted: {left}")
        harness.unmount_below(workdir)
        for volume in volumes:
            storm.remove_volume(volume)
    storm.report.seconds = time.monotonic() - started
    return storm.report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=300)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    log.configure(fmt="console", level="warning")
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="csi-oxide-node-chaos-"))
    print(f"node chaos: {args.kills} kills, seed {args.seed}, in {workdir}", flush=True)
    report = asyncio.run(run_storm(workdir, kills=args.kills, seed=args.seed, progress=True))
    for line in report.lines():
        print(line)
    print("OK" if report.ok() else "FAILED", flush=True)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
