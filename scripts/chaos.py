"""``make chaos``: volume lifecycles under a faulty simulator while the plugins get killed.

A storm of concurrent lifecycles (create, attach, stage, publish, write, snapshot, detach, offline
expand, re-attach and check, restore the snapshot and check, delete everything) runs against
``csi-oxide sim`` injecting 503s, lost answers (carried out, answered 503) and latency jitter,
while the controller and the node plugin (separate processes) are killed with SIGKILL at random
moments and restarted. The storm plays the CO: it retries what the sidecars and kubelet retry
(UNAVAILABLE, ABORTED, DEADLINE_EXCEEDED, and anything while a plugin is down).

Afterwards: every lifecycle converged, no RPC answered UNKNOWN or INTERNAL, no data was lost
(checksums through expansion and restore), and no disk, snapshot, loop device or mount is left.
Without root (no loop devices) the node part is skipped and the controller part still runs.

A second phase runs the same storm against a slow API: a share of the simulator's answers
(``--slow-rate``) are carried out and then trickle out a byte at a time, while the controller runs
with a short Oxide request deadline (``--slow-oxide-timeout``). Each such answer is lost to the
driver after its deadline although the operation happened; the lifecycles must converge all the
same (a retry finds what was done), with no volume left wedged "already in progress".

    python scripts/chaos.py --volumes 12 --kills 100 --fail-rate 0.2 --lost-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.daemon import log
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide_lab import harness

GIB = 1024**3
CAP = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi.VolumeCapability.AccessMode(
        mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
CALL_TIMEOUT = 30.0
Resp = TypeVar("Resp")


@dataclass
class Report:
    """The storm's figures."""

    lifecycles: int = 0
    converged: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    bad_answers: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        """True when every goal held."""
        return (
            self.converged == self.lifecycles
            and not self.bad_answers
            and not self.lost
            and not self.leaks
        )

    def lines(self) -> list[str]:
        """A readable summary."""
        return [
            f"lifecycles converged: {self.converged}/{self.lifecycles}",
            f"kills: {sum(self.kills.values())} ({dict(self.kills)})",
            f"RPC answers: {dict(self.codes)}; CO retries {self.retries}",
            f"UNKNOWN/INTERNAL answers: {len(self.bad_answers)} {self.bad_answers[:5]}",
            f"volumes with lost data: {len(self.lost)} {self.lost[:5]}",
            f"leaks (disks, snapshots, loop devices, mounts): {len(self.leaks)} {self.leaks[:5]}",
        ]


class Plugin:
    """A plugin process that can be killed and restarted on the same socket."""

    def __init__(self, workdir: Path, env: dict[str, str], mode: str) -> None:
        self.workdir, self.env, self.mode = workdir, env, mode
        self.driver = harness.start_driver(workdir, env, mode=mode, name=mode)
        self.endpoint = self.driver.endpoint

    def kill_and_restart(self) -> None:
        self.driver.proc.popen.kill()
        self.driver.proc.popen.wait()
        self.driver = harness.start_driver(self.workdir, self.env, mode=self.mode, name=self.mode)

    def stop(self) -> None:
        self.driver.proc.stop()


class Storm:
    """The CO's side: lifecycles with sidecar-style retries."""

    def __init__(self, controller: Plugin, node: Plugin | None, node_id: str, workdir: Path):
        self.controller_channel = grpc.aio.insecure_channel(controller.endpoint)
        self.controller = csi_grpc.ControllerStub(self.controller_channel)
        self.node_channel = grpc.aio.insecure_channel(node.endpoint) if node else None
        self.node = csi_grpc.NodeStub(self.node_channel) if self.node_channel else None
        self.node_id = node_id
        self.workdir = workdir
        self.report = Report()

    async def close(self) -> None:
        await self.controller_channel.close()
        if self.node_channel is not None:
            await self.node_channel.close()

    async def call(
        self, what: str, method: Callable[..., Awaitable[Resp]], request: object
    ) -> Resp:
        """Call until the answer is final; record every code seen."""
        delay = 0.05
        while True:
            try:
                answer = await method(request, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.report.codes[code.name] += 1
                if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    self.report.bad_answers.append(f"{what}: {code.name} {exc.details()}")
                if code in RETRYABLE or code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
                    self.report.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise
            self.report.codes["OK"] += 1
            return answer

    # ---- steps ----

    async def create(self, name: str, size: int, snapshot: str = "") -> str:
        source = None
        if snapshot:
            source = csi.VolumeContentSource(
                snapshot=csi.VolumeContentSource.SnapshotSource(snapshot_id=snapshot)
            )
        request = csi.CreateVolumeRequest(
            name=name,
            capacity_range=csi.CapacityRange(required_bytes=size),
            volume_capabilities=[CAP],
            volume_content_source=source,
        )
        answer = await self.call("CreateVolume", self.controller.CreateVolume, request)
        return str(answer.volume.volume_id)

    async def attach(self, vol: str) -> str | None:
        await self.call(
            "ControllerPublishVolume",
            self.controller.ControllerPublishVolume,
            csi.ControllerPublishVolumeRequest(
                volume_id=vol, node_id=self.node_id, volume_capability=CAP
            ),
        )
        if self.node is None:
            return None
        base = self.workdir / "kubelet" / vol
        staging, target = base / "globalmount", base / "pod"
        staging.mkdir(parents=True, exist_ok=True)
        await self.call(
            "NodeStageVolume",
            self.node.NodeStageVolume,
            csi.NodeStageVolumeRequest(
                volume_id=vol, staging_target_path=str(staging), volume_capability=CAP
            ),
        )
        await self.call(
            "NodePublishVolume",
            self.node.NodePublishVolume,
            csi.NodePublishVolumeRequest(
                volume_id=vol,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=CAP,
            ),
        )
        return str(target)

    async def detach(self, vol: str) -> None:
        if self.node is not None:
            base = self.workdir / "kubelet" / vol
            await self.call(
                "NodeUnpublishVolume",
                self.node.NodeUnpublishVolume,
                csi.NodeUnpublishVolumeRequest(volume_id=vol, target_path=str(base / "pod")),
            )
            await self.call(
                "NodeUnstageVolume",
                self.node.NodeUnstageVolume,
                csi.NodeUnstageVolumeRequest(
                    volume_id=vol, staging_target_path=str(base / "globalmount")
                ),
            )
        await self.call(
            "ControllerUnpublishVolume",
            self.controller.ControllerUnpublishVolume,
            csi.ControllerUnpublishVolumeRequest(volume_id=vol, node_id=self.node_id),
        )

    async def lifecycle(self, i: int) -> None:
        self.report.lifecycles += 1
        vol = await self.create(f"storm-{i}", GIB)
        mount = await self.attach(vol)
        digest = await asyncio.to_thread(_write, mount) if mount else None
        snap = await self.call(
            "CreateSnapshot",
            self.controller.CreateSnapshot,
            csi.CreateSnapshotRequest(name=f"storm-snap-{i}", source_volume_id=vol),
        )
        snap_id = str(snap.snapshot.snapshot_id)
        await self.detach(vol)
        await self.call(
            "ControllerExpandVolume",
            self.controller.ControllerExpandVolume,
            csi.ControllerExpandVolumeRequest(
                volume_id=vol,
                capacity_range=csi.CapacityRange(required_bytes=2 * GIB),
                volume_capability=CAP,
            ),
        )
        mount = await self.attach(vol)
        self._check(vol, mount, digest, min_size=int(1.5 * GIB))
        await self.detach(vol)
        restored = await self.create(f"storm-restore-{i}", GIB, snapshot=snap_id)
        mount = await self.attach(restored)
        self._check(restored, mount, digest, min_size=GIB // 2)
        await self.detach(restored)
        for v in (vol, restored):
            await self.call(
                "DeleteVolume", self.controller.DeleteVolume, csi.DeleteVolumeRequest(volume_id=v)
            )
        await self.call(
            "DeleteSnapshot",
            self.controller.DeleteSnapshot,
            csi.DeleteSnapshotRequest(snapshot_id=snap_id),
        )
        self.report.converged += 1

    def _check(self, vol: str, mount: str | None, digest: str | None, *, min_size: int) -> None:
        if mount is None or digest is None:
            return
        try:
            now = _digest(mount)
        except OSError as exc:
            self.report.lost.append(f"{vol}: {exc}")
            return
        if now != digest:
            self.report.lost.append(f"{vol}: checksum changed")
        st = os.statvfs(mount)
        if st.f_blocks * st.f_frsize < min_size:
            self.report.lost.append(f"{vol}: filesystem of {st.f_blocks * st.f_frsize} bytes")


def _write(mount: str) -> str:
    data = os.urandom(1 << 20)
    path = Path(mount) / "data.bin"
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _digest(mount: str) -> str:
    return hashlib.sha256((Path(mount) / "data.bin").read_bytes()).hexdigest()


async def _killer(
    plugins: list[Plugin], kills: int, report: Report, done: asyncio.Event, seed: int
) -> None:
    rng = random.Random(seed)
    while sum(report.kills.values()) < kills and not done.is_set():
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        victim = rng.choice(plugins)
        await asyncio.to_thread(victim.kill_and_restart)
        report.kills[victim.mode] += 1


async def _leaks(env: dict[str, str], workdir: Path) -> list[str]:
    api = HttpOxideClient(env["OXIDE_HOST"], lambda: env["OXIDE_TOKEN"], env["OXIDE_PROJECT"])
    try:
        leaks = [f"disk {d.name}" for d in await api.disk_list()]
        leaks += [f"snapshot {s.name}" for s in await api.snapshot_list()]
    finally:
        await api.aclose()
    return leaks + harness.leftovers(workdir)


async def run_storm(
    workdir: Path,
    *,
    volumes: int,
    kills: int,
    fail_rate: float,
    lost_rate: float = 0.05,
    seed: int = 7,
    slow_rate: float = 0.0,
    slow_byte_ms: float = 200.0,
    oxide_timeout: float | None = None,
) -> Report:
    """The whole storm in ``workdir``; the report says what happened. ``slow_rate``: share of
    answers trickled (see the module); ``oxide_timeout``: the controller's request deadline."""
    node_side = os.geteuid() == 0 and Path("/dev/loop-control").exists()
    sim_args = [
        "--hotplug",
        "--fail-rate",
        str(fail_rate),
        "--lost-rate",
        str(lost_rate),
        "--latency-ms",
        "5",
        "--jitter-ms",
        "45",
        "--state-dir",
        str(workdir / "rack"),
        "--slow-rate",
        str(slow_rate),
        "--slow-byte-ms",
        str(slow_byte_ms),
    ]
    if node_side:
        sim_args += ["--backing", "loop"]
    sim = harness.start_sim(workdir, *sim_args)
    with harness.stopping(sim.proc):
        controller_env = dict(sim.env)
        if oxide_timeout is not None:
            controller_env["CSI_OXIDE_OXIDE_TIMEOUT"] = str(oxide_timeout)
        controller = Plugin(workdir, controller_env, "controller")
        node = Plugin(workdir, sim.env, "node") if node_side else None
        plugins = [p for p in (controller, node) if p is not None]
        storm = Storm(controller, node, sim.env["CSI_OXIDE_NODE_ID"], workdir)
        done = asyncio.Event()
        killer = asyncio.ensure_future(_killer(plugins, kills, storm.report, done, seed))
        try:
            wave = 0
            while True:
                await asyncio.gather(*(storm.lifecycle(wave * volumes + i) for i in range(volumes)))
                wave += 1
                if sum(storm.report.kills.values()) >= kills or killer.done():
                    break
        finally:
            done.set()
            await killer
            await storm.close()
            for p in plugins:
                p.stop()
        storm.report.leaks = await _leaks(sim.env, workdir)
    harness.unmount_below(workdir)
    return storm.report


def main() -> int:
    parser = argparse.ArgumentParser(description="volume lifecycles under faults and kills")
    parser.add_argument("--volumes", type=int, default=12, help="concurrent lifecycles per wave")
    parser.add_argument("--kills", type=int, default=100, help="plugin kills before stopping")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="share of 503 answers")
    parser.add_argument(
        "--lost-rate", type=float, default=0.05, help="share of requests whose answer is lost"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--slow-rate", type=float, default=0.1, help="slow phase: share of trickled answers"
    )
    parser.add_argument(
        "--slow-oxide-timeout",
        type=float,
        default=2.0,
        help="slow phase: the controller's Oxide request deadline, seconds",
    )
    parser.add_argument(
        "--slow-kills", type=int, default=20, help="slow phase: plugin kills before stopping"
    )
    args = parser.parse_args()
    log.configure(fmt="console", level="warning")
    import tempfile

    phases = {
        "faults and kills": {
            "kills": args.kills,
            "fail_rate": args.fail_rate,
            "lost_rate": args.lost_rate,
        },
        "slow API": {
            "kills": args.slow_kills,
            "fail_rate": args.fail_rate / 4,
            "lost_rate": args.lost_rate,
            "slow_rate": args.slow_rate,
            "oxide_timeout": args.slow_oxide_timeout,
        },
    }
    passed = True
    for phase, settings in phases.items():
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="csi-oxide-chaos-") as tmp:
            report = asyncio.run(
                run_storm(Path(tmp), volumes=args.volumes, seed=args.seed, **settings)
            )
        print(f"== phase: {phase} ({', '.join(f'{k}={v}' for k, v in settings.items())})")
        for line in report.lines():
            print(line)
        took = time.monotonic() - started
        print(f"phase {phase}: {'PASSED' if report.ok() else 'FAILED'} in {took:.0f}s")
        passed = passed and report.ok()
    print(f"chaos {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
