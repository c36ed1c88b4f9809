"""The driver in a real one-node Kubernetes: PVCs used by real pods, checked in Kubernetes and on
the rack.

The cluster (tests/e2e/cluster.py) runs kube-apiserver, controller-manager, scheduler and kubelet
built from Kubernetes v1.34, containerd, the kubernetes-csi sidecars built from their modules, and
the driver's image built from the project's Dockerfile; the driver is installed from
deploy/kubernetes/base through the test overlay (tests/e2e/overlay.py) against the simulated Oxide
API with loop-device backing. One ordered test: each scenario builds on the one before; a line per
scenario gives its result and time.

Opt-in: root and CSI_OXIDE_E2E=1 (`make e2e`, and `make test` as root). The first run builds the
Kubernetes binaries (cached under .tools/cluster by version).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import images
from tests.e2e.cluster import Cluster, Tools, free_port, log, wait_for
from tests.e2e.stack import (
    Sim,
    cluster_images,
    install_driver,
    install_snapshot_support,
    loops_backed_by,
)

ROOT = Path(__file__).resolve().parents[2]
NS = "default"
GI = 1024**3

pytestmark = [
    pytest.mark.root,
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("CSI_OXIDE_E2E") != "1",
        reason="opt-in: CSI_OXIDE_E2E=1 (make e2e; make test runs it as root)",
    ),
    pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() != 0,
        reason="the Kubernetes cluster test needs root (containerd, kubelet, loop devices)",
    ),
]


# ---- reporting ------------------------------------------------------------------------------


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        log(f"scenario: {name} ...")
        try:
            yield
        except BaseException:
            self._line("FAIL", name, started)
            raise
        self._line("PASS", name, started)

    def _line(self, result: str, name: str, started: float) -> None:
        line = f"[e2e] {result} {name} ({time.monotonic() - started:.1f} s)"
        self.lines.append(line)
        print(line, flush=True)


class MemoryPeak:
    """Peak resident memory of the cluster and the driver: every process this test started (etcd,
    the Kubernetes components, containerd, the simulator, this process), the containerd shims, and
    the kubelet's pod cgroups (the driver's and test pods' containers). Sampled every second."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _used() -> int:
        me = os.getpid()
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        shims: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                pid = int(entry.name)
                parents[pid] = int(fields[1])
                rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
                if b"containerd-shim" in (entry / "cmdline").read_bytes()[:200]:
                    shims.add(pid)
        total = 0
        for pid, size in rss.items():
            walk, seen = pid, 0
            while walk > 1 and walk != me and seen < 64:
                walk, seen = parents.get(walk, 0), seen + 1
            if walk == me or pid in shims:
                total += size
        stat_file = Path("/sys/fs/cgroup/memory/kubepods/memory.stat")
        with contextlib.suppress(OSError):
            for line in stat_file.read_text().splitlines():
                key, value = line.split()
                if key == "total_rss":
                    total += int(value)
        return total

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.peak = max(self.peak, self._used())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# ---- objects --------------------------------------------------------------------------------


def pvc(name: str, size: str, *, block: bool = False, source: dict[str, str] | None = None) -> Any:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "oxide-disk",
        "resources": {"requests": {"storage": size}},
    }
    if block:
        spec["volumeMode"] = "Block"
    if source is not None:
        spec["dataSource"] = source
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


# The pod's program: do the work, then mark itself ready, then wait for SIGTERM (and stop at once).
def _script(work: str) -> str:
    return (
        "trap 'exit 0' TERM INT; "
        f"if {{ {work} ; }}; then touch /tmp/done; else echo WORK FAILED; exit 1; fi; "
        "while :; do sleep 1 & wait $!; done"
    )


def pod_spec(work: str, *, block: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": "busybox:1.37",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", _script(work)],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/done"]}, "periodSeconds": 1},
    }
    if block:
        container["volumeDevices"] = [{"name": "data", "devicePath": "/dev/xvda"}]
    else:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return {
        "terminationGracePeriodSeconds": 10,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "containers": [container],
    }


def pod(name: str, claim: str, work: str, *, block: bool = False) -> Any:
    spec = pod_spec(work, block=block)
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


# ---- waiting and checking -------------------------------------------------------------------


@dataclass
class World:
    cluster: Cluster
    sim: Sim
    report: Report

    def wait_pod_ready(self, name: str, timeout: float = 180) -> Any:
        def ready() -> bool:
            p = self.cluster.get("pod", "-n", NS, name)
            if p is None:
                return False
            for status in p["status"].get("containerStatuses", []):
                term = status["state"].get("terminated")
                if term is not None:
                    raise AssertionError(
                        f"pod {name} ended ({term.get('exitCode')}): "
                        + self.cluster.pod_log(NS, name, "app")[-2000:]
                    )
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )

        try:
            wait_for(f"pod {name} ready", ready, timeout, interval=1)
        except TimeoutError:
            raise AssertionError(self.explain(name)) from None
        return self.cluster.get("pod", "-n", NS, name)

    def explain(self, pod_name: str) -> str:
        events = self.cluster.kubectl(
            "get", "events", "-A", "--sort-by=.lastTimestamp", check=False
        )
        vas = self.cluster.kubectl("describe", "volumeattachments", check=False)
        return (
            f"pod {pod_name} not ready\n--- events\n{events.stdout[-4000:]}\n"
            f"--- volumeattachments\n{vas.stdout[-3000:]}\n{self.cluster.diagnostics()}"
        )

    def delete(self, *what: str, timeout: float = 180) -> None:
        self.cluster.kubectl("delete", "-n", NS, "--wait=true", f"--timeout={int(timeout)}s", *what)

    def pv_of(self, claim: str) -> Any:
        c = self.cluster.get("pvc", "-n", NS, claim)
        assert c is not None and c["status"]["phase"] == "Bound", f"{claim} not bound: {c}"
        return self.cluster.get("pv", c["spec"]["volumeName"])

    def volume_path(self, p: Any, pv_name: str) -> Path:
        """Where the kubelet mounted a pod's volume on the host."""
        uid: str = p["metadata"]["uid"]
        return (
            self.cluster.kubelet_dir
            / "pods"
            / uid
            / "volumes"
            / "kubernetes.io~csi"
            / pv_name
            / "mount"
        )

    def attachment(self, pv_name: str) -> Any:
        for va in self.cluster.get("volumeattachments")["items"]:
            if va["spec"]["source"].get("persistentVolumeName") == pv_name:
                return va
        return None

    def wait_detached(self, disk: str, timeout: float = 120) -> None:
        wait_for(
            f"disk {disk} detached on the rack", lambda: disk not in self.sim.attached(), timeout
        )


def mount_source(path: Path) -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[fields.index("-") + 2]
    return None


def loop_backing(device: str) -> str:
    name = Path(device).name
    return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()


def assert_on_disk(world: World, p: Any, claim: str, file: str, token: str) -> Any:
    """The pod's volume is the claim's disk, attached on the rack, holding ``token`` in ``file``."""
    pv = world.pv_of(claim)
    disk = pv["spec"]["csi"]["volumeHandle"]
    assert pv["spec"]["csi"]["driver"] == "csi.oxide.computer"
    va = world.attachment(pv["metadata"]["name"])
    assert va is not None and va["status"]["attached"] is True, va
    assert disk in world.sim.attached(), f"{disk} not attached to the node's instance"
    where = world.volume_path(p, pv["metadata"]["name"])
    source = mount_source(where)
    assert source is not None, f"nothing mounted at {where}"
    assert Path(loop_backing(source)).name.startswith(disk), (source, disk)
    assert (where / file).read_text().strip() == token
    return pv


# ---- the scenarios --------------------------------------------------------------------------


def check_provision_and_write(world: World) -> dict[str, str]:
    token = secrets.token_hex(8)
    world.cluster.apply(
        [pvc("data", "2Gi"), pod("writer", "data", f"echo {token} > /data/hello && sync")]
    )
    p = world.wait_pod_ready("writer")
    pv = assert_on_disk(world, p, "data", "hello", token)
    disk = pv["spec"]["csi"]["volumeHandle"]
    rack = world.sim.disks()[disk]
    assert rack.size == 2 * GI
    assert rack.instance_id == world.sim.env["CSI_OXIDE_NODE_ID"]
    return {"token": token, "disk": disk, "pv": pv["metadata"]["name"]}


def check_recreate(world: World, s: dict[str, str]) -> None:
    world.delete("pod/writer")
    world.wait_detached(s["disk"])
    wait_for("VolumeAttachment deleted", lambda: world.attachment(s["pv"]) is None, 60)
    world.cluster.apply([pod("reader", "data", f"grep -qx {s['token']} /data/hello")])
    p = world.wait_pod_ready("reader")
    assert_on_disk(world, p, "data", "hello", s["token"])


def check_offline_expansion(world: World, s: dict[str, str]) -> None:
    world.delete("pod/reader")
    world.wait_detached(s["disk"])
    world.cluster.kubectl(
        "patch", "pvc", "-n", NS, "data", "--type=merge",
        "-p", json.dumps({"spec": {"resources": {"requests": {"storage": "3Gi"}}}}),
    )  # fmt: skip

    def pv_grown() -> bool:
        pv = world.cluster.get("pv", s["pv"])
        return bool(pv["spec"]["capacity"]["storage"] == "3Gi")

    wait_for("PV capacity 3Gi (controller expansion)", pv_grown, 180, interval=1)
    assert world.sim.disks()[s["disk"]].size == 3 * GI
    world.cluster.apply(
        [pod("grown", "data", f"grep -qx {s['token']} /data/hello && df -k /data > /tmp/df")]
    )
    p = world.wait_pod_ready("grown")
    where = assert_on_disk(world, p, "data", "hello", s["token"])
    st = os.statvfs(world.volume_path(p, where["metadata"]["name"]))
    assert st.f_blocks * st.f_frsize > 2.5 * GI, "the filesystem did not grow"

    def claim_grown() -> bool:
        c = world.cluster.get("pvc", "-n", NS, "data")
        return bool(c["status"].get("capacity", {}).get("storage") == "3Gi")

    wait_for("PVC status capacity 3Gi", claim_grown, 60, interval=1)


def check_snapshot_restore_clone(world: World, s: dict[str, str]) -> None:
    world.delete("pod/grown")
    world.wait_detached(s["disk"])
    world.cluster.apply(
        [
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "metadata": {"name": "data-snap", "namespace": NS},
                "spec": {
                    "volumeSnapshotClassName": "oxide-snapshot",
                    "source": {"persistentVolumeClaimName": "data"},
                },
            }
        ]
    )

    def snap_ready() -> bool:
        snap = world.cluster.get("volumesnapshot", "-n", NS, "data-snap")
        return bool(snap and snap.get("status", {}).get("readyToUse") is True)

    wait_for("VolumeSnapshot readyToUse", snap_ready, 180, interval=1)
    snap = world.cluster.get("volumesnapshot", "-n", NS, "data-snap")
    content = world.cluster.get(
        "volumesnapshotcontent", snap["status"]["boundVolumeSnapshotContentName"]
    )
    handle = content["status"]["snapshotHandle"]
    assert handle in world.sim.snapshots(), f"snapshot {handle} not on the rack"
    world.cluster.apply(
        [
            pvc(
                "restored",
                "4Gi",
                source={
                    "name": "data-snap",
                    "kind": "VolumeSnapshot",
                    "apiGroup": "snapshot.storage.k8s.io",
                },
            ),
            pvc("cloned", "3Gi", source={"name": "data", "kind": "PersistentVolumeClaim"}),
            pod("restored-reader", "restored", f"grep -qx {s['token']} /data/hello"),
            pod("cloned-reader", "cloned", f"grep -qx {s['token']} /data/hello"),
        ]
    )
    for name, claim, size in (("restored-reader", "restored", 4), ("cloned-reader", "cloned", 3)):
        p = world.wait_pod_ready(name)
        pv = assert_on_disk(world, p, claim, "hello", s["token"])
        disk = world.sim.disks()[pv["spec"]["csi"]["volumeHandle"]]
        assert disk.size == size * GI
        assert disk.name != s["disk"]
    world.delete("pod/restored-reader", "pod/cloned-reader")


def check_raw_block(world: World) -> None:
    token = secrets.token_hex(8)
    world.cluster.apply(
        [
            pvc("raw", "1Gi", block=True),
            pod(
                "raw-user",
                "raw",
                f"echo {token} > /dev/xvda && sync && head -c 16 /dev/xvda | grep -q {token}",
                block=True,
            ),
        ]
    )
    world.wait_pod_ready("raw-user")
    pv = world.pv_of("raw")
    assert pv["spec"]["volumeMode"] == "Block"
    disk = pv["spec"]["csi"]["volumeHandle"]
    assert disk in world.sim.attached()
    va = world.attachment(pv["metadata"]["name"])
    assert va is not None and va["status"]["attached"] is True
    backing = Path(world.sim.env["CSI_OXIDE_SIM_DEVICE_DIR"])
    files = [f for f in backing.iterdir() if f.name.startswith(disk)]
    assert len(files) == 1, files
    with files[0].open("rb") as f:
        assert f.read(16).decode(errors="replace").startswith(token)
    world.delete("pod/raw-user")


def check_statefulset(world: World) -> None:
    sts: Any = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": pod_spec(
                    'if [ -f /data/id ]; then grep -qx "$(hostname)" /data/id; '
                    "else hostname > /data/id && sync; fi"
                ),
            },
            "volumeClaimTemplates": [pvc("data", "1Gi")],
        },
    }
    sts["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    sts["spec"]["volumeClaimTemplates"][0]["metadata"].pop("namespace")
    world.cluster.apply([sts])
    for name in ("web-0", "web-1"):
        world.wait_pod_ready(name)
    disks = {world.pv_of(f"data-web-{i}")["spec"]["csi"]["volumeHandle"] for i in range(2)}
    assert disks <= world.sim.attached()
    world.cluster.kubectl("scale", "-n", NS, "statefulset/web", "--replicas=0")
    wait_for(
        "web pods gone",
        lambda: (
            world.cluster.get("pod", "-n", NS, "web-0") is None
            and world.cluster.get("pod", "-n", NS, "web-1") is None
        ),
        120,
    )
    for disk in disks:
        world.wait_detached(disk)
    world.cluster.kubectl("scale", "-n", NS, "statefulset/web", "--replicas=2")
    for name in ("web-0", "web-1"):
        world.wait_pod_ready(name)  # each found its own id file: data intact
    assert disks <= world.sim.attached()


def check_everything_deleted(world: World) -> None:
    world.cluster.kubectl("delete", "-n", NS, "statefulset/web", "--wait=true", "--timeout=120s")
    world.cluster.kubectl("delete", "-n", NS, "pods", "--all", "--wait=true", "--timeout=120s")
    world.cluster.kubectl(
        "delete", "-n", NS, "volumesnapshots", "--all", "--wait=true", "--timeout=120s"
    )
    world.cluster.kubectl("delete", "-n", NS, "pvc", "--all", "--wait=true", "--timeout=180s")
    wait_for("every PV gone", lambda: not world.cluster.get("pv")["items"], 180, interval=1)
    wait_for(
        "every VolumeSnapshotContent gone",
        lambda: not world.cluster.get("volumesnapshotcontents")["items"],
        120,
        interval=1,
    )
    wait_for(
        "every VolumeAttachment gone",
        lambda: not world.cluster.get("volumeattachments")["items"],
        120,
    )
    assert world.sim.disks() == {}
    assert world.sim.snapshots() == {}
    assert world.sim.attached() == set()
    kubelet = str(world.cluster.kubelet_dir)
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(kubelet) and "/loop" in line
    ]
    assert mounts == []
    assert loops_backed_by(world.sim.state) == []


def check_hotplug_off(world: World) -> None:
    world.cluster.apply([pvc("today", "1Gi"), pod("today-user", "today", "true")])

    def attach_error() -> str | None:
        c = world.cluster.get("pvc", "-n", NS, "today")
        if c is None or c["status"].get("phase") != "Bound":
            return None
        va = world.attachment(c["spec"]["volumeName"])
        if va is None:
            return None
        err = va.get("status", {}).get("attachError")
        return None if err is None else str(err["message"])

    wait_for("the attach error", lambda: attach_error() is not None, 180, interval=1)
    message = attach_error()
    assert message is not None
    assert "FailedPrecondition" in message, message
    assert "hot-plug" in message.lower() or "running" in message.lower(), message
    p = world.cluster.get("pod", "-n", NS, "today-user")
    assert p["status"]["phase"] == "Pending"
    c = world.cluster.get("pvc", "-n", NS, "today")
    va = world.attachment(c["spec"]["volumeName"])
    described = world.cluster.kubectl("describe", "volumeattachment", va["metadata"]["name"]).stdout
    assert "FailedPrecondition" in described
    log(f"VolumeAttachment error: {message}")
    disk = world.pv_of("today")["spec"]["csi"]["volumeHandle"]
    rack = world.sim.disks()[disk]
    assert rack.instance_id is None and not rack.published, rack
    assert world.sim.attached() == set()
    world.delete("pod/today-user")
    world.delete("pvc/today")
    wait_for("every PV gone", lambda: not world.cluster.get("pv")["items"], 180, interval=1)
    wait_for(
        "every VolumeAttachment gone",
        lambda: not world.cluster.get("volumeattachments")["items"],
        120,
    )
    assert world.sim.disks() == {}


# ---- the test -------------------------------------------------------------------------------


def test_the_driver_in_a_one_node_kubernetes() -> None:
    total = time.monotonic()
    memory = MemoryPeak()
    report = Report()
    with report.scenario("build binaries (cached under .tools/cluster)"):
        tools = Tools.build()
    work = Path(tempfile.mkdtemp(prefix="csi-oxide-e2e-work-"))
    cluster = Cluster(tools)
    sims: list[Sim] = []
    problems: list[str] = []
    try:
        with report.scenario("images: driver from the Dockerfile, sidecars, busybox, pause"):
            out = work / "images"
            out.mkdir()
            built = cluster_images(tools, out)
        with report.scenario("cluster up, images imported, driver installed and registered"):
            cluster.start(lambda c: images.import_images(built, c.containerd_sock))
            install_snapshot_support(cluster, tools)
            sim = Sim(work / "sim-hotplug", hotplug=True, port=free_port())
            sims.append(sim)
            sim.start()
            ports = (free_port(), free_port())
            install_driver(cluster, sim, ports, run="hotplug")
        world = World(cluster, sim, report)
        with report.scenario("PVC + pod writing data: PV bound, attached, data on the disk"):
            s = check_provision_and_write(world)
        with report.scenario("pod deleted and re-created: detached, re-attached, data intact"):
            check_recreate(world, s)
        with report.scenario("offline expansion by kubectl patch: bigger PVC and fs, data intact"):
            check_offline_expansion(world, s)
        with report.scenario("snapshot, restore and clone: data intact in both"):
            check_snapshot_restore_clone(world, s)
        with report.scenario("raw block PVC used by a pod"):
            check_raw_block(world)
        with report.scenario("StatefulSet of 2, scaled to 0 and back"):
            check_statefulset(world)
        with report.scenario("everything deleted: no disk, snapshot, mount or loop device left"):
            check_everything_deleted(world)
        with report.scenario("hot-plug off: pod pending, FAILED_PRECONDITION, rack unchanged"):
            sim.stop()
            today = Sim(work / "sim-today", hotplug=False, port=free_port())
            sims.append(today)
            today.start()
            # Host networking: the new pods must not wait for the old ones' ports.
            install_driver(cluster, today, (free_port(), free_port()), run="today")
            world.sim = today
            check_hotplug_off(world)
    finally:
        with report.scenario("teardown: no process, mount, loop device or disk left"):
            for one in sims:
                one.stop()
            problems = cluster.stop()
            for one in sims:
                left = loops_backed_by(one.state)
                problems += [f"loop device {d} still backed by {one.state}" for d in left]
            shutil.rmtree(work, ignore_errors=True)
            assert problems == [], problems
        peak = memory.stop()
        print(
            f"[e2e] total {time.monotonic() - total:.1f} s, "
            f"peak memory of the cluster and driver {peak / 2**20:.0f} MiB",
            flush=True,
        )
        for line in report.lines:
            print(line, flush=True)
