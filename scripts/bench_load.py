"""``make bench``, the figures under load (issue 18): the driver's CPU per volume lifecycle, a
burst of 200 PVCs at realistic Oxide latencies, and listings of thousands of volumes.

Every figure runs the simulator and the driver as separate processes (``csi_oxide.harness``),
so the driver's CPU time (``/proc/<pid>/stat``) and memory are its own. Each prints a ratio or
a figure with its goal; nothing here is asserted by a test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from csi_oxide import harness
from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.inflight import InFlight
from csi_oxide.oxide.client import DEFAULT_MAX_CONCURRENCY, HttpOxideClient
from csi_oxide.wiring import build_reconciler

GIB = 1024**3
MIB = 1024**2
Row = Callable[[str, str, str, "bool | None"], None]
MOUNT = csi.VolumeCapability(
    mount=csi.VolumeCapability.MountVolume(fs_type="ext4"),
    access_mode=csi.VolumeCapability.AccessMode(
        mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)
# Big listings come back in one message: let the benchmark's client take them.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * MIB)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def measured(pid: int, work: Awaitable[object]) -> tuple[float, float, float]:
    """Seconds ``work`` took, the CPU seconds process ``pid`` spent meanwhile, and how far its
    resident memory rose above its level before the work, at its peak, in MiB (the kernel's peak
    is reset first)."""
    with open(f"/proc/{pid}/clear_refs", "w") as reset:  # noqa: ASYNC230 - a tiny proc file
        reset.write("5")  # VmHWM := VmRSS
    before, cpu = _status_kib(pid, "VmRSS"), cpu_seconds(pid)
    started = time.perf_counter()
    await work
    seconds = time.perf_counter() - started
    return seconds, cpu_seconds(pid) - cpu, (_status_kib(pid, "VmHWM") - before) / 1024


def _client(env: dict[str, str]) -> HttpOxideClient:
    return HttpOxideClient(env["OXIDE_HOST"], lambda: env["OXIDE_TOKEN"], env["OXIDE_PROJECT"])


def _create(name: str) -> csi.CreateVolumeRequest:
    return csi.CreateVolumeRequest(
        name=name, capacity_range=csi.CapacityRange(required_bytes=GIB), volume_capabilities=[MOUNT]
    )


async def _nodes(env: dict[str, str]) -> list[str]:
    api = _client(env)
    try:
        return sorted(i.id for i in await api.instance_list())
    finally:
        await api.aclose()


# ---- 1. CPU per lifecycle -------------------------------------------------------------------


async def driver_cpu(workdir: Path, row: Row, lifecycles: int = 200, parallel: int = 10) -> None:
    """Driver CPU per create + publish + unpublish + delete, the simulator without latency."""
    sim = harness.start_sim(workdir, "--hotplug", "--instances", "9")
    with harness.stopping(sim.proc):
        driver = harness.start_driver(workdir, sim.env, mode="controller")
        with harness.stopping(driver.proc):
            nodes = await _nodes(sim.env)
            async with grpc.aio.insecure_channel(driver.endpoint) as channel:
                stub: csi_grpc.ControllerAsyncStub = csi_grpc.ControllerStub(channel)

                async def lifecycle(i: int) -> None:
                    vol = (await stub.CreateVolume(_create(f"cpu-{i}"))).volume.volume_id
                    node = nodes[i % len(nodes)]
                    await stub.ControllerPublishVolume(
                        csi.ControllerPublishVolumeRequest(
                            volume_id=vol, node_id=node, volume_capability=MOUNT
                        )
                    )
                    await stub.ControllerUnpublishVolume(
                        csi.ControllerUnpublishVolumeRequest(volume_id=vol, node_id=node)
                    )
                    await stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol))

                for i in range(10):  # warm: imports on first use, connections, caches
                    await lifecycle(-1 - i)
                gate = asyncio.Semaphore(parallel)

                async def gated(i: int) -> None:
                    async with gate:
                        await lifecycle(i)

                pid = driver.proc.popen.pid
                before, sim_before = cpu_seconds(pid), cpu_seconds(sim.proc.popen.pid)
                await asyncio.gather(*(gated(i) for i in range(lifecycles)))
                spent = cpu_seconds(pid) - before
                sim_spent = cpu_seconds(sim.proc.popen.pid) - sim_before
    per = spent / lifecycles * 1000
    row(
        "driver CPU per lifecycle",
        f"{per:.2f} ms (create+publish+unpublish+delete, {lifecycles} lifecycles {parallel} at a "
        f"time; the simulator, another process, spent {sim_spent / lifecycles * 1000:.2f} ms)",
        "<= 2 ms",
        per <= 2.0,
    )


# ---- 3. a burst at realistic latencies ------------------------------------------------------

LATENCY_MS = (300.0, 800.0)  # each Oxide request: 300 ms plus up to 500 ms, uniformly drawn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> tuple[float, float]:
    """Oxide requests (attempts) the driver made so far and their summed duration, seconds."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    count = busy = 0.0
    for line in text.splitlines():
        if line.startswith("csi_oxide_oxide_requests_total{"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("csi_oxide_oxide_request_duration_seconds_sum"):
            busy += float(line.rsplit(" ", 1)[1])
    return count, busy


async def burst(workdir: Path, row: Row, pvcs: int = 200, instances: int = 20) -> None:
    """``pvcs`` PVCs at once: CreateVolume, ControllerPublish to one of ``instances`` nodes, and
    for the volumes of the local instance (real loop devices, as root) NodeStage and
    NodePublish; every Oxide request takes 300-800 ms. Against the API-bound minimum: the
    summed request time spread over the driver's cap of requests in flight, or one volume's
    chain of requests, whichever is longer."""
    root = os.geteuid() == 0 and os.path.exists("/dev/loop-control")  # noqa: ASYNC240
    low, high = LATENCY_MS
    args = ["--hotplug", "--instances", str(instances - 1), "--quota-gib", "100000"]
    args += ["--latency-ms", f"{low:g}", "--jitter-ms", f"{high - low:g}"]
    if root:
        args += ["--backing", "loop"]
    sim = harness.start_sim(workdir, *args)
    port = _free_port()
    with harness.stopping(sim.proc):
        # Two processes, as deployed: the controller (a Deployment) and this node's plugin (a
        # DaemonSet pod); the node's zero checks never share an interpreter with the controller.
        controller = harness.start_driver(
            workdir,
            sim.env,
            mode="controller",
            name="controller",
            extra=["--metrics-address", f"127.0.0.1:{port}"],
        )
        node_plugin = (
            harness.start_driver(workdir, sim.env, mode="node", name="node") if root else None
        )
        plugins = [controller.proc] + ([node_plugin.proc] if node_plugin else [])
        with harness.stopping(*plugins):
            nodes = await _nodes(sim.env)
            local = sim.env["CSI_OXIDE_NODE_ID"] if root else None
            node_endpoint = node_plugin.endpoint if node_plugin else controller.endpoint
            staged: list[tuple[str, str, str]] = []
            async with (
                grpc.aio.insecure_channel(controller.endpoint) as channel,
                grpc.aio.insecure_channel(node_endpoint) as node_channel,
            ):
                stub: csi_grpc.ControllerAsyncStub = csi_grpc.ControllerStub(channel)
                node_stub = csi_grpc.NodeStub(node_channel)

                async def pvc(i: int) -> None:
                    vol = (await stub.CreateVolume(_create(f"burst-{i}"))).volume.volume_id
                    node = nodes[i % len(nodes)]
                    published = await stub.ControllerPublishVolume(
                        csi.ControllerPublishVolumeRequest(
                            volume_id=vol, node_id=node, volume_capability=MOUNT
                        )
                    )
                    if node != local:
                        return  # its node plugin runs on another machine
                    staging, target = str(workdir / f"st-{i}"), str(workdir / f"pod-{i}" / "m")
                    context = dict(published.publish_context)
                    await node_stub.NodeStageVolume(
                        csi.NodeStageVolumeRequest(
                            volume_id=vol,
                            publish_context=context,
                            staging_target_path=staging,
                            volume_capability=MOUNT,
                        )
                    )
                    await node_stub.NodePublishVolume(
                        csi.NodePublishVolumeRequest(
                            volume_id=vol,
                            publish_context=context,
                            staging_target_path=staging,
                            target_path=target,
                            volume_capability=MOUNT,
                        )
                    )
                    staged.append((vol, staging, target))

                count0, busy0 = await asyncio.to_thread(_scrape, port)
                started = time.perf_counter()
                await asyncio.gather(*(pvc(i) for i in range(pvcs)))
                wall = time.perf_counter() - started
                count1, busy1 = await asyncio.to_thread(_scrape, port)
                for vol, staging, target in staged:  # unmount before the simulator goes
                    await node_stub.NodeUnpublishVolume(
                        csi.NodeUnpublishVolumeRequest(volume_id=vol, target_path=target)
                    )
                    await node_stub.NodeUnstageVolume(
                        csi.NodeUnstageVolumeRequest(volume_id=vol, staging_target_path=staging)
                    )
    requests, busy = count1 - count0, busy1 - busy0
    spread = busy / DEFAULT_MAX_CONCURRENCY
    chain = busy / pvcs  # one volume's requests, one after the other
    minimum = max(spread, chain)
    ratio = wall / minimum
    row(
        f"burst of {pvcs} PVCs",
        f"{ratio:.2f} ({wall:.1f} s; API-bound minimum {minimum:.1f} s = {requests:.0f} Oxide "
        f"requests of {busy / requests * 1000:.0f} ms on average over "
        f"{DEFAULT_MAX_CONCURRENCY} in flight; {len(staged)} volumes also staged and published "
        "on this node)",
        "<= 1.2",
        ratio <= 1.2,
    )


# ---- 4. listings at scale -------------------------------------------------------------------


async def _list_all_volumes(stub: csi_grpc.ControllerAsyncStub, page: int) -> int:
    token, seen = "", 0
    while True:
        answer = await stub.ListVolumes(
            csi.ListVolumesRequest(max_entries=page, starting_token=token)
        )
        seen += len(answer.entries)
        token = answer.next_token
        if not token:
            return seen


async def _list_all_snapshots(stub: csi_grpc.ControllerAsyncStub, page: int) -> int:
    token, seen = "", 0
    while True:
        answer = await stub.ListSnapshots(
            csi.ListSnapshotsRequest(max_entries=page, starting_token=token)
        )
        seen += len(answer.entries)
        token = answer.next_token
        if not token:
            return seen


async def listing_scale(
    workdir: Path, row: Row, sizes: tuple[int, int] = (1000, 5000), page: int = 500
) -> None:
    """ListVolumes and ListSnapshots over ``sizes`` volumes, each with a snapshot (the driver
    pages Oxide's listings, 1000 per page): one call listing everything, a walk in pages of
    ``page``, and a reconciler pass; how each grows from the small size to the large one."""
    sim = harness.start_sim(workdir, "--quota-gib", "10000000")
    figures: dict[int, dict[str, tuple[float, float, float]]] = {}
    with harness.stopping(sim.proc):
        driver = harness.start_driver(workdir, sim.env, mode="controller")
        with harness.stopping(driver.proc):
            pid = driver.proc.popen.pid
            api = _client(sim.env)
            reconciler = build_reconciler(api, cluster="default", inflight=InFlight())
            async with grpc.aio.insecure_channel(driver.endpoint, options=CHANNEL_OPTIONS) as ch:
                stub: csi_grpc.ControllerAsyncStub = csi_grpc.ControllerStub(ch)
                made = 0
                gate = asyncio.Semaphore(32)
                for size in sizes:

                    async def make(i: int) -> None:
                        async with gate:
                            vol = (await stub.CreateVolume(_create(f"many-{i}"))).volume.volume_id
                            await stub.CreateSnapshot(
                                csi.CreateSnapshotRequest(
                                    name=f"many-snap-{i}", source_volume_id=vol
                                )
                            )

                    await asyncio.gather(*(make(i) for i in range(made, size)))
                    made = size
                    got: dict[str, tuple[float, float, float]] = {}
                    works: list[tuple[str, Callable[[], Awaitable[int]]]] = [
                        ("ListVolumes, all in one", lambda: _list_all_volumes(stub, 0)),
                        (f"ListVolumes, pages of {page}", lambda: _list_all_volumes(stub, page)),
                        ("ListSnapshots, all in one", lambda: _list_all_snapshots(stub, 0)),
                        (
                            f"ListSnapshots, pages of {page}",
                            lambda: _list_all_snapshots(stub, page),
                        ),
                    ]
                    for name, work in works:
                        runs = [await measured(pid, work()) for _ in range(3)]
                        got[name] = (
                            statistics.median(r[0] for r in runs),
                            statistics.mean(r[1] for r in runs),  # 10 ms ticks: the mean
                            max(r[2] for r in runs),
                        )
                    passes: list[tuple[float, float]] = []
                    for _ in range(3):  # in this process: its CPU is this process's
                        started, cpu = time.perf_counter(), time.process_time()
                        await reconciler.run_once()
                        passes.append((time.perf_counter() - started, time.process_time() - cpu))
                    got["reconciler pass"] = (
                        statistics.median(p[0] for p in passes),
                        statistics.mean(p[1] for p in passes),
                        0.0,
                    )
                    figures[size] = got
            await api.aclose()
    small, large = sizes
    linear = large / small
    for name in figures[small]:
        (t_small, c_small, _), (t_large, c_large, m_large) = (
            figures[small][name],
            figures[large][name],
        )
        # The driver's own CPU: the wall time includes the simulator's paging.
        growth = c_large / max(c_small, 0.01)  # /proc/<pid>/stat counts in 10 ms ticks
        if name == "reconciler pass":  # it runs in this process (its CPU: process_time)
            detail = f"; CPU {c_small * 1000:.0f} -> {c_large * 1000:.0f} ms"
        else:
            detail = (
                f"; driver CPU {c_small * 1000:.0f} -> {c_large * 1000:.0f} ms, "
                f"memory +{m_large:.1f} MiB"
            )
        row(
            f"{name}, {small} -> {large}",
            f"{growth:.1f}x CPU (wall {t_small * 1000:.0f} ms -> {t_large * 1000:.0f} ms{detail})",
            f"<= {linear * 1.25:.2f}x (linear: {linear:.0f}x)",
            growth <= linear * 1.25,
        )
