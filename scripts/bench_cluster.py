"""``make bench``, step "pods" (issue 18, item 3): PVC created -> pod Running on the real one-node
Kubernetes cluster, against the simulated rack at realistic Oxide latencies.

What runs (root only): the cluster of ``make e2e`` (tests/e2e/cluster.py: etcd, kube-apiserver,
controller-manager, scheduler, containerd, kubelet), the images and the driver installed exactly
as ``make e2e`` installs them (tests/e2e/stack.py: deploy/kubernetes/base through the test
overlay, the snapshot CRDs and controller), and ``csi-oxide sim --hotplug --backing loop`` on the
host (attached disks are real loop devices; the node plugin makes ext4 on them and mounts them).

Rounds, each ending with every pod, claim, PV, VolumeAttachment and disk gone:

1. simulator at zero latency: one pod to warm up (image unpacked, caches), discarded; one pod
   alone; then N pods at once. This is Kubernetes' own time (plus the driver's CPU and mkfs).
2. simulator restarted with the burst's Oxide latencies (scripts/bench_load.py OP_LATENCY: every
   mutation, disk create, attach, ..., 300-800 ms, every read 20-50 ms, uniformly drawn;
   ``csi-oxide sim --op-latency-ms``) and the driver re-installed against it: one pod alone;
   then N pods at once.

A round creates each pod's PVC and then the pod, all pods concurrently, through the API server's
REST API. The time of a pod is from its PVC's ADDED event to the first event showing the pod in
phase Running, both taken from watches on the API server and stamped with ``time.monotonic()``
on arrival (creationTimestamp has one-second resolution, too coarse).

The StorageClass is the shipped one (deploy/kubernetes/base: ``oxide-disk``, ext4,
WaitForFirstConsumer): that is the path users take (provisioning starts once the scheduler picked
the node, so the figure includes the scheduler's delayed binding). The driver reports no topology,
so Immediate would only start CreateVolume a scheduling cycle earlier.

N is 20 asked, capped at the node's attach limit that the kubelet published in CSINode (12 here:
an Oxide instance takes 12 disks, boot disk included, and the simulator's local instance has no
boot disk). The 13th pod on a one-node cluster can never run; the scheduler keeps it Pending.

The reference, "the same chain of Oxide latencies plus mkfs", per volume: the Oxide requests the
controller made for one volume's create + attach (its own metrics, csi_oxide_oxide_requests_total
by operation, during the one-pod round at latency, less the periodic health check and the
periodic listings of csi-attacher and the reconciler), times their mean duration (the same
metrics: with mutations slower than reads, this is the sum of the chain's latencies), plus mkfs +
mount of ext4 by hand on a loop device of the volume's size (1 GiB).

The goal, per round at latency: the slowest pod <= 1.2 x (reference + Kubernetes' own time),
where Kubernetes' own time is the same round's slowest pod at zero latency less mkfs + mount by
hand (so it also holds the driver's own CPU, the sidecars' and kubelet's polling, the pod's
sandbox and container start). That is: latency may add no more than one volume's chain of Oxide
requests, plus 20 %, on top of what the same pods take without it.

`scripts/bench.py pods` runs this step alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_load import MUTATION_MS, OP_LATENCY, READ_MS, Row, by_hand_seconds

ROOT = Path(__file__).resolve().parents[1]
NS = "default"
LABEL = "csi-oxide-bench"
DRIVER = "csi.oxide.computer"
GIB = 1024**3
SIZE = "1Gi"  # each claim; the reference's mkfs is on a loop device of this size
ASKED_PODS = 20
SLACK = 1.2
GOAL = f"slowest <= {SLACK} x (reference + Kubernetes' own zero-latency time)"
# The controller's periodic Oxide requests, not part of any volume's chain: the health check
# (utilization_view, every 30 s), the reconciler's pass (snapshot_list, every 5 min) and
# csi-attacher's reconciliation through ListVolumes (disk_list, every minute).
BACKGROUND = frozenset({"utilization_view", "snapshot_list", "disk_list"})
# The driver's RPCs on a volume's way to a pod, in order.
PATH_RPCS = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume")
# Debian commands the cluster runs or builds images with (make cluster-deps installs them).
CLUSTER_COMMANDS = (
    *("etcd", "containerd", "runc", "ctr", "podman", "debootstrap", "busybox", "openssl", "ip"),
)
CNI_LOOPBACK = (Path("/usr/lib/cni/loopback"), Path("/opt/cni/bin/loopback"))
ROUND_TIMEOUT = 300.0


def log(msg: str) -> None:
    print(f"[pods] {msg}", flush=True)


# ---- pure parts (tests/scripts/test_bench_cluster.py) -----------------------------------------


def skip_reason(
    euid: int,
    has_loop_control: bool,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[Path], bool] = Path.exists,
) -> str | None:
    """Why this machine cannot run the cluster (None when it can)."""
    if euid != 0:
        return "needs root (containerd, kubelet, loop devices, mounts)"
    if not has_loop_control:
        return "needs /dev/loop-control (loop devices)"
    missing = [c for c in CLUSTER_COMMANDS if which(c) is None]
    if not any(exists(p) for p in CNI_LOOPBACK):
        missing.append("cni-loopback")
    if missing:
        return f"missing {', '.join(missing)} (make cluster-deps installs them)"
    return None


def effective_pods(asked: int, allocatable: int | None) -> int:
    """How many pods can run at once on the node: ``asked``, capped at the driver's attach limit
    in CSINode (None: no limit published)."""
    if allocatable is None:
        return asked
    return max(1, min(asked, allocatable))


def allocatable_of(csinode: Mapping[str, Any] | None, driver: str = DRIVER) -> int | None:
    """The attach limit ``driver`` published in a CSINode object (None when absent)."""
    for d in ((csinode or {}).get("spec") or {}).get("drivers") or []:
        if d.get("name") == driver:
            count = (d.get("allocatable") or {}).get("count")
            return None if count is None else int(count)
    return None


def pod_running(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("phase") == "Running")


def pod_failed(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("status") or {}).get("phase") in ("Failed", "Succeeded"))


@dataclass(frozen=True)
class Requests:
    """From the driver's metrics: Oxide requests (attempts) by operation, how many and their
    summed duration; and the summed duration of the CSI RPCs it served, by method (seconds)."""

    count: Mapping[str, float]
    seconds: Mapping[str, float]
    rpc_seconds: Mapping[str, float] = field(default_factory=dict)

    def __add__(self, other: Requests) -> Requests:
        """Two processes' figures together (the controller's and the node plugin's)."""

        def merged(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
            return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {*a, *b}}

        return Requests(
            merged(self.count, other.count),
            merged(self.seconds, other.seconds),
            merged(self.rpc_seconds, other.rpc_seconds),
        )


def _labels(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def parse_metrics(text: str) -> Requests:
    """The driver's figures from its Prometheus text: Oxide requests_total summed over status and
    outcome, and the request duration histogram's ``_sum``, by operation; the RPC duration
    histogram's ``_sum`` by method."""
    count: dict[str, float] = {}
    seconds: dict[str, float] = {}
    rpc: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("}")
        found = _labels(labels)
        op, method = found.get("operation"), found.get("method")
        if name == "csi_oxide_oxide_requests_total" and op is not None:
            count[op] = count.get(op, 0.0) + float(value)
        elif name == "csi_oxide_oxide_request_duration_seconds_sum" and op is not None:
            seconds[op] = seconds.get(op, 0.0) + float(value)
        elif name == "csi_oxide_rpc_duration_seconds_sum" and method is not None:
            rpc[method] = rpc.get(method, 0.0) + float(value)
    return Requests(count, seconds, rpc)


def rpc_per_volume(
    before: Requests, after: Requests, volumes: int, methods: Iterable[str] = PATH_RPCS
) -> dict[str, float]:
    """Seconds the driver spent serving each of ``methods``, per volume, between two scrapes
    (retries included)."""
    return {
        m: (after.rpc_seconds.get(m, 0.0) - before.rpc_seconds.get(m, 0.0)) / volumes
        for m in methods
    }


def num(x: float) -> str:
    """``x`` with at most two decimals and no trailing zeros (4.333 -> 4.33, 1.0 -> 1)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Chain:
    """One volume's chain of Oxide requests: requests per volume by operation, and the mean
    duration of those requests."""

    per_volume: Mapping[str, float]
    mean_seconds: float

    @property
    def requests(self) -> float:
        return sum(self.per_volume.values())

    @property
    def seconds(self) -> float:
        """The chain's requests one after the other."""
        return self.requests * self.mean_seconds

    def describe(self) -> str:
        ops = ", ".join(f"{op} {num(n)}" for op, n in sorted(self.per_volume.items()))
        return (
            f"{num(self.requests)} Oxide requests ({ops}) x {self.mean_seconds * 1000:.0f} ms "
            f"on average = {self.seconds:.2f} s"
        )


def chain_of(
    before: Requests, after: Requests, volumes: int, background: Iterable[str] = BACKGROUND
) -> Chain:
    """The chain per volume from two scrapes around ``volumes`` volumes' create + attach."""
    if volumes < 1:
        raise ValueError("volumes must be at least 1")
    skip = set(background)
    per: dict[str, float] = {}
    busy = total = 0.0
    for op, n in after.count.items():
        made = n - before.count.get(op, 0.0)
        if op in skip or made <= 0:
            continue
        per[op] = made / volumes
        total += made
        busy += after.seconds.get(op, 0.0) - before.seconds.get(op, 0.0)
    if total == 0:
        raise ValueError("no Oxide request between the two scrapes")
    return Chain(per, busy / total)


@dataclass(frozen=True)
class Round:
    """One round's pods: PVC created -> pod Running, per pod (seconds), and the round's wall time
    (first PVC created -> last pod Running)."""

    seconds: Mapping[str, float]
    wall: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds.values())

    @property
    def slowest(self) -> float:
        return max(self.seconds.values())


def summarize(created: Mapping[str, float], running: Mapping[str, float]) -> Round:
    """Pair each pod with its claim (same name) and time them; ValueError when one is missing."""
    missing = sorted(set(created) ^ set(running))
    if missing or not created:
        raise ValueError(f"pods without both a created claim and a Running pod: {missing}")
    seconds = {name: running[name] - created[name] for name in created}
    if any(s < 0 for s in seconds.values()):
        raise ValueError(f"a pod ran before its claim was created: {seconds}")
    return Round(seconds, max(running.values()) - min(created.values()))


def reference_seconds(chain: Chain, by_hand: float) -> float:
    """The same chain of Oxide latencies plus mkfs + mount by hand."""
    return chain.seconds + by_hand


def kubernetes_own(zero_latency: float, by_hand: float) -> float:
    """Kubernetes' own time in a zero-latency figure: less the mkfs + mount it contains."""
    return max(0.0, zero_latency - by_hand)


def goal_bound(reference: float, own: float, slack: float = SLACK) -> float:
    return slack * (reference + own)


# ---- the API server ---------------------------------------------------------------------------


def pvc_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS, "labels": {LABEL: "1"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "oxide-disk",
            "resources": {"requests": {"storage": SIZE}},
        },
    }


def pod_object(name: str, claim: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {LABEL: "1"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.37",
                    "imagePullPolicy": "IfNotPresent",
                    # Waits for SIGTERM and stops at once (a shell ignores it otherwise).
                    "command": ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


@dataclass
class Kube:
    """The API server's REST API, as the cluster's admin (static token)."""

    server: str
    token: str
    ca: Path
    metrics_ports: tuple[int, int]  # the controller's and the node plugin's (host network)
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {self.token}"},
            verify=ssl.create_default_context(cafile=str(self.ca)),
            trust_env=False,  # no proxy: everything is on 127.0.0.1
            timeout=httpx.Timeout(30.0),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def list(self, path: str, **params: str) -> Any:
        answer = await self.client.get(path, params=params)
        answer.raise_for_status()
        return answer.json()

    async def create(self, path: str, obj: Mapping[str, Any]) -> None:
        answer = await self.client.post(path, json=obj)
        if answer.status_code >= 400:
            raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text[:500]}")

    async def delete_labelled(self, path: str) -> None:
        answer = await self.client.delete(path, params={"labelSelector": f"{LABEL}=1"})
        answer.raise_for_status()

    async def watch(
        self, path: str, on_event: Callable[[str, Any, float], None], ready: asyncio.Event
    ) -> None:
        """Follow ``path`` from now: ``on_event(type, object, monotonic arrival time)``; ``ready``
        is set once the watch is established."""
        rv = (await self.list(path))["metadata"]["resourceVersion"]
        params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "900"}
        timeout = httpx.Timeout(30.0, read=None)
        async with self.client.stream("GET", path, params=params, timeout=timeout) as answer:
            answer.raise_for_status()
            ready.set()
            async for line in answer.aiter_lines():
                if line.strip():
                    event = json.loads(line)
                    on_event(event["type"], event["object"], time.monotonic())

    async def scrape(self) -> Requests:
        """The driver's figures: its two processes' metrics, on 127.0.0.1 (host network)."""
        total = Requests({}, {}, {})
        async with httpx.AsyncClient(trust_env=False, timeout=30.0) as plain:
            for port in self.metrics_ports:
                answer = await plain.get(f"http://127.0.0.1:{port}/metrics")
                answer.raise_for_status()
                total += parse_metrics(answer.text)
        return total


PVCS = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
PODS = f"/api/v1/namespaces/{NS}/pods"


@dataclass
class Measured:
    round: Round
    chain: Chain
    rpc: Mapping[str, float]  # the driver's seconds per volume in each RPC on the way

    def describe_rpc(self) -> str:
        parts = ", ".join(f"{m} {s:.2f}" for m, s in self.rpc.items())
        return f"{sum(self.rpc.values()):.1f} s ({parts})"


async def _wait_gone(kube: Kube, paths: Iterable[str], within: float = 300) -> None:
    deadline = time.monotonic() + within
    for path in paths:
        while (await kube.list(path))["items"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} still lists objects after {within:.0f} s")
            await asyncio.sleep(0.5)


async def _clean(kube: Kube) -> None:
    """Pods first (their volumes unmounted and detached), then the claims, then wait for every
    PV and VolumeAttachment to go (the disks deleted on the rack)."""
    await kube.delete_labelled(PODS)
    await _wait_gone(kube, [PODS])
    await kube.delete_labelled(PVCS)
    await _wait_gone(
        kube, [PVCS, "/api/v1/persistentvolumes", "/apis/storage.k8s.io/v1/volumeattachments"]
    )


async def _round(kube: Kube, tag: str, count: int) -> Measured:
    names = [f"{tag}-{i}" for i in range(count)]
    wanted = set(names)
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    failed: list[str] = []
    done = asyncio.Event()

    def on_pvc(kind: str, obj: Any, at: float) -> None:
        name = obj["metadata"]["name"]
        if kind == "ADDED" and name in wanted:
            created.setdefault(name, at)

    def on_pod(kind: str, obj: Any, at: float) -> None:
        name = obj["metadata"]["name"]
        if name not in wanted:
            return
        if pod_running(obj):
            running.setdefault(name, at)
        elif pod_failed(obj):
            failed.append(name)
            done.set()
        if len(running) == count:
            done.set()

    ready = [asyncio.Event(), asyncio.Event()]
    watches = [
        asyncio.create_task(kube.watch(PVCS, on_pvc, ready[0])),
        asyncio.create_task(kube.watch(PODS, on_pod, ready[1])),
    ]
    try:
        for w, r in zip(watches, ready, strict=True):
            established = asyncio.create_task(r.wait())
            await asyncio.wait([w, established], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            established.cancel()
            if w.done():
                w.result()  # raises what failed
            if not r.is_set():
                raise TimeoutError("a watch on the API server was not established in 30 s")
        before = await kube.scrape()

        async def one(name: str) -> None:
            await kube.create(PVCS, pvc_object(name))
            await kube.create(PODS, pod_object(name, name))

        await asyncio.gather(*(one(n) for n in names))
        try:
            await asyncio.wait_for(done.wait(), ROUND_TIMEOUT)
        except TimeoutError:
            waiting = sorted(wanted - set(running))
            raise TimeoutError(
                f"{len(waiting)} pods not Running after {ROUND_TIMEOUT:.0f} s: {waiting}"
            ) from None
        if failed:
            raise RuntimeError(f"pods ended instead of running: {failed}")
        after = await kube.scrape()
    finally:
        for w in watches:
            w.cancel()
        for w in watches:
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await w
    return Measured(
        summarize(created, running),
        chain_of(before, after, count),
        rpc_per_volume(before, after, count),
    )


async def _run_round(
    kube_args: tuple[str, str, Path, tuple[int, int]], tag: str, count: int
) -> Measured:
    kube = Kube(*kube_args)
    try:
        got = await _round(kube, tag, count)
        log(
            f"{tag}: {count} pods, median {got.round.median:.2f} s, slowest "
            f"{got.round.slowest:.2f} s, wall {got.round.wall:.2f} s; chain "
            f"{got.chain.describe()}; driver per volume: {got.describe_rpc()}"
        )
        started = time.monotonic()
        await _clean(kube)
        log(f"{tag}: cleaned up in {time.monotonic() - started:.1f} s")
        return got
    finally:
        await kube.aclose()


# ---- the step ---------------------------------------------------------------------------------


@dataclass
class Figures:
    by_hand: float
    pods: int
    allocatable: int | None
    zero_one: Measured
    zero_many: Measured
    real_one: Measured
    real_many: Measured


def _latency_args() -> tuple[str, ...]:
    return ("--op-latency-ms", OP_LATENCY)  # the burst's (scripts/bench_load.py)


def latency_label() -> str:
    (m_low, m_high), (r_low, r_high) = MUTATION_MS, READ_MS
    return f"Oxide mutations {m_low:.0f}-{m_high:.0f} ms, reads {r_low:.0f}-{r_high:.0f} ms"


def measure(workdir: Path, asked: int = ASKED_PODS) -> Figures:
    """Everything, from the builds to the teardown (which always runs and must leave nothing)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests/e2e: the cluster and the install of make e2e
    from tests.e2e import images
    from tests.e2e.cluster import NODE_NAME, Cluster, Tools, free_port
    from tests.e2e.stack import (
        Sim,
        cluster_images,
        install_driver,
        install_snapshot_support,
        loops_backed_by,
    )

    by_hand = statistics.median(by_hand_seconds(workdir, GIB, direct_io=True) for _ in range(3))
    log(f"mkfs.ext4 + mount by hand, 1 GiB loop device: {by_hand * 1000:.0f} ms (median of 3)")
    started = time.monotonic()
    tools = Tools.build()
    cluster = Cluster(tools)
    sims: list[Any] = []
    problems: list[str] = []
    try:
        out = workdir / "images"
        out.mkdir()
        built = cluster_images(tools, out)
        cluster.start(lambda c: images.import_images(built, c.containerd_sock))
        install_snapshot_support(cluster, tools)
        zero = Sim(workdir / "sim-zero", hotplug=True, port=free_port())
        sims.append(zero)
        zero.start()
        ports = (free_port(), free_port())
        install_driver(cluster, zero, ports, run="bench-zero")
        log(f"cluster up, driver installed in {time.monotonic() - started:.0f} s")
        allocatable = allocatable_of(cluster.get("csinode", NODE_NAME))
        pods = effective_pods(asked, allocatable)
        log(f"{pods} pods at once ({asked} asked; the node's attach limit is {allocatable})")
        server = f"https://127.0.0.1:{cluster.api_port}"
        ca = cluster.state / "pki" / "ca.crt"
        kube = (server, cluster.admin_token, ca, ports)
        asyncio.run(_run_round(kube, "warm", 1))
        zero_one = asyncio.run(_run_round(kube, "zero-one", 1))
        zero_many = asyncio.run(_run_round(kube, "zero-many", pods))
        zero.stop()
        real = Sim(workdir / "sim-real", hotplug=True, port=free_port(), extra=_latency_args())
        sims.append(real)
        real.start()
        ports = (free_port(), free_port())
        install_driver(cluster, real, ports, run="bench-real")
        kube = (server, cluster.admin_token, ca, ports)
        real_one = asyncio.run(_run_round(kube, "real-one", 1))
        real_many = asyncio.run(_run_round(kube, "real-many", pods))
    except BaseException:
        with contextlib.suppress(Exception):
            log(cluster.diagnostics()[-6000:])
        raise
    finally:
        t = time.monotonic()
        for sim in sims:
            sim.stop()
        problems += cluster.stop()
        for sim in sims:
            problems += [
                f"loop device {d} still backed by {sim.state}" for d in loops_backed_by(sim.state)
            ]
        whole = time.monotonic() - started
        log(f"teardown in {time.monotonic() - t:.0f} s; whole step {whole:.0f} s")
    if problems:
        raise RuntimeError(f"teardown left things behind: {problems}")
    return Figures(by_hand, pods, allocatable, zero_one, zero_many, real_one, real_many)


def report(f: Figures, row: Row, asked: int = ASKED_PODS) -> None:
    """The two rows: one pod alone, and the pods at once."""
    ref = reference_seconds(f.real_one.chain, f.by_hand)
    latency = latency_label()
    one, zero_one = f.real_one.round.slowest, f.zero_one.round.slowest
    own_one = kubernetes_own(zero_one, f.by_hand)
    bound_one = goal_bound(ref, own_one)
    row(
        f"pods: PVC -> Running, 1 pod ({latency})",
        f"{one / ref:.2f} x reference ({one:.1f} s; reference {ref:.1f} s = "
        f"{f.real_one.chain.describe()} + mkfs + mount by hand {f.by_hand * 1000:.0f} ms; "
        f"at zero latency {zero_one:.1f} s; inside the driver's RPCs "
        f"{f.real_one.describe_rpc()})",
        f"<= {SLACK} x (reference + Kubernetes' own {own_one:.1f} s) = {bound_one:.1f} s",
        one <= bound_one,
    )
    many, zero_many = f.real_many.round, f.zero_many.round
    own_many = kubernetes_own(zero_many.slowest, f.by_hand)
    bound_many = goal_bound(ref, own_many)
    capped = (
        f"; {asked} asked, the node takes {f.allocatable} (an Oxide instance takes 12 disks)"
        if f.pods < asked
        else ""
    )
    row(
        f"pods: PVC -> Running, {f.pods} pods at once ({latency})",
        f"median {many.median / ref:.2f}, slowest {many.slowest / ref:.2f} x reference "
        f"({many.median:.1f} s, {many.slowest:.1f} s); wall / 1 pod {many.wall / one:.2f} "
        f"({many.wall:.1f} s / {one:.1f} s); at zero latency median {zero_many.median:.1f} s, "
        f"slowest {zero_many.slowest:.1f} s; per volume {num(f.real_many.chain.requests)} Oxide "
        f"requests, inside the driver's RPCs {f.real_many.describe_rpc()}{capped}",
        f"slowest <= {SLACK} x (reference + Kubernetes' own {own_many:.1f} s) = {bound_many:.1f} s",
        many.slowest <= bound_many,
    )


def pods_step(workdir: Path, row: Row, asked: int = ASKED_PODS) -> None:
    """The bench step (blocking: run it in a thread from an event loop)."""
    reason = skip_reason(os.geteuid(), Path("/dev/loop-control").exists())
    if reason is not None:
        row("pods: PVC -> Running on the cluster", f"skipped: {reason}", GOAL, None)
        return
    try:
        figures = measure(workdir, asked)
    except subprocess.CalledProcessError as exc:
        if "build_tools" in " ".join(map(str, exc.cmd)):
            row(
                "pods: PVC -> Running on the cluster",
                "skipped: the cluster tools (.tools/cluster) are absent and "
                f"scripts/cluster/build_tools.py could not build them (exit {exc.returncode})",
                GOAL,
                None,
            )
            return
        traceback.print_exc()
        row("pods: PVC -> Running on the cluster", f"failed: {exc}", GOAL, False)
        return
    except Exception as exc:  # noqa: BLE001 - the bench goes on; the row says what failed
        traceback.print_exc()
        row("pods: PVC -> Running on the cluster", f"failed: {exc}"[:300], GOAL, False)
        return
    report(figures, row, asked)
