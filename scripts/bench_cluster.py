"""``make bench``, the cluster step "pods and move on the cluster" (issue 18, item 3; performance
issue, item 5): PVC created -> pod Running, and a pod moved with its volume from one node to the
other, on the real two-node Kubernetes cluster of ``make e2e``, against the simulated rack at zero
latency and at realistic Oxide latencies.

What runs (root only): the cluster of ``make e2e`` with its two nodes (tests/e2e/cluster.py: etcd,
kube-apiserver, controller-manager, scheduler, and per node a containerd and a kubelet: node A is
``localhost``, node B ``127.0.0.2``), the images imported into both nodes and the driver installed
exactly as ``make e2e`` installs it (tests/e2e/stack.py: deploy/kubernetes/base through the test
overlay, one node-plugin DaemonSet per node, the snapshot CRDs and controller), and ``csi-oxide sim
--hotplug --backing loop --local-instances 2`` on the host (local instance 0 is node A, 1 is node
B; attached disks are real loop devices in their instance's device folder; the node plugin makes
ext4 on them and mounts them).

Rounds, each ending with every pod, claim, PV, VolumeAttachment and disk gone:

1. simulator at zero latency: one pod on each node to warm up (images unpacked, each node plugin's
   first volume), discarded; one pod alone; then N pods at once; then the move round. This is
   Kubernetes' own time (plus the driver's CPU and mkfs).
2. simulator restarted with the burst's Oxide latencies (scripts/bench_load.py OP_LATENCY: every
   mutation, disk create, attach, detach, ..., 300-800 ms, every read 20-50 ms, uniformly drawn;
   ``csi-oxide sim --op-latency-ms``) and the driver re-installed against it: one pod alone; then
   N pods at once; then the move round.

The pods rounds
---------------

Every pod of these rounds is pinned to node A (a nodeSelector on ``kubernetes.io/hostname``): the
figures are those of one node, as when this step ran on a one-node cluster (one node's attach
limit, one node plugin; the second kubelet only idles beside it).

A round creates each pod's PVC and then the pod, all pods concurrently, through the API server's
REST API. The time of a pod is from its PVC's ADDED event to the first event showing the pod in
phase Running, both taken from watches on the API server and stamped with ``time.monotonic()``
on arrival (creationTimestamp has one-second resolution, too coarse).

The StorageClass is the shipped one (deploy/kubernetes/base: ``oxide-disk``, ext4,
WaitForFirstConsumer): that is the path users take (provisioning starts once the scheduler picked
the node, so the figure includes the scheduler's delayed binding). The driver reports no topology,
so Immediate would only start CreateVolume a scheduling cycle earlier.

N is 20 asked, capped at node A's attach limit that its kubelet published in CSINode (12 here:
an Oxide instance takes 12 disks, boot disk included, and the simulator's local instances have no
boot disk). The 13th pod pinned to a node can never run; the scheduler keeps it Pending.

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

The move round
--------------

A pod with a volume moved from node A to node B, against Kubernetes' own time to do the same with a
pod without a volume, plus the Oxide detach and attach that must happen in between.

- Set-up: a claim (1 GiB, the shipped class) and a pod pinned to A whose container writes a random
  token to ``/data/token`` (and syncs); beside it a pod without a volume pinned to A. Both Ready.
- Three moves, A -> B, B -> A, A -> B, each two switches one after the other: first the pod
  without a volume (the reference), then the pod with its volume. A switch is the DELETE of the
  running pod (graceful, as ``kubectl delete pod``: its container stops at once on SIGTERM) and,
  sent at the same instant, the POST of a new pod with the same spec pinned to the other node (a
  nodeSelector on ``kubernetes.io/hostname``; a new name, since the old pod stays until its kubelet
  has stopped it). The volume's new pod names the same claim; its container looks for the token
  (``grep -qx``) and marks itself ready (a readiness probe on a file) only when it found it,
  exiting 1 otherwise: no ``kubectl exec``, and the data is known to have moved.
- The time of a switch: from just before the two requests are sent (``time.monotonic()``) to the
  arrival of the first watch event showing the new pod in phase Running (on the node it was pinned
  to). The switch then waits for the new pod to be Ready (for the volume: the token was found) and
  for the old pod's DELETED event, so that no switch overlaps the next.
- The Oxide detach and attach latencies: the driver's own metrics scraped just before and after
  each volume switch; for ``instance_disk_detach`` and for ``instance_disk_attach``, the growth of
  ``csi_oxide_oxide_request_duration_seconds_sum`` / the growth of
  ``csi_oxide_oxide_requests_total``: the mean duration of those requests during that move.

The goal, at latency: the moves' median <= 1.2 x (the reference switches' median + the median
detach + the median attach). A move may take what Kubernetes takes to replace a pod on another
node, plus the two Oxide requests that must run one after the other before the new pod can start,
plus 20 %. The figure is judged as the others are (scripts/bench_verdict.py): each series' median,
fastest and slowest run and spread printed; a run more than 3x off its series' median, or a ratio
below 0.5 (a move does all the reference does, and the detach and attach in turn), makes it
INVALID. The zero-latency move is printed too, with no goal: what of a move is Kubernetes' own
(the unmount on A, A's node status, the attach/detach controller, B's kubelet waiting for the
attach). Each move is also cut into phases at the driver's RPC log lines (``MovePhases``), so
the printout says where the seconds went and how many of them were the driver's.

`scripts/bench.py pods` runs this step alone (both kinds of rounds); `scripts/bench.py move`
runs it with the move rounds alone (the warm-up pods still run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from bench_load import MUTATION_MS, OP_LATENCY, READ_MS, Row, by_hand_seconds
from bench_verdict import SAME_WORK_FLOOR, Spread, Verdict, judge, seconds_text

ROOT = Path(__file__).resolve().parents[1]
NS = "default"
LABEL = "csi-oxide-bench"
DRIVER = "csi.oxide.computer"
GIB = 1024**3
SIZE = "1Gi"  # each claim; the reference's mkfs is on a loop device of this size
ASKED_PODS = 20
SLACK = 1.2
GOAL = f"slowest <= {SLACK} x (reference + Kubernetes' own zero-latency time)"
MOVE_GOAL = f"<= {SLACK} x (Kubernetes' own time for a pod without a volume + detach + attach)"
NODES = 2  # as make e2e's cluster: node A (the pods rounds' node) and node B
MOVES = 3  # A -> B, B -> A, A -> B
# The rounds of the step: `scripts/bench.py move` runs the move rounds alone.
ROUNDS = frozenset({"pods", "move"})
DETACH, ATTACH = "instance_disk_detach", "instance_disk_attach"
# What a move's Oxide means cannot tell apart: a run this close to its series' median is no
# outlier (at zero latency the requests take milliseconds, and their jitter is as large).
OXIDE_RESOLUTION = 0.05
# The controller's periodic Oxide requests, not part of any volume's chain: the health check
# (utilization_view, every 30 s), the reconciler's pass (snapshot_list, every 5 min) and
# csi-attacher's reconciliation through ListVolumes (disk_list, every minute).
BACKGROUND = frozenset({"utilization_view", "snapshot_list", "disk_list"})
# The driver's RPCs on a volume's way to a pod, in order.
PATH_RPCS = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume")
# The driver's RPCs in a move from one node to the other, in order.
MOVE_RPCS = (
    *("NodeUnpublishVolume", "NodeUnstageVolume", "ControllerUnpublishVolume"),
    *("ControllerPublishVolume", "NodeStageVolume", "NodePublishVolume"),
)
# Debian commands the cluster runs or builds images with (make cluster-deps installs them).
CLUSTER_COMMANDS = (
    *("etcd", "containerd", "runc", "ctr", "podman", "debootstrap", "busybox", "openssl", "ip"),
)
CNI_LOOPBACK = (Path("/usr/lib/cni/loopback"), Path("/opt/cni/bin/loopback"))
ROUND_TIMEOUT = 300.0
# The file a bench pod's container makes once its work is done; its readiness probe looks for it.
READY_FILE = "/tmp/ready"  # noqa: S108 - in the container's own file system
READY_TIMEOUT = 60.0  # a Running pod to Ready (its readiness probe runs every second)
GONE_TIMEOUT = 120.0  # a deleted pod's object removed (its kubelet stopped it, volumes unmounted)


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


def pod_ready(obj: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True (for a move's pod: it found its volume's data)."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_node(obj: Mapping[str, Any]) -> str | None:
    """The node the pod was scheduled to (None: not yet)."""
    node = (obj.get("spec") or {}).get("nodeName")
    return None if node is None else str(node)


def cluster_rounds(words: Iterable[str]) -> frozenset[str]:
    """The rounds the step runs for ``scripts/bench.py WORD...``: the move rounds alone when the
    words name ``move`` and neither ``pods`` nor ``cluster``; else all of them."""
    got = set(words)
    if "move" in got and not got & {"pods", "cluster"}:
        return frozenset({"move"})
    return ROUNDS


def move_plan(nodes: Sequence[str], moves: int = MOVES) -> list[tuple[str, str]]:
    """The moves, (from, to): A -> B, B -> A, A -> B, ..."""
    if len(nodes) < 2:
        raise ValueError(f"a move needs two nodes, not {list(nodes)}")
    a, b = nodes[0], nodes[1]
    return [(a, b) if i % 2 == 0 else (b, a) for i in range(moves)]


def metrics_port_of(workload: Mapping[str, Any] | None, container: str = "csi-oxide") -> int:
    """The port of ``--metrics-address=HOST:PORT`` of ``container`` in a Deployment's or a
    DaemonSet's pod template (the test overlay gives each driver process one on 127.0.0.1)."""
    spec = (((workload or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in spec.get("containers") or []:
        if c.get("name") != container:
            continue
        for arg in c.get("args") or []:
            if arg.startswith("--metrics-address="):
                return int(arg.rpartition(":")[2])
    raise ValueError(f"no --metrics-address on container {container!r}")


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


@dataclass(frozen=True)
class OpTime:
    """Oxide requests of one operation between two scrapes: how many, and their summed
    duration (seconds)."""

    count: float
    seconds: float

    @property
    def mean(self) -> float:
        return self.seconds / self.count


def op_time(before: Requests, after: Requests, op: str) -> OpTime:
    """The requests of ``op`` made between two scrapes; ValueError when there was none."""
    count = after.count.get(op, 0.0) - before.count.get(op, 0.0)
    if count <= 0:
        raise ValueError(f"no {op} request between the two scrapes")
    return OpTime(count, after.seconds.get(op, 0.0) - before.seconds.get(op, 0.0))


@dataclass(frozen=True)
class RpcEnd:
    """One CSI RPC the driver served, from its log line (written as the RPC ends): the method,
    the wall-clock time it ended (seconds since the epoch) and how long it took."""

    method: str
    end: float
    seconds: float

    @property
    def start(self) -> float:
        return self.end - self.seconds


def parse_rpc_log(lines: Iterable[str]) -> list[RpcEnd]:
    """The RPC lines of the driver's JSON log as the container runtime stores it (``<time>
    <stream> <tag> <json>`` per line); anything else (other events, a line cut by the runtime)
    is skipped."""
    out = []
    for line in lines:
        _, _, text = line.partition("{")
        try:
            got = json.loads("{" + text)
        except ValueError:
            continue
        if not isinstance(got, dict) or got.get("event") != "rpc":
            continue
        try:
            end = datetime.fromisoformat(str(got["timestamp"])).timestamp()
            out.append(RpcEnd(str(got["rpc"]), end, float(got["duration_ms"]) / 1000))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def driver_rpcs(folders: Iterable[Path]) -> list[RpcEnd]:
    """Every RPC line in the logs of the driver's containers (``csi-oxide``) under the nodes'
    pod-log folders, in the order they ended."""
    found: list[RpcEnd] = []
    for folder in folders:
        for path in folder.glob("kube-system_csi-oxide-*/csi-oxide/*.log"):
            with path.open(encoding="utf-8", errors="replace") as f:
                found += parse_rpc_log(f)
    return sorted(found, key=lambda r: r.end)


@dataclass(frozen=True)
class MovePhases:
    """Where a move's seconds went, from the DELETE of the pod on A to the new pod Running on
    B, read off the driver's RPC log lines: A's kubelet stops the pod and unmounts the volume
    (up to NodeUnstageVolume's end); A's kubelet reports the volume unmounted in its node
    status, and the attach/detach controller and csi-attacher start the detach (up to
    ControllerUnpublishVolume's start); the detach and the attach (to the last
    ControllerPublishVolume's end); B's kubelet sees the attachment (to NodeStageVolume's
    start); the stage, the publish and the container's start (to Running). ``driver``: the
    seconds spent in the driver's RPCs of the move, all of them."""

    unmount: float
    to_detach: float
    oxide: float
    to_stage: float
    to_running: float
    driver: float

    NAMES = (
        ("unmount", "A stops the pod, unmounts"),
        ("to_detach", "A reports it unmounted, detach starts"),
        ("oxide", "detach + attach"),
        ("to_stage", "B sees it attached, stage starts"),
        ("to_running", "stage, publish, container start"),
    )


def move_phases(rpcs: Sequence[RpcEnd], started: float, running: float) -> MovePhases | None:
    """The phases of a move that began (DELETE sent) at wall-clock ``started`` and was seen
    Running at ``running``, from the driver's RPCs that ran between the two (``MOVE_RPCS``);
    None when one of its landmarks is missing from the logs."""
    moved = [r for r in rpcs if r.method in MOVE_RPCS and started <= r.start and r.end <= running]

    def first(method: str) -> RpcEnd | None:
        return next((r for r in moved if r.method == method), None)

    unstage, unpublish = first("NodeUnstageVolume"), first("ControllerUnpublishVolume")
    publish = [r for r in moved if r.method == "ControllerPublishVolume"]
    stage = first("NodeStageVolume")
    if unstage is None or unpublish is None or not publish or stage is None:
        return None
    attached = publish[-1].end
    return MovePhases(
        unmount=unstage.end - started,
        to_detach=unpublish.start - unstage.end,
        oxide=attached - unpublish.start,
        to_stage=stage.start - attached,
        to_running=running - stage.start,
        driver=sum(r.seconds for r in moved),
    )


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


@dataclass(frozen=True)
class MoveRun:
    """One move from node ``source`` to ``target``: the seconds from the DELETE of the running
    pod (and the POST of its replacement on the other node) to the replacement Running, for a
    pod without a volume (``reference``: Kubernetes' own time) and for the pod with its volume
    (``move``); the Oxide detach and attach requests during the volume's move; and the seconds
    the driver spent in each RPC of the move (``MOVE_RPCS``)."""

    source: str
    target: str
    reference: float
    move: float
    detach: OpTime
    attach: OpTime
    rpc: Mapping[str, float] = field(default_factory=dict)
    phases: MovePhases | None = None  # None: the driver's logs were not readable


@dataclass(frozen=True)
class Moves:
    """The move round's runs, and the figure: the moves' median / (the reference's median +
    the median detach + the median attach)."""

    runs: tuple[MoveRun, ...]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("a move round has no runs")

    @property
    def moved(self) -> Spread:
        return Spread.of("the pod with its volume", (r.move for r in self.runs))

    @property
    def own(self) -> Spread:
        return Spread.of("the pod without a volume", (r.reference for r in self.runs))

    @property
    def detach(self) -> Spread:
        runs = (r.detach.mean for r in self.runs)
        return Spread.of("Oxide detach", runs, resolution=OXIDE_RESOLUTION)

    @property
    def attach(self) -> Spread:
        runs = (r.attach.mean for r in self.runs)
        return Spread.of("Oxide attach", runs, resolution=OXIDE_RESOLUTION)

    @property
    def limit(self) -> float:
        """Kubernetes' own time plus the Oxide detach and attach (seconds)."""
        return self.own.median + self.detach.median + self.attach.median

    @property
    def ratio(self) -> float:
        limit = self.limit
        return self.moved.median / limit if limit > 0 else float("inf")

    def verdict(self, *, goal: bool = True) -> Verdict:
        """INVALID below the floor or with an outlier in a series (bench_verdict); else the
        goal (``goal``) or, for a figure shown for context, none."""
        ratio = self.ratio
        got = judge(
            ratio,
            ratio <= SLACK,
            floor=SAME_WORK_FLOOR,
            series=[self.moved, self.own, self.detach, self.attach],
        )
        return got if goal or got.invalid is not None else Verdict(None)

    def describe(self) -> str:
        detach = sum(r.detach.count for r in self.runs)
        attach = sum(r.attach.count for r in self.runs)
        path = ", ".join(f"{r.source} -> {r.target}" for r in self.runs)
        rpc = ", ".join(
            f"{m} {statistics.mean(r.rpc.get(m, 0.0) for r in self.runs):.2f}" for m in MOVE_RPCS
        )
        return (
            f"{len(self.runs)} moves ({path}): with its volume {self.moved.describe()}; "
            f"Kubernetes' own, a pod without a volume moved the same way {self.own.describe()}; "
            f"Oxide detach {self.detach.describe()} ({num(detach)} requests), attach "
            f"{self.attach.describe()} ({num(attach)} requests): {SLACK} x "
            f"({self.own.median:.2f} + {self.detach.median:.2f} + {self.attach.median:.2f} s) = "
            f"{SLACK * self.limit:.2f} s; the driver's RPCs per move, mean s: {rpc}"
            f"{self.describe_phases()}"
        )

    def describe_phases(self) -> str:
        """Where the moves' seconds went (``MovePhases``), medians; "" without the logs."""
        known = [r.phases for r in self.runs if r.phases is not None]
        if not known:
            return ""
        parts = [
            f"{label} {statistics.median(getattr(p, name) for p in known):.2f}"
            for name, label in MovePhases.NAMES
        ]
        driver = statistics.median(p.driver for p in known)
        return (
            f"; where the time went, median s of {len(known)}: {', '.join(parts)} "
            f"(in the driver's RPCs: {driver:.2f})"
        )


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


def pod_script(work: str | None = None) -> str:
    """The container's program: ``work`` first (when given: on success a file marks the pod
    ready, on failure the container exits 1), then wait for SIGTERM and stop at once (a shell
    ignores it otherwise, and a ``sleep`` in the foreground would hold it back)."""
    checked = (
        f"if {{ {work} ; }}; then touch {READY_FILE}; else echo WORK FAILED; exit 1; fi; "
        if work is not None
        else ""
    )
    return f"trap 'exit 0' TERM INT; {checked}while :; do sleep 1 & wait $!; done"


def pod_object(
    name: str, claim: str | None, *, node: str | None = None, work: str | None = None
) -> dict[str, Any]:
    """A bench pod: busybox, with ``claim`` mounted on /data (None: no volume), pinned to
    ``node`` by its ``kubernetes.io/hostname`` label (None: anywhere), and with ``work`` to do
    before it is ready (a readiness probe looks for the file ``pod_script`` makes; None: no
    probe)."""
    container: dict[str, Any] = {
        "name": "app",
        "image": "busybox:1.37",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", pod_script(work)],
    }
    if work is not None:
        container["readinessProbe"] = {
            "exec": {"command": ["test", "-f", READY_FILE]},
            "periodSeconds": 1,
        }
    spec: dict[str, Any] = {
        # Its container stops at once on SIGTERM: a longer grace than needed costs nothing.
        "terminationGracePeriodSeconds": 10,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "containers": [container],
    }
    if claim is not None:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    if node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {LABEL: "1"}},
        "spec": spec,
    }


def write_token(token: str) -> str:
    """A move's first pod's work: the token on its fresh volume."""
    return f"echo {token} > /data/token && sync"


def find_token(token: str) -> str:
    """A moved pod's work: find the token on the volume that followed it."""
    return f"grep -qx {token} /data/token"


@dataclass
class Kube:
    """The API server's REST API, as the cluster's admin (static token)."""

    server: str
    token: str
    ca: Path
    # The driver's processes' metrics (host network): the controller's, each node plugin's.
    metrics_ports: tuple[int, ...]
    # The nodes' pod-log folders, where the driver's containers' logs are (``driver_rpcs``).
    pod_logs: tuple[Path, ...] = ()
    client: aiohttp.ClientSession = field(init=False)

    def __post_init__(self) -> None:
        # Made in the round's event loop (``_run_round``), which also closes it.
        self.client = aiohttp.ClientSession(
            base_url=self.server,
            headers={"Authorization": f"Bearer {self.token}"},
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(self.ca))),
            trust_env=False,  # no proxy: everything is on 127.0.0.1
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=30.0),
            read_bufsize=1 << 20,  # a watch event is one line, a pod's can be tens of kilobytes
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def list(self, path: str, **params: str) -> Any:
        async with self.client.get(path, params=params) as answer:
            answer.raise_for_status()
            return await answer.json()

    async def create(self, path: str, obj: Mapping[str, Any]) -> None:
        async with self.client.post(path, json=obj) as answer:
            if answer.status >= 400:
                text = await answer.text()
                raise RuntimeError(f"POST {path}: {answer.status} {text[:500]}")

    async def delete(self, path: str) -> None:
        """DELETE one object, gracefully (its pod's own terminationGracePeriodSeconds)."""
        async with self.client.delete(path) as answer:
            if answer.status >= 400:
                text = await answer.text()
                raise RuntimeError(f"DELETE {path}: {answer.status} {text[:500]}")

    async def delete_labelled(self, path: str) -> None:
        params = {"labelSelector": f"{LABEL}=1"}
        async with self.client.delete(path, params=params) as answer:
            answer.raise_for_status()

    async def watch(
        self, path: str, on_event: Callable[[str, Any, float], None], ready: asyncio.Event
    ) -> None:
        """Follow ``path`` from now: ``on_event(type, object, monotonic arrival time)``; ``ready``
        is set once the watch is established."""
        rv = (await self.list(path))["metadata"]["resourceVersion"]
        params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "900"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=None)
        async with self.client.get(path, params=params, timeout=timeout) as answer:
            answer.raise_for_status()
            ready.set()
            async for line in answer.content:  # one event a line
                if line.strip():
                    event = json.loads(line)
                    on_event(event["type"], event["object"], time.monotonic())

    async def scrape(self) -> Requests:
        """The driver's figures: its processes' metrics, on 127.0.0.1 (host network)."""
        total = Requests({}, {}, {})
        timeout = aiohttp.ClientTimeout(total=30.0)
        async with aiohttp.ClientSession(trust_env=False, timeout=timeout) as plain:
            for port in self.metrics_ports:
                async with plain.get(f"http://127.0.0.1:{port}/metrics") as answer:
                    answer.raise_for_status()
                    total += parse_metrics(await answer.text())
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


# Kube's: server, token, CA, metrics ports, pod-log folders
KubeArgs = tuple[str, str, Path, tuple[int, ...], tuple[Path, ...]]


async def _established(watches: Iterable[tuple[asyncio.Task[None], asyncio.Event]]) -> None:
    """Each watch established within 30 s; what made one fail, raised."""
    for w, r in watches:
        established = asyncio.create_task(r.wait())
        await asyncio.wait([w, established], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        established.cancel()
        if w.done():
            w.result()  # raises what failed
        if not r.is_set():
            raise TimeoutError("a watch on the API server was not established in 30 s")


async def _stop(watches: Iterable[asyncio.Task[None]]) -> None:
    for w in watches:
        w.cancel()
    for w in watches:
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await w


async def _until(event: asyncio.Event, watch: asyncio.Task[None], within: float, what: str) -> None:
    """Wait for ``event`` (set by ``watch``'s events): TimeoutError naming ``what`` after
    ``within`` seconds; what ended the watch, if it ended first."""
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait([waiter, watch], timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if event.is_set():
        return
    if watch.done():
        watch.result()  # raises what failed
        raise RuntimeError(f"the watch on the API server ended before {what}")
    raise TimeoutError(f"{what}: not seen in {within:.0f} s")


async def _round(kube: Kube, tag: str, count: int, node: str) -> Measured:
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
        await _established(zip(watches, ready, strict=True))
        before = await kube.scrape()

        async def one(name: str) -> None:
            await kube.create(PVCS, pvc_object(name))
            await kube.create(PODS, pod_object(name, name, node=node))

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
        await _stop(watches)
    return Measured(
        summarize(created, running),
        chain_of(before, after, count),
        rpc_per_volume(before, after, count),
    )


_R = TypeVar("_R")


async def _in_session(
    kube_args: KubeArgs,
    tag: str,
    work: Callable[[Kube], Awaitable[_R]],
    summary: Callable[[_R], str],
) -> _R:
    """``work`` with a client of its own, its result logged with ``summary``, then everything
    it made deleted (timed and logged), the client closed whatever happened."""
    kube = Kube(*kube_args)
    try:
        got = await work(kube)
        log(f"{tag}: {summary(got)}")
        started = time.monotonic()
        await _clean(kube)
        log(f"{tag}: cleaned up in {time.monotonic() - started:.1f} s")
        return got
    finally:
        await kube.aclose()


async def _run_round(kube_args: KubeArgs, tag: str, count: int, node: str) -> Measured:
    return await _in_session(
        kube_args,
        tag,
        lambda kube: _round(kube, tag, count, node),
        lambda got: (
            f"{count} pods on {node}, median {got.round.median:.2f} s, slowest "
            f"{got.round.slowest:.2f} s, wall {got.round.wall:.2f} s; chain "
            f"{got.chain.describe()}; driver per volume: {got.describe_rpc()}"
        ),
    )


def status_text(obj: Mapping[str, Any]) -> str:
    """A pod's phase, conditions that are not True and containers' waiting or ended states, in
    one line (for a timeout's message)."""
    status = obj.get("status") or {}
    parts = [f"phase {status.get('phase')}"]
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            parts.append(f"{c.get('type')} {c.get('reason') or ''} {c.get('message') or ''}")
    for c in status.get("containerStatuses") or []:
        for state, detail in (c.get("state") or {}).items():
            if state != "running":
                parts.append(f"container {state} {(detail or {}).get('reason') or ''}")
    return "; ".join(" ".join(p.split()) for p in parts)


async def _switch(kube: Kube, old: str, new: Mapping[str, Any], node: str) -> tuple[float, float]:
    """Pod ``old`` deleted and, at the same instant, ``new`` created, pinned to ``node``: the
    seconds from just before the two requests to the arrival of the first event showing
    ``new`` Running there, and the wall-clock time of that start. Returns once ``new`` is Ready
    (its work done) and ``old`` gone."""
    name = new["metadata"]["name"]
    running: list[float] = []
    problems: list[str] = []
    last: dict[str, Any] = {}
    seen_running, seen_ready, old_gone = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def ended(why: str) -> None:
        problems.append(why)
        seen_running.set()
        seen_ready.set()

    def on_pod(kind: str, obj: Any, at: float) -> None:
        who = obj["metadata"]["name"]
        if who == old and kind == "DELETED":
            old_gone.set()
        if who != name:
            return
        last.update(obj)
        if kind == "DELETED":
            ended(f"{name} was deleted")
        elif pod_failed(obj):
            ended(f"{name} ended instead of running (its work failed?): {status_text(obj)}")
        elif pod_running(obj):
            if not running:
                running.append(at)
                seen_running.set()
                if pod_node(obj) != node:
                    ended(f"{name} runs on {pod_node(obj)}, not on {node}")
            if pod_ready(obj):
                seen_ready.set()

    ready = asyncio.Event()
    watch = asyncio.create_task(kube.watch(PODS, on_pod, ready))
    try:
        await _established([(watch, ready)])
        started, wall = time.monotonic(), time.time()
        await asyncio.gather(kube.delete(f"{PODS}/{old}"), kube.create(PODS, new))
        try:
            await _until(seen_running, watch, ROUND_TIMEOUT, f"{name} Running on {node}")
            await _until(seen_ready, watch, READY_TIMEOUT, f"{name} Ready (its work done)")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} ({status_text(last)})") from None
        if problems:
            raise RuntimeError("; ".join(problems))
        await _until(old_gone, watch, GONE_TIMEOUT, f"{old} gone")
    finally:
        await _stop([watch])
    return running[0] - started, wall


async def _wait_ready(kube: Kube, names: Iterable[str], within: float = ROUND_TIMEOUT) -> None:
    """Every pod of ``names`` Ready; RuntimeError when one ended, TimeoutError after ``within``."""
    deadline = time.monotonic() + within
    for name in names:
        while True:
            obj = await kube.list(f"{PODS}/{name}")
            if pod_failed(obj):
                raise RuntimeError(f"{name} ended instead of running: {status_text(obj)}")
            if pod_ready(obj):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not Ready after {within:.0f} s: {status_text(obj)}")
            await asyncio.sleep(0.5)


async def _moves(kube: Kube, tag: str, nodes: Sequence[str]) -> Moves:
    """The move round (the module's docstring): a pod without a volume and a pod with one on
    the first node, then ``MOVES`` moves between the two, each pod's in turn."""
    plan = move_plan(nodes)
    token = secrets.token_hex(8)
    claim = f"{tag}-data"

    def without_volume(i: int, node: str) -> dict[str, Any]:
        return pod_object(f"{tag}-ref-{i}", None, node=node, work="true")

    def with_volume(i: int, node: str) -> dict[str, Any]:
        work = write_token(token) if i == 0 else find_token(token)
        return pod_object(f"{tag}-vol-{i}", claim, node=node, work=work)

    first = plan[0][0]
    await kube.create(PVCS, pvc_object(claim))
    await kube.create(PODS, without_volume(0, first))
    await kube.create(PODS, with_volume(0, first))
    await _wait_ready(kube, [f"{tag}-ref-0", f"{tag}-vol-0"])
    runs = []
    for i, (source, target) in enumerate(plan, start=1):
        reference, _ = await _switch(kube, f"{tag}-ref-{i - 1}", without_volume(i, target), target)
        before = await kube.scrape()
        move, wall = await _switch(kube, f"{tag}-vol-{i - 1}", with_volume(i, target), target)
        after = await kube.scrape()
        rpcs = await asyncio.to_thread(driver_rpcs, kube.pod_logs)
        run = MoveRun(
            source,
            target,
            reference,
            move,
            op_time(before, after, DETACH),
            op_time(before, after, ATTACH),
            rpc_per_volume(before, after, 1, MOVE_RPCS),
            move_phases(rpcs, wall, wall + move),
        )
        runs.append(run)
        rpc = ", ".join(f"{m} {s:.2f}" for m, s in run.rpc.items())
        log(
            f"{tag} {i}: {source} -> {target}: without a volume {reference:.2f} s, with its "
            f"volume {move:.2f} s (data found there); detach {num(run.detach.count)} x "
            f"{run.detach.mean * 1000:.0f} ms, attach {num(run.attach.count)} x "
            f"{run.attach.mean * 1000:.0f} ms; driver s: {rpc}"
            f"{Moves((run,)).describe_phases()}"
        )
    return Moves(tuple(runs))


async def _run_moves(kube_args: KubeArgs, tag: str, nodes: Sequence[str]) -> Moves:
    return await _in_session(
        kube_args,
        tag,
        lambda kube: _moves(kube, tag, nodes),
        lambda got: f"{got.ratio:.2f} x (Kubernetes' own + detach + attach): {got.describe()}",
    )


# ---- the step ---------------------------------------------------------------------------------


@dataclass
class Figures:
    """The pods rounds' figures."""

    by_hand: float
    pods: int
    allocatable: int | None
    zero_one: Measured
    zero_many: Measured
    real_one: Measured
    real_many: Measured


@dataclass
class Measurements:
    """What the step measured: the rounds it ran (``rounds``), None for the others."""

    pods: Figures | None = None
    zero_move: Moves | None = None
    real_move: Moves | None = None


def _latency_args() -> tuple[str, ...]:
    return ("--op-latency-ms", OP_LATENCY)  # the burst's (scripts/bench_load.py)


def latency_label() -> str:
    (m_low, m_high), (r_low, r_high) = MUTATION_MS, READ_MS
    return f"Oxide mutations {m_low:.0f}-{m_high:.0f} ms, reads {r_low:.0f}-{r_high:.0f} ms"


MOVE_ROW = "move: pod deleted on A -> Running on B with its volume"


def measure(workdir: Path, asked: int = ASKED_PODS, rounds: Iterable[str] = ROUNDS) -> Measurements:
    """Everything, from the builds to the teardown (which always runs and must leave nothing)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # tests/e2e: the cluster and the install of make e2e
    from tests.e2e.cluster import Cluster, Tools, free_port
    from tests.e2e.stack import (
        Sim,
        cluster_images,
        import_everywhere,
        install_driver,
        install_snapshot_support,
        loops_backed_by,
        track,
    )

    wanted = frozenset(rounds)
    by_hand = 0.0
    if "pods" in wanted:
        by_hand = statistics.median(by_hand_seconds(workdir, GIB, direct_io=True) for _ in range(3))
        log(f"mkfs.ext4 + mount by hand, 1 GiB loop device: {by_hand * 1000:.0f} ms (median of 3)")
    started = time.monotonic()
    tools = Tools.build()
    cluster = Cluster(tools, NODES)
    sims: list[Sim] = []
    problems: list[str] = []
    got = Measurements()

    def start_sim(name: str, extra: tuple[str, ...] = ()) -> Sim:
        """The simulated rack, one local instance per node, in the cluster's ledger (as make
        e2e's: a killed run's successor cleans it up)."""
        sim = Sim(
            workdir / name, hotplug=True, port=free_port(), extra=extra, local_instances=NODES
        )
        cluster.ledger.record_dir(sim.state)  # before any loop device exists
        sims.append(sim)
        sim.start()
        track(cluster, sim)
        return sim

    def install(sim: Sim, run: str) -> KubeArgs:
        """The driver against ``sim``; the API server's address and the metrics ports of the
        controller and of each node's node plugin (read back from its DaemonSet)."""
        ports = (free_port(), free_port())
        install_driver(cluster, sim, ports, run=run)
        plugins = tuple(
            metrics_port_of(cluster.get("daemonset", "-n", "kube-system", f"csi-oxide-node{n.tag}"))
            for n in cluster.nodes
        )
        server = f"https://127.0.0.1:{cluster.api_port}"
        ca = cluster.state / "pki" / "ca.crt"
        logs = tuple(n.pod_logs for n in cluster.nodes)
        return (server, cluster.admin_token, ca, (ports[0], *plugins), logs)

    try:
        out = workdir / "images"
        out.mkdir()
        built = cluster_images(tools, out)
        cluster.start(import_everywhere(built))
        install_snapshot_support(cluster, tools)
        names = [n.name for n in cluster.nodes]
        a, b = names[0], names[1]
        zero = start_sim("sim-zero")
        kube = install(zero, "bench-zero")
        log(
            f"cluster of {len(names)} nodes (A {a}, B {b}) up, driver installed in "
            f"{time.monotonic() - started:.0f} s"
        )
        allocatable = allocatable_of(cluster.get("csinode", a))
        pods = effective_pods(asked, allocatable)
        # Each node's first pod unpacks the images and is its node plugin's first volume.
        asyncio.run(_run_round(kube, "warm", 1, a))
        asyncio.run(_run_round(kube, "warm-b", 1, b))
        if "pods" in wanted:
            log(f"{pods} pods at once on {a} ({asked} asked; its attach limit is {allocatable})")
            zero_one = asyncio.run(_run_round(kube, "zero-one", 1, a))
            zero_many = asyncio.run(_run_round(kube, "zero-many", pods, a))
        if "move" in wanted:
            got.zero_move = asyncio.run(_run_moves(kube, "zero-move", names))
        zero.stop()
        real = start_sim("sim-real", _latency_args())
        kube = install(real, "bench-real")
        if "pods" in wanted:
            real_one = asyncio.run(_run_round(kube, "real-one", 1, a))
            real_many = asyncio.run(_run_round(kube, "real-many", pods, a))
            got.pods = Figures(by_hand, pods, allocatable, zero_one, zero_many, real_one, real_many)
        if "move" in wanted:
            got.real_move = asyncio.run(_run_moves(kube, "real-move", names))
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
    return got


def report_pods(f: Figures, row: Row, asked: int = ASKED_PODS) -> None:
    """The two rows of the pods rounds: one pod alone, and the pods at once."""
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


def move_row(
    moves: Moves, *, goal: bool, zero: Moves | None = None
) -> tuple[str, str, str, Verdict]:
    """The move round's row: its name, figure, goal and verdict; at latency (``goal``) judged
    against ``MOVE_GOAL`` (with ``zero``, the zero-latency moves' median beside it), at zero
    latency shown for context (no goal, but still INVALID when a run is an outlier)."""
    label = latency_label() if goal else "zero latency, for context"
    beside = (
        ""
        if zero is None
        else f"; at zero latency the same moves take {seconds_text(zero.moved.median)}"
    )
    return (
        f"{MOVE_ROW} ({label})",
        f"{moves.ratio:.2f} x (Kubernetes' own + Oxide detach + attach) ({moves.describe()}"
        f"{beside})",
        MOVE_GOAL if goal else "none (context for the row at latency)",
        moves.verdict(goal=goal),
    )


def report(m: Measurements, row: Row, asked: int = ASKED_PODS) -> None:
    """The rows of the rounds that ran."""
    if m.pods is not None:
        report_pods(m.pods, row, asked)
    if m.real_move is not None:
        row(*move_row(m.real_move, goal=True, zero=m.zero_move))
    if m.zero_move is not None:
        row(*move_row(m.zero_move, goal=False))


def row_names(rounds: Iterable[str]) -> list[tuple[str, str]]:
    """The rows (name, goal) the step stands for with ``rounds``: what it prints when it cannot
    measure (skipped, failed)."""
    wanted = set(rounds)
    names = [("pods: PVC -> Running on the cluster", GOAL)] if "pods" in wanted else []
    if "move" in wanted:
        names.append((f"{MOVE_ROW} ({latency_label()})", MOVE_GOAL))
    return names


def pods_step(
    workdir: Path, row: Row, asked: int = ASKED_PODS, rounds: Iterable[str] = ROUNDS
) -> None:
    """The bench step (blocking: run it in a thread from an event loop): the pods rounds and the
    move rounds, or those of ``rounds`` (``cluster_rounds``)."""
    wanted = frozenset(rounds)

    def every(figure: str, met: bool | None) -> None:
        for name, goal in row_names(wanted):
            row(name, figure, goal, met)

    reason = skip_reason(os.geteuid(), Path("/dev/loop-control").exists())
    if reason is not None:
        every(f"skipped: {reason}", None)
        return
    try:
        got = measure(workdir, asked, wanted)
    except subprocess.CalledProcessError as exc:
        if "build_tools" in " ".join(map(str, exc.cmd)):
            every(
                "skipped: the cluster tools (.tools/cluster) are absent and "
                f"scripts/cluster/build_tools.py could not build them (exit {exc.returncode})",
                None,
            )
            return
        traceback.print_exc()
        every(f"failed: {exc}", False)
        return
    except Exception as exc:  # noqa: BLE001 - the bench goes on; the row says what failed
        traceback.print_exc()
        every(f"failed: {exc}"[:300], False)
        return
    report(got, row, asked)
