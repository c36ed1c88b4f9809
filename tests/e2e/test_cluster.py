"""The driver in a real two-node Kubernetes: PVCs used by real pods, checked in Kubernetes and on
the rack, and volumes following their pods from one node to the other.

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
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from csi_oxide import DRIVER_NAME, RECONCILER_LEASE
from csi_oxide.contract.volumes import serial_of
from csi_oxide.kube.taint import AGENT_NOT_READY
from csi_oxide.node.devices import UdevDeviceFinder
from csi_oxide_lab.guest.bridge import BridgeThread
from tests import skips
from tests.e2e.cluster import Cluster, Tools, free_port, log, wait_for
from tests.e2e.images import DRIVER_IMAGE
from tests.e2e.stack import (
    Sim,
    cluster_images,
    import_everywhere,
    install_driver,
    install_snapshot_support,
    loops_backed_by,
    registered_id,
    track,
)
from tests.units import GIB

ROOT = Path(__file__).resolve().parents[2]
NS = "default"

pytestmark = [
    pytest.mark.root,
    pytest.mark.e2e,
    # One test: images, a two-node cluster and every scenario (~6 minutes warm, far longer when
    # the images are built for the first time).
    pytest.mark.timeout(3600),
    skips.opt_in("CSI_OXIDE_E2E", "make e2e; make test runs it as root"),
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
    the kubelets' pod cgroups (the driver's and test pods' containers). Sampled every second."""

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
        memory = Path("/sys/fs/cgroup/memory")
        for stat_file in [memory / "kubepods", *memory.glob("csi-oxide-e2e-*/kubepods")]:
            with contextlib.suppress(OSError):
                for line in (stat_file / "memory.stat").read_text().splitlines():
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


def pod_spec(work: str, *, block: bool = False, node: str | None = None) -> dict[str, Any]:
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
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 10,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "containers": [container],
    }
    if node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return spec


def pod(name: str, claim: str, work: str, *, block: bool = False, node: str | None = None) -> Any:
    spec = pod_spec(work, block=block, node=node)
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

    def local_of(self, p: Any) -> int:
        """The number of the node a pod runs on (= its simulated local instance)."""
        names = [n.name for n in self.cluster.nodes]
        return names.index(p["spec"]["nodeName"])

    def volume_path(self, p: Any, pv_name: str) -> Path:
        """Where the kubelet mounted a pod's volume on the host."""
        uid: str = p["metadata"]["uid"]
        return (
            self.cluster.nodes[self.local_of(p)].kubelet_dir
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
    local = world.local_of(p)
    assert disk in world.sim.attached(local), f"{disk} not attached to the node's instance"
    assert va["spec"]["nodeName"] == p["spec"]["nodeName"], va
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
    assert rack.size == 2 * GIB
    assert rack.instance_id == world.sim.node_id(world.local_of(p))
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
    assert world.sim.disks()[s["disk"]].size == 3 * GIB
    world.cluster.apply(
        [pod("grown", "data", f"grep -qx {s['token']} /data/hello && df -k /data > /tmp/df")]
    )
    p = world.wait_pod_ready("grown")
    where = assert_on_disk(world, p, "data", "hello", s["token"])
    st = os.statvfs(world.volume_path(p, where["metadata"]["name"]))
    assert st.f_blocks * st.f_frsize > 2.5 * GIB, "the filesystem did not grow"

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
        assert disk.size == size * GIB
        assert disk.name != s["disk"]
    world.delete("pod/restored-reader", "pod/cloned-reader")


# ---- images and read-only volumes (deploy/kubernetes/examples/images.yaml) ---------------------

IMAGES_EXAMPLE = ROOT / "deploy" / "kubernetes" / "examples" / "images.yaml"


def example_classes() -> list[Any]:
    """The example's VolumeSnapshotClass (snapshots kept as images) and read-only StorageClass,
    applied as a user would."""
    docs = [d for d in yaml.safe_load_all(IMAGES_EXAMPLE.read_text()) if d]
    return [d for d in docs if d["kind"] in ("StorageClass", "VolumeSnapshotClass")]


def volume_snapshot(name: str, klass: str, source: dict[str, str]) -> Any:
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"volumeSnapshotClassName": klass, "source": source},
    }


def from_snapshot(name: str) -> dict[str, str]:
    return {"name": name, "kind": "VolumeSnapshot", "apiGroup": "snapshot.storage.k8s.io"}


def snapshot_handle(world: World, name: str) -> str:
    """The handle of VolumeSnapshot ``name`` once it is ready to use."""

    def ready() -> bool:
        snap = world.cluster.get("volumesnapshot", "-n", NS, name)
        return bool(snap and snap.get("status", {}).get("readyToUse") is True)

    wait_for(f"VolumeSnapshot {name} readyToUse", ready, 180, interval=1)
    snap = world.cluster.get("volumesnapshot", "-n", NS, name)
    content = world.cluster.get(
        "volumesnapshotcontent", snap["status"]["boundVolumeSnapshotContentName"]
    )
    return str(content["status"]["snapshotHandle"])


def golden_content(image: str) -> Any:
    """A pre-provisioned VolumeSnapshotContent naming an image made outside Kubernetes."""
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": f"{image}-content"},
        "spec": {
            "deletionPolicy": "Retain",
            "driver": "csi.oxide.computer",
            "volumeSnapshotClassName": "oxide-image",
            "source": {"snapshotHandle": image},
            "volumeSnapshotRef": {"name": "golden", "namespace": NS},
        },
    }


# The read-only pod: the data is there, a write fails with EROFS, the data is still there.
EROFS_CHECK = (
    "grep -qx {token} /data/hello && ! {{ echo overwritten > /data/hello; }} 2>/tmp/err "
    "&& grep -q 'Read-only file system' /tmp/err && grep -qx {token} /data/hello"
)


def check_images_and_read_only(world: World, s: dict[str, str]) -> None:
    """A snapshot kept as an image, a volume and a read-only volume restored from it, and a
    golden image made outside Kubernetes restored through a pre-provisioned content."""
    token = s["token"]
    world.cluster.apply(example_classes())
    snapshots_before = set(world.sim.snapshots())
    world.cluster.apply(
        [volume_snapshot("data-image", "oxide-image", {"persistentVolumeClaimName": "data"})]
    )
    handle = snapshot_handle(world, "data-image")
    image = world.sim.images().get(handle)
    assert handle.startswith("img-") and image is not None, (handle, world.sim.images())
    assert set(world.sim.snapshots()) == snapshots_before, "the snapshot behind it was left"
    golden = world.sim.operator_image("img-golden", s["disk"])
    world.cluster.apply(
        [
            golden_content("img-golden"),
            volume_snapshot(
                "golden", "oxide-image", {"volumeSnapshotContentName": "img-golden-content"}
            ),
        ]
    )
    assert snapshot_handle(world, "golden") == "img-golden"
    read_only = pvc("read-only", f"{image.size // GIB}Gi", source=from_snapshot("data-image"))
    read_only["spec"]["storageClassName"] = "oxide-disk-read-only"
    world.cluster.apply(
        [
            pvc("from-image", f"{image.size // GIB + 1}Gi", source=from_snapshot("data-image")),
            pvc("from-golden", f"{golden.size // GIB}Gi", source=from_snapshot("golden")),
            read_only,
            pod("image-reader", "from-image", f"grep -qx {token} /data/hello"),
            pod("golden-reader", "from-golden", f"grep -qx {token} /data/hello"),
            pod("read-only-writer", "read-only", EROFS_CHECK.format(token=token)),
        ]
    )
    for name, claim, source in (
        ("image-reader", "from-image", image),
        ("golden-reader", "from-golden", golden),
        ("read-only-writer", "read-only", image),
    ):
        p = world.wait_pod_ready(name)
        pv = assert_on_disk(world, p, claim, "hello", token)
        disk = world.sim.disks()[pv["spec"]["csi"]["volumeHandle"]]
        assert disk.image_id == source.id, (claim, disk)
        assert disk.read_only is (claim == "read-only"), (claim, disk)
    disk = world.sim.disks()[world.pv_of("read-only")["spec"]["csi"]["volumeHandle"]]
    assert disk.size == image.size, "a read-only disk is exactly its source's size"
    world.delete("pod/image-reader", "pod/golden-reader", "pod/read-only-writer")
    world.delete("pvc/from-image", "pvc/from-golden", "pvc/read-only")
    world.delete("volumesnapshot/data-image", "volumesnapshot/golden")
    wait_for("the driver's image deleted", lambda: handle not in world.sim.images(), 120)
    world.cluster.kubectl("delete", "volumesnapshotcontent", "img-golden-content", "--wait=true")
    assert "img-golden" in world.sim.images(), "the driver deleted an image it did not make"
    world.sim.remove_operator_image("img-golden")


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
    p = world.wait_pod_ready("raw-user")
    pv = world.pv_of("raw")
    assert pv["spec"]["volumeMode"] == "Block"
    disk = pv["spec"]["csi"]["volumeHandle"]
    assert disk in world.sim.attached()
    va = world.attachment(pv["metadata"]["name"])
    assert va is not None and va["status"]["attached"] is True
    backing = world.sim.device_dir(world.local_of(p))
    files = [f for f in backing.iterdir() if f.name.startswith(disk)]
    assert len(files) == 1, files
    with files[0].open("rb") as f:
        assert f.read(16).decode(errors="replace").startswith(token)
    world.delete("pod/raw-user")


def statefulset(name: str, replicas: int, work: str) -> Any:
    """A StatefulSet whose pods run ``work`` on a 1 GiB volume ``data`` each."""
    sts: Any = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(work)},
            "volumeClaimTemplates": [pvc("data", "1Gi")],
        },
    }
    sts["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    sts["spec"]["volumeClaimTemplates"][0]["metadata"].pop("namespace")
    return sts


def check_statefulset(world: World) -> None:
    sts = statefulset(
        "web",
        2,
        'if [ -f /data/id ]; then grep -qx "$(hostname)" /data/id; '
        "else hostname > /data/id && sync; fi",
    )
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
    # Scaled to 0 again: the two-node scenarios count every volume on a node.
    world.cluster.kubectl("scale", "-n", NS, "statefulset/web", "--replicas=0")
    for disk in disks:
        world.wait_detached(disk)


# ---- upgrades under a writer --------------------------------------------------------------------

# A record of numbers 1, 2, 3, ... each appended and fsync'd on its own; an I/O error ends the pod.
RECORDER = (
    "trap 'exit 0' TERM INT; touch /tmp/done; i=0; while :; do i=$((i+1)); "
    "echo $i | dd of=/data/record oflag=append conv=notrunc,fsync 2>/dev/null "
    "|| { echo I/O ERROR at $i; exit 1; }; sleep 0.1; done"
)


def recorder(name: str, claim: str) -> Any:
    p = pod(name, claim, "true")
    p["spec"]["containers"][0]["command"] = ["sh", "-c", RECORDER]
    return p


def record_of(world: World, p: Any, claim: str) -> list[int]:
    path = world.volume_path(p, world.pv_of(claim)["metadata"]["name"]) / "record"
    lines = path.read_text().splitlines()
    return [int(n) for n in lines[:-1]]  # the last line may be mid-write


def roll(world: World, kind: str, name: str, image: str | None = None) -> float:
    """``kubectl rollout restart`` of one workload of the driver, or with ``image`` its
    csi-oxide container moved to that image; the seconds until its rollout finished."""
    started = time.monotonic()
    what = f"{kind}/{name}"
    if image is None:
        world.cluster.kubectl("rollout", "restart", "-n", "kube-system", what)
    else:
        world.cluster.kubectl("set", "image", "-n", "kube-system", what, f"csi-oxide={image}")
    world.cluster.kubectl("rollout", "status", "-n", "kube-system", what, "--timeout=180s")
    took = time.monotonic() - started
    log(f"rollout of {what} ({'restart' if image is None else image}): {took:.1f} s")
    return took


ROLLED_IMAGE = "docker.io/library/csi-oxide:0.1.0-rolled"


def check_rollout_while_writing(world: World) -> None:
    """Controller and node plugins restarted, then moved to a new image tag, while a pod appends
    fsync'd numbers: the writer never restarts nor sees an I/O error, its record has no gap, and
    a new claim works afterwards."""
    world.cluster.apply([pvc("rolling", "1Gi"), recorder("recorder", "rolling")])
    p = world.wait_pod_ready("recorder")
    wait_for("the recorder writing", lambda: len(record_of(world, p, "rolling")) > 5, 60)
    before = len(record_of(world, p, "rolling"))
    plugins = [f"csi-oxide-node{node.tag}" for node in world.cluster.nodes]
    roll(world, "deployment", "csi-oxide-controller")
    for name in plugins:
        roll(world, "daemonset", name)
    for node in world.cluster.nodes:  # the same image under a new name: a real image change
        tagged = world.cluster.ctr(
            "images", "tag", "--force", DRIVER_IMAGE, ROLLED_IMAGE, node=node
        )
        assert tagged.returncode == 0, tagged.stderr
    roll(world, "deployment", "csi-oxide-controller", ROLLED_IMAGE)
    for name in plugins:
        roll(world, "daemonset", name, ROLLED_IMAGE)
    install_wait_registered(world)
    wait_for("the new controller holds the reconciler's Lease", lambda: reconciler_held(world), 60)
    record = record_of(world, p, "rolling")
    assert record == list(range(1, len(record) + 1)), "the record has a gap or a repeat"
    assert len(record) > before, "the recorder stopped writing during the rollouts"
    now = world.cluster.get("pod", "-n", NS, "recorder")
    (status,) = now["status"]["containerStatuses"]
    assert status["restartCount"] == 0 and "running" in status["state"], status
    assert "I/O ERROR" not in world.cluster.pod_log(NS, "recorder", "app")
    token = secrets.token_hex(8)
    world.cluster.apply(
        [pvc("after-rollout", "1Gi"), pod("after", "after-rollout", f"echo {token} > /data/t")]
    )
    world.wait_pod_ready("after")
    disks = [world.pv_of(c)["spec"]["csi"]["volumeHandle"] for c in ("rolling", "after-rollout")]
    world.delete("pod", "recorder", "after")
    world.delete("pvc", "rolling", "after-rollout")
    for disk in disks:
        world.wait_detached(disk)


def reconciler_held(world: World) -> bool:
    """Whether the one running controller pod holds the Lease its reconciler runs under."""
    lease = world.cluster.get("lease", "-n", "kube-system", RECONCILER_LEASE)
    pods = world.cluster.get(
        "pods", "-n", "kube-system", "-l", "app.kubernetes.io/component=controller"
    )["items"]
    running = [q["metadata"]["name"] for q in pods if q["status"].get("phase") == "Running"]
    holder = (lease or {}).get("spec", {}).get("holderIdentity")
    return len(running) == 1 and holder == running[0]


def install_wait_registered(world: World) -> None:
    """Every node's plugin registered with its kubelet again (CSINode names this driver)."""
    for i, node in enumerate(world.cluster.nodes):
        wait_for(
            f"the driver registered again on {node.name}",
            functools.partial(_registered_as, world, node.name, world.sim.node_id(i)),
            120,
        )


def _registered_as(world: World, node: str, node_id: str) -> bool:
    return registered_id(world.cluster, node) == node_id


# ---- two nodes: a volume follows its pod ------------------------------------------------------


def cordon(world: World, node: str, *, on: bool = True) -> None:
    world.cluster.kubectl("cordon" if on else "uncordon", node)


def keep_token(token: str) -> str:
    """A pod's work: write ``token`` on a fresh volume, or find it on one that moved."""
    return (
        f"if [ -f /data/token ]; then grep -qx {token} /data/token; "
        f"else echo {token} > /data/token && sync; fi"
    )


def traces_on(world: World, local: int, disk: str) -> list[str]:
    """What node ``local`` still holds of ``disk``: mounts of its device below the kubelet's
    folder, the node plugin's mount records, a device its node plugin would take for the disk."""
    node = world.cluster.nodes[local]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        source = fields[fields.index("-") + 2]
        if fields[4].startswith(str(node.kubelet_dir)) and source.startswith("/dev/loop"):
            with contextlib.suppress(OSError):
                if Path(loop_backing(source).removesuffix(" (deleted)")).name == disk:
                    found.append(f"mount {fields[4]}")
    record = world.cluster.state / f"hostpaths{node.tag}/var/lib/csi-oxide/node/{disk}.json"
    if record.exists():
        body = json.loads(record.read_text())
        if body.get("stage") or body.get("publish"):
            found.append(f"record {record}: stage {body.get('stage')}, publish {body['publish']}")
    finder = UdevDeviceFinder(sim_device_dir=world.sim.device_dir(local))
    found += [f"device {d.path}" for d in finder.scan() if d.serial == serial_of(disk)]
    return found


def wait_no_traces(world: World, local: int, disk: str) -> None:
    node = world.cluster.nodes[local].name
    try:
        wait_for(f"nothing of {disk} left on {node}", lambda: not traces_on(world, local, disk), 30)
    except TimeoutError:
        raise AssertionError(f"left on {node}: {traces_on(world, local, disk)}") from None


def driver_rpcs(world: World, disk: str) -> list[str]:
    """The driver's RPCs about ``disk``, in time order, from its containers' logs; each line:
    when, which plugin on which node, the call, the node it names (ControllerPublishVolume and
    ControllerUnpublishVolume: the instance's node, ``-`` otherwise), its result."""
    node_of = {world.sim.node_id(i): n.name for i, n in enumerate(world.cluster.nodes)}
    lines = []
    for node in world.cluster.nodes:
        for log_file in node.pod_logs.glob("kube-system_csi-oxide-*/csi-oxide/*.log"):
            pod_name = log_file.parent.parent.name.split("_")[1]
            plugin = "controller" if "controller" in pod_name else "node"
            for line in log_file.read_text(errors="replace").splitlines():
                when, _, rest = line.partition(" ")
                with contextlib.suppress(ValueError, IndexError):
                    entry = json.loads(rest.split(" ", 2)[2])
                    if entry.get("event") == "rpc" and entry.get("volume_id") == disk:
                        call = entry["rpc"].rsplit("/", 1)[-1]
                        target = node_of.get(entry.get("node_id", ""), "-")
                        lines.append(
                            f"{_sortable(when)} {plugin}@{node.name} {call} {target} "
                            f"{entry['code']}"
                        )
    return sorted(lines)


def _sortable(when: str) -> str:
    """A CRI log time with its fraction padded to nanoseconds (CRI drops trailing zeros)."""
    whole, _, fraction = when.removesuffix("Z").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}Z"


def assert_moved_in_order(rpcs: list[str], old: str, new: str) -> None:
    """The driver's calls for a move from node ``old`` to ``new``: unstaged on the old node,
    then detached from it, and only then attached to the new node (never before) and staged
    there."""
    done = [line.split()[1:4] for line in rpcs if line.endswith(" OK")]

    def at(who: str | None, call: str, target: str = "-") -> list[int]:
        return [
            i for i, (w, c, t) in enumerate(done) if c == call and who in (None, w) and t == target
        ]

    unstaged = at(f"node@{old}", "NodeUnstageVolume")
    detached = at(None, "ControllerUnpublishVolume", old)
    attached = at(None, "ControllerPublishVolume", new)
    staged = at(f"node@{new}", "NodeStageVolume")
    assert unstaged and detached and attached and staged, rpcs
    assert unstaged[0] < detached[0] < attached[0] < staged[0], rpcs


def check_move_with_cordon(world: World) -> None:
    """A StatefulSet's pod on node A writes; A is cordoned and the pod deleted; the pod comes up
    on B with the disk moved from A's instance to B's, and nothing of it is left on A."""
    a, b = (n.name for n in world.cluster.nodes)
    token = secrets.token_hex(8)
    sts = statefulset("mover", 1, keep_token(token))
    cordon(world, b)
    world.cluster.apply([sts])
    first = world.wait_pod_ready("mover-0")
    cordon(world, b, on=False)
    assert first["spec"]["nodeName"] == a
    disk = assert_on_disk(world, first, "data-mover-0", "token", token)["spec"]["csi"][
        "volumeHandle"
    ]
    cordon(world, a)
    try:
        world.delete("pod/mover-0")
        moved = world.wait_pod_ready("mover-0")
    finally:
        cordon(world, a, on=False)
    assert moved["spec"]["nodeName"] == b
    assert_on_disk(world, moved, "data-mover-0", "token", token)
    assert world.sim.disks()[disk].instance_id == world.sim.node_id(1)
    assert disk not in world.sim.attached(0)
    wait_no_traces(world, 0, disk)
    rpcs = driver_rpcs(world, disk)
    log("RPCs of the move:\n  " + "\n  ".join(rpcs))
    assert_moved_in_order(rpcs, a, b)
    world.cluster.kubectl("delete", "-n", NS, "statefulset/mover", "--wait=true")
    wait_for("mover-0 gone", lambda: world.cluster.get("pod", "-n", NS, "mover-0") is None, 60)
    world.wait_detached(disk)


def check_crossing_moves(world: World) -> None:
    """Two pods on different nodes, each with its volume, swap nodes at the same time: each
    volume follows its pod, devices never mixed up."""
    nodes = [n.name for n in world.cluster.nodes]
    # claim -> (token, node number before, node number after)
    plan = {"cross-a": (secrets.token_hex(8), 0, 1), "cross-b": (secrets.token_hex(8), 1, 0)}
    world.cluster.apply([pvc(claim, "1Gi") for claim in plan])
    world.cluster.apply(
        [pod(f"x-{c}", c, keep_token(t), node=nodes[before]) for c, (t, before, _) in plan.items()]
    )
    disks = {}
    for claim, (token, before, _) in plan.items():
        p = world.wait_pod_ready(f"x-{claim}")
        assert world.local_of(p) == before
        pv = assert_on_disk(world, p, claim, "token", token)
        disks[claim] = pv["spec"]["csi"]["volumeHandle"]
    # The new pods are made while the old ones still hold the volumes: each waits for its
    # volume to leave the other node (the attach/detach controller's Multi-Attach check).
    world.cluster.kubectl("delete", "-n", NS, "pod", *(f"x-{c}" for c in plan), "--wait=false")
    world.cluster.apply(
        [pod(f"y-{c}", c, keep_token(t), node=nodes[after]) for c, (t, _, after) in plan.items()]
    )
    for claim, (token, before, after) in plan.items():
        p = world.wait_pod_ready(f"y-{claim}")
        assert world.local_of(p) == after
        assert_on_disk(world, p, claim, "token", token)
        disk = disks[claim]
        assert disk not in world.sim.attached(before)
        wait_no_traces(world, before, disk)
        assert_moved_in_order(driver_rpcs(world, disk), nodes[before], nodes[after])
    world.delete(*(f"pod/y-{c}" for c in plan))


def check_volume_limit(world: World) -> None:
    """13 pods pinned to node A, each with a volume of its own: 12 run, one stays pending (the
    scheduler's limit from the node plugin's 12 slots); node B still takes a new volume."""
    a, b = (n.name for n in world.cluster.nodes)
    wait_for(f"no disk left on {a}", lambda: not world.sim.attached(0), 120)
    names = [f"limit-{i}" for i in range(13)]
    world.cluster.apply([pvc(n, "1Gi") for n in names] + [pod(n, n, "true", node=a) for n in names])

    def settled() -> bool:
        pods = [world.cluster.get("pod", "-n", NS, n) for n in names]
        ready = [p for p in pods if _ready(p)]
        return len(ready) == 12 and any(_unschedulable(p) for p in pods)

    wait_for("12 pods ready and one unschedulable on node A", settled, 300, interval=2)
    pending = [n for n in names if not _ready(world.cluster.get("pod", "-n", NS, n))]
    assert len(pending) == 1, pending
    message = _unschedulable(world.cluster.get("pod", "-n", NS, pending[0]))
    log(f"the 13th pod ({pending[0]}): {message}")
    assert message is not None and "max volume count" in message, message
    on_a = {world.pv_of(n)["spec"]["csi"]["volumeHandle"] for n in names if n not in pending}
    assert on_a <= world.sim.attached(0) and len(on_a) == 12
    world.cluster.apply([pvc("limit-b", "1Gi"), pod("limit-b", "limit-b", "true", node=b)])
    p = world.wait_pod_ready("limit-b")
    assert world.local_of(p) == 1
    assert world.pv_of("limit-b")["spec"]["csi"]["volumeHandle"] in world.sim.attached(1)
    world.delete(*(f"pod/{n}" for n in [*names, "limit-b"]))
    for disk in on_a:
        world.wait_detached(disk)


# How long the lost-node scenario watches Kubernetes hold a volume on a node that stopped
# answering before the node's kubelet comes back (Kubernetes itself would wait 6 minutes).
HOLD_SECONDS = 10


def pod_node(world: World, name: str) -> str | None:
    p = world.cluster.get("pod", "-n", NS, name)
    return None if p is None else p["spec"].get("nodeName")


def hold(what: str, invariant: Callable[[], None], seconds: float) -> None:
    """Check ``invariant`` (it raises when broken) once a second for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        invariant()
        time.sleep(1)
    log(f"held for {seconds:.0f} s: {what}")


def check_node_lost(world: World) -> None:
    """Node A's kubelet stops while a pod uses a volume there; the pod is force-deleted and made
    again on B. Kubernetes keeps the disk on A (the attach/detach controller will not detach
    from a node that may still have it mounted: 6 minutes, or at once with the out-of-service
    taint); the new pod waits. When A's kubelet returns, it unmounts, the attacher detaches,
    and only then is the disk attached to B, data intact."""
    a, b = (n.name for n in world.cluster.nodes)
    token = secrets.token_hex(8)
    cordon(world, b)
    world.cluster.apply([statefulset("lost", 1, keep_token(token))])
    first = world.wait_pod_ready("lost-0")
    cordon(world, b, on=False)
    assert first["spec"]["nodeName"] == a
    pv = assert_on_disk(world, first, "data-lost-0", "token", token)
    disk = pv["spec"]["csi"]["volumeHandle"]
    started = time.monotonic()
    world.cluster.stop_kubelet(a)
    try:
        wait_for(f"{a} NotReady", lambda: not world.cluster.node_ready(a), 120, interval=1)
        log(f"{a} NotReady {time.monotonic() - started:.0f} s after its kubelet stopped")
        world.cluster.kubectl(
            "delete", "-n", NS, "pod", "lost-0", "--force", "--grace-period=0", "--wait=false"
        )
        wait_for("lost-0 made again on B", lambda: pod_node(world, "lost-0") == b, 120)

        def still_on_a() -> None:
            assert world.sim.disks()[disk].instance_id == world.sim.node_id(0), disk
            va = world.attachment(pv["metadata"]["name"])
            assert va is not None and va["spec"]["nodeName"] == a, va

        hold(f"{disk} stays on {a}, the new pod waits on {b}", still_on_a, HOLD_SECONDS)
    finally:
        world.cluster.start_kubelet(a)
    back = time.monotonic()
    moved = world.wait_pod_ready("lost-0", 240)
    log(f"lost-0 ready on {b} {time.monotonic() - back:.0f} s after {a}'s kubelet came back")
    assert moved["spec"]["nodeName"] == b
    assert_on_disk(world, moved, "data-lost-0", "token", token)
    wait_no_traces(world, 0, disk)
    rpcs = driver_rpcs(world, disk)
    log("RPCs of the move after the node came back:\n  " + "\n  ".join(rpcs))
    assert_moved_in_order(rpcs, a, b)
    world.cluster.kubectl("delete", "-n", NS, "statefulset/lost", "--wait=true")
    wait_for("lost-0 gone", lambda: world.cluster.get("pod", "-n", NS, "lost-0") is None, 60)
    world.wait_detached(disk)


def _ready(p: Any) -> bool:
    return p is not None and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
    )


def _unschedulable(p: Any) -> str | None:
    """The scheduler's message when it could not place the pod."""
    for c in (p or {}).get("status", {}).get("conditions", []):
        if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
            return str(c.get("message", ""))
    return None


# ---- two controller replicas ------------------------------------------------------------------

# A pod off the host network reaches the API server and the simulated rack through two bridges:
# in the pod, from 127.0.0.1:PORT (its own loopback) to a unix socket on a hostPath; on the host,
# from that socket to 127.0.0.1:PORT. Off the host network, each replica has its own hostname, so
# the sidecars' leader identities differ (on the host network both of this machine's two nodes
# would give the same one).
BRIDGES = "/csi-oxide-e2e-bridges"


def _bridge_container(name: str, port: str, sock: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": DRIVER_IMAGE,
        "command": ["python", "-m", "csi_oxide_lab.guest.bridge"],
        "args": [f"--listen=tcp:127.0.0.1:{port}", f"--connect=unix:{BRIDGES}/{sock}"],
        "volumeMounts": [{"name": "e2e-bridges", "mountPath": BRIDGES}],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False},
    }


def bridged_controller(live: Any, api_port: int, sim_port: str, folder: Path) -> Any:
    """The controller's Deployment as shipped (off the host network), two replicas, reaching the
    API server and the rack through the bridges; no liveness probe (the kubelet cannot reach a
    pod's own loopback network here)."""
    doc = reapplicable(live)
    doc["spec"]["replicas"] = 2
    doc["spec"].pop("strategy", None)
    pod_spec = doc["spec"]["template"]["spec"]
    pod_spec.pop("hostNetwork", None)
    pod_spec["dnsPolicy"] = "ClusterFirst"
    # One replica per node is the host network's rule (its hostname is the node's); off it, as
    # the chart does, only preferred: else the second replica and the surge would wait forever.
    anti = pod_spec.get("affinity", {}).get("podAntiAffinity", {})
    anti.pop("requiredDuringSchedulingIgnoredDuringExecution", None)
    for c in pod_spec["containers"]:
        c.pop("livenessProbe", None)
        c.pop("ports", None)
    pod_spec["containers"] += [
        _bridge_container("bridge-api", str(api_port), "api.sock"),
        _bridge_container("bridge-rack", sim_port, "rack.sock"),
    ]
    volume = {"name": "e2e-bridges", "hostPath": {"path": str(folder), "type": "Directory"}}
    pod_spec["volumes"] = [*pod_spec.get("volumes", []), volume]
    return doc


def reapplicable(live: Any) -> Any:
    """An object as read from the API, to apply again: no status, no server-kept metadata."""
    metadata = {k: live["metadata"][k] for k in ("name", "namespace", "labels")}
    annotations = dict(live["metadata"].get("annotations", {}))
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    annotations.pop("deployment.kubernetes.io/revision", None)
    if annotations:
        metadata["annotations"] = annotations
    spec = json.loads(json.dumps(live["spec"]))
    return {
        "apiVersion": live["apiVersion"],
        "kind": live["kind"],
        "metadata": metadata,
        "spec": spec,
    }


def replace_controller(world: World, doc: Any) -> None:
    """The controller's Deployment replaced by ``doc``: scaled to 0 first (an old replica's
    anti-affinity or ports then hold nothing back), then applied and rolled out."""
    deployment = ("-n", "kube-system", "deployment/csi-oxide-controller")
    world.cluster.kubectl("scale", *deployment, "--replicas=0")
    wait_for("no controller pod left", lambda: controller_pods(world, all_pods=True) == [], 120)
    world.cluster.apply([doc])
    done = world.cluster.kubectl(
        "rollout", "status", *deployment, "--timeout=180s", check=False, timeout=200
    )
    if done.returncode != 0:
        pods = world.cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = world.cluster.kubectl("get", "events", "-n", "kube-system", check=False).stdout
        raise AssertionError(f"controller rollout: {done.stdout[-500:]}\n{pods}\n{events[-4000:]}")


def controller_pods(world: World, *, all_pods: bool = False) -> list[Any]:
    found = world.cluster.get(
        "pods", "-n", "kube-system", "-l", "app.kubernetes.io/component=controller"
    )
    return [p for p in found["items"] if all_pods or "deletionTimestamp" not in p["metadata"]]


def provisioner_leader(world: World) -> str | None:
    """The pod whose csi-provisioner leads (the holder of its Lease, named after the driver)."""
    lease = world.cluster.get("lease", "-n", "kube-system", DRIVER_NAME.replace(".", "-"))
    return (lease or {}).get("spec", {}).get("holderIdentity") or None


def immediate_class() -> Any:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "oxide-immediate"},
        "provisioner": DRIVER_NAME,
        "volumeBindingMode": "Immediate",
        "reclaimPolicy": "Delete",
    }


def check_two_replicas_leader_killed(world: World, work: Path) -> None:
    """Two controller replicas off the host network; the provisioning leader is killed while 10
    PVCs are being provisioned: exactly 10 disks, all bound, none left after deletion."""
    live = world.cluster.get("deployment", "-n", "kube-system", "csi-oxide-controller")
    folder = work / "bridges"
    folder.mkdir()
    sim_port = world.sim.env["OXIDE_HOST"].rsplit(":", 1)[1]
    bridges = [
        BridgeThread(f"unix:{folder}/api.sock", f"tcp:127.0.0.1:{world.cluster.api_port}"),
        BridgeThread(f"unix:{folder}/rack.sock", f"tcp:127.0.0.1:{sim_port}"),
    ]
    try:
        replace_controller(
            world, bridged_controller(live, world.cluster.api_port, sim_port, folder)
        )
        names = {p["metadata"]["name"] for p in controller_pods(world)}
        assert len(names) == 2, names
        wait_for(
            "a provisioner leader among the two", lambda: provisioner_leader(world) in names, 90
        )
        before = set(world.sim.disks())
        claims = [f"many-{i}" for i in range(10)]
        many = [pvc(c, "1Gi") for c in claims]
        for claim in many:
            claim["spec"]["storageClassName"] = "oxide-immediate"
        world.cluster.apply([immediate_class(), *many])
        leader = provisioner_leader(world)
        assert leader is not None

        def bound_now() -> int:
            phases = [
                (world.cluster.get("pvc", "-n", NS, c) or {}).get("status", {}).get("phase")
                for c in claims
            ]
            return phases.count("Bound")

        wait_for("the provisioning under way", lambda: len(world.sim.disks()) > len(before), 60)
        world.cluster.kubectl(
            "delete", "pod", "-n", "kube-system", leader, "--grace-period=0", "--force"
        )
        log(
            f"killed {leader}, the provisioner's leader, with {bound_now()} of 10 claims bound "
            f"and {len(set(world.sim.disks()) - before)} disks made"
        )

        def bound() -> bool:
            return bound_now() == len(claims)

        wait_for("10 claims bound after the leader was killed", bound, 240)
        handles = {world.pv_of(c)["spec"]["csi"]["volumeHandle"] for c in claims}
        made = set(world.sim.disks()) - before
        assert made == handles and len(handles) == 10, (sorted(made), sorted(handles))
        new_leader = provisioner_leader(world)
        log(f"the provisioner's leader is now {new_leader}")
        world.delete("pvc", *claims)
        wait_for("the 10 disks deleted", lambda: not handles & set(world.sim.disks()), 180)
        world.cluster.kubectl("delete", "storageclass", "oxide-immediate")
    finally:
        replace_controller(world, reapplicable(live))
        for bridge in bridges:
            bridge.close()


def taint_keys(world: World, node: str) -> list[str]:
    spec = world.cluster.get("node", node)["spec"]
    return [t["key"] for t in spec.get("taints") or []]


def check_startup_taint(world: World) -> None:
    """Node B tainted with the startup taint: a pod with a volume pinned to B waits (the
    scheduler refuses the node); B's node plugin, restarted, lifts the taint once the kubelet has
    registered it, and the pod runs there."""
    node = world.cluster.nodes[-1]
    world.cluster.kubectl("taint", "nodes", node.name, f"{AGENT_NOT_READY}=:NoSchedule")
    world.cluster.apply(
        [pvc("taint-data", "1Gi"), pod("tainted", "taint-data", "echo t > /data/t", node=node.name)]
    )

    def refused() -> bool:  # the scheduler names no key ("had untolerated taint(s)")
        message = _unschedulable(world.cluster.get("pod", "-n", NS, "tainted"))
        return message is not None and "untolerated taint" in message

    wait_for("the scheduler refusing the tainted node", refused, 60)

    def still_waiting() -> None:
        assert refused(), "the pod was placed while the node was tainted"
        assert AGENT_NOT_READY in taint_keys(world, node.name)

    hold("the pod waits while the node is tainted", still_waiting, 5)
    started = time.monotonic()
    plugin = f"csi-oxide-node{node.tag}"
    world.cluster.kubectl("rollout", "restart", "-n", "kube-system", f"daemonset/{plugin}")
    wait_for(
        "the node plugin lifting its node's taint",
        lambda: AGENT_NOT_READY not in taint_keys(world, node.name),
        120,
    )
    log(f"startup taint lifted {time.monotonic() - started:.1f} s after {plugin} restarted")
    p = world.wait_pod_ready("tainted")
    assert p["spec"]["nodeName"] == node.name
    disk = world.pv_of("taint-data")["spec"]["csi"]["volumeHandle"]
    world.delete("pod", "tainted")
    world.delete("pvc", "taint-data")
    world.wait_detached(disk)


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
    assert world.sim.images() == {}
    assert world.sim.attached() == set()
    kubelets = tuple(str(node.kubelet_dir) for node in world.cluster.nodes)
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(kubelets) and "/loop" in line
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


OPERATOR_DISK = "kept-data-of-node-a"  # its first 20 characters: no other disk's


def static_pv_of(world: World, disk: str, node: str) -> Any:
    """The PersistentVolume ``csi-oxide static-pv`` prints for ``disk``, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "csi_oxide", "static-pv", disk, "--node-name", node],
        env={**os.environ, **world.sim.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return yaml.safe_load(done.stdout)


def check_static_volume_on_todays_rack(world: World) -> None:
    """Hot-plug off: a disk attached while A's instance was stopped serves pods on the running
    node through a static PV; the pod is deleted and re-created, data intact, the disk never
    leaves A (unpublish leaves it and answers OK); a pod on B is refused by the PV's affinity."""
    a, b = (n.name for n in world.cluster.nodes[:2])
    world.sim.operator_disk(OPERATOR_DISK, GIB, local=0)
    pv = static_pv_of(world, OPERATOR_DISK, a)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "kept", "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": pv["metadata"]["name"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    token = secrets.token_hex(8)
    world.cluster.apply([pv, claim, pod("kept-writer", "kept", f"echo {token} > /data/f && sync")])
    assert_on_disk(world, world.wait_pod_ready("kept-writer"), "kept", "f", token)
    world.delete("pod/kept-writer")
    wait_for(
        "the VolumeAttachment gone (unpublish answered OK)",
        lambda: world.attachment(pv["metadata"]["name"]) is None,
        120,
    )
    assert OPERATOR_DISK in world.sim.attached(0), "the operator's disk left its instance"
    world.cluster.apply([pod("kept-reader", "kept", f"grep -qx {token} /data/f", node=a)])
    assert_on_disk(world, world.wait_pod_ready("kept-reader"), "kept", "f", token)
    world.delete("pod/kept-reader")
    world.cluster.apply([pod("kept-elsewhere", "kept", "true", node=b)])
    wait_for(
        "the pod on B refused by the scheduler",
        lambda: (
            "affinity"
            in (_unschedulable(world.cluster.get("pod", "-n", NS, "kept-elsewhere")) or "")
        ),
        60,
    )
    assert OPERATOR_DISK in world.sim.attached(0) and OPERATOR_DISK not in world.sim.attached(1)
    world.delete("pod/kept-elsewhere", "pvc/kept")
    world.cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=true")
    world.sim.remove_operator_disk(OPERATOR_DISK, local=0)
    assert world.sim.disks() == {}


# ---- the test -------------------------------------------------------------------------------


NODES = 2


def start_sim(cluster: Cluster, state: Path, *, hotplug: bool) -> Sim:
    """The simulated rack, one local instance per node, its process and folder in the ledger."""
    sim = Sim(state, hotplug=hotplug, port=free_port(), local_instances=len(cluster.nodes))
    cluster.ledger.record_dir(state)  # before any loop device exists
    sim.start()
    track(cluster, sim)
    return sim


def test_the_driver_in_a_two_node_kubernetes() -> None:
    total = time.monotonic()
    memory = MemoryPeak()
    report = Report()
    with report.scenario("build binaries (cached under .tools/cluster)"):
        tools = Tools.build()
    work = Path(tempfile.mkdtemp(prefix="csi-oxide-e2e-work-"))
    cluster = Cluster(tools, NODES)
    sims: list[Sim] = []
    problems: list[str] = []
    try:
        with report.scenario("images: driver from the Dockerfile, sidecars, busybox, pause"):
            out = work / "images"
            out.mkdir()
            built = cluster_images(tools, out)
        with report.scenario(
            f"cluster of {NODES} nodes up, images imported, driver installed and registered"
        ):
            cluster.start(import_everywhere(built))
            cluster.ledger.record_dir(work)
            install_snapshot_support(cluster, tools)
            sim = start_sim(cluster, work / "sim-hotplug", hotplug=True)
            sims.append(sim)
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
        with report.scenario(
            "images: snapshot kept as an image, volumes from it and from a golden image; "
            "a read-only volume refuses a write with EROFS, data intact"
        ):
            check_images_and_read_only(world, s)
        with report.scenario("raw block PVC used by a pod"):
            check_raw_block(world)
        with report.scenario("StatefulSet of 2, scaled to 0 and back (and to 0 again)"):
            check_statefulset(world)
        with report.scenario(
            "rollout restart and image change of controller and node plugins under an fsync'd "
            "writer: no restart, no I/O error, no gap; a new PVC works after"
        ):
            check_rollout_while_writing(world)
        with report.scenario("two nodes: A cordoned, pod deleted, volume moves to B, data intact"):
            check_move_with_cordon(world)
        with report.scenario("two nodes: crossing moves, each volume follows its pod"):
            check_crossing_moves(world)
        with report.scenario("two nodes: 13 volumes pinned to A, one pending; B takes more"):
            check_volume_limit(world)
        with report.scenario("two nodes: A's kubelet stopped, pod forced to B after A returns"):
            check_node_lost(world)
        with report.scenario(
            "two controller replicas off the host network; the provisioning leader killed with "
            "10 PVCs being provisioned: 10 disks, all bound, none left after deletion"
        ):
            check_two_replicas_leader_killed(world, work)
        with report.scenario(
            "startup taint: a pod with a volume waits on the tainted node; the node plugin lifts "
            "the taint once registered, and the pod runs there"
        ):
            check_startup_taint(world)
        with report.scenario("everything deleted: no disk, snapshot, mount or loop device left"):
            check_everything_deleted(world)
        with report.scenario("hot-plug off: pod pending, FAILED_PRECONDITION, rack unchanged"):
            sim.stop()
            today = start_sim(cluster, work / "sim-today", hotplug=False)
            sims.append(today)
            # Host networking: the new pods must not wait for the old ones' ports.
            install_driver(cluster, today, (free_port(), free_port()), run="today")
            world.sim = today
            check_hotplug_off(world)
        with report.scenario("hot-plug off: an operator's disk as a static PV on its node"):
            check_static_volume_on_todays_rack(world)
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
