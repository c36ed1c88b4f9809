"""What the cluster test (test_cluster.py) and the conformance run (conformance.py) both set up on
the one-node cluster: the simulated rack, the images, the snapshot support and the driver.

- ``Sim``: ``csi-oxide sim --backing loop`` on the host, reachable by the driver on 127.0.0.1.
- ``cluster_images``: every image the cluster and the driver's pods run (images.py makes them).
- ``install_snapshot_support``: the snapshot CRDs and the snapshot controller.
- ``install_driver``: deploy/kubernetes/base through the test overlay (overlay.py), or the Helm
  chart deploy/helm/csi-oxide with the same changes as values (helm.py), waited for until the
  kubelet has registered the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.types import Disk, DiskSpec, Image, Snapshot
from tests.e2e import helm, images, overlay
from tests.e2e.cluster import Cluster, Tools, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
SIDECARS = (
    ("csi-provisioner", "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0"),
    ("csi-attacher", "registry.k8s.io/sig-storage/csi-attacher:v4.12.0"),
    ("csi-resizer", "registry.k8s.io/sig-storage/csi-resizer:v2.3.0"),
    ("csi-snapshotter", "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0"),
    ("snapshot-controller", "registry.k8s.io/sig-storage/snapshot-controller:v8.6.0"),
)


@dataclass
class Sim:
    """``csi-oxide sim --backing loop`` on the host, reachable by the driver on 127.0.0.1."""

    state: Path
    hotplug: bool
    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # more `csi-oxide sim` flags (e.g. --latency-ms for make bench)
    local_instances: int = 1  # one per node of the cluster

    def start(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        env_file = self.state / "sim.env"
        env_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "csi_oxide", "sim", "--backing", "loop",
            "--state-dir", str(self.state / "disks"), "--env-file", str(env_file),
            "--listen", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        if self.hotplug:
            argv.append("--hotplug")
        if self.local_instances > 1:
            argv += ["--local-instances", str(self.local_instances)]
        argv += self.extra
        logf = (self.state / f"sim-{'hotplug' if self.hotplug else 'today'}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        logf.close()
        wait_for("the simulator's env file", env_file.exists, 60)
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = shlex.split(value)[0]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def _api(self) -> HttpOxideClient:
        return HttpOxideClient(
            self.env["OXIDE_HOST"], lambda: self.env["OXIDE_TOKEN"], self.env["OXIDE_PROJECT"]
        )

    def _call(self, fn: Callable[[HttpOxideClient], Any]) -> Any:
        async def go() -> Any:
            api = self._api()
            try:
                return await fn(api)
            finally:
                await api.aclose()

        return asyncio.run(go())

    def disks(self) -> dict[str, Disk]:
        return {d.name: d for d in self._call(lambda api: api.disk_list())}

    def snapshots(self) -> dict[str, Snapshot]:
        return {s.name: s for s in self._call(lambda api: api.snapshot_list())}

    def images(self) -> dict[str, Image]:
        return {i.name: i for i in self._call(lambda api: api.image_list())}

    def operator_image(self, name: str, disk: str) -> Image:
        """An image made outside Kubernetes, as an operator makes a golden one: a snapshot of
        ``disk``, an image of that snapshot, and the snapshot deleted (the image keeps the data)."""

        async def make(api: HttpOxideClient) -> Image:
            snap = await api.snapshot_create(f"{name}-source", "made by an operator", disk)
            image = await api.image_create(name, "made by an operator", snap.id)
            await api.snapshot_delete(snap.name)
            return image

        return self._call(make)  # type: ignore[no-any-return]

    def remove_operator_image(self, name: str) -> None:
        self._call(lambda api: api.image_delete(name))

    def node_id(self, local: int = 0) -> str:
        """The ID of local instance ``local`` (node ``local`` of the cluster)."""
        if self.local_instances == 1:
            return self.env["CSI_OXIDE_NODE_ID"]
        return self.env[f"CSI_OXIDE_NODE_ID_{local}"]

    def device_dir(self, local: int = 0) -> Path:
        """The device folder of local instance ``local``."""
        if self.local_instances == 1:
            return Path(self.env["CSI_OXIDE_SIM_DEVICE_DIR"])
        return Path(self.env[f"CSI_OXIDE_SIM_DEVICE_DIR_{local}"])

    def attached(self, local: int | None = None) -> set[str]:
        """The disks attached to local instance ``local`` (None: to any local instance)."""
        chosen = range(self.local_instances) if local is None else [local]
        names: set[str] = set()
        for i in chosen:
            names |= {d.name for d in self.disks_of(self.node_id(i))}
        return names

    def operator_disk(self, name: str, size: int, local: int = 0) -> Disk:
        """A disk as an operator of today's racks gives a node: created, attached to local
        instance ``local`` while it is stopped, and the instance started again."""
        instance = self.node_id(local)
        spec = DiskSpec(name=name, description="made by an operator", size=size, block_size=4096)

        async def give(api: HttpOxideClient) -> Disk:
            await api.disk_create(spec)
            await api.instance_stop(instance)
            disk = await api.instance_disk_attach(instance, name)
            await api.instance_start(instance)
            return disk

        return self._call(give)  # type: ignore[no-any-return]

    def remove_operator_disk(self, name: str, local: int = 0) -> None:
        """Detach (instance stopped for it, then started) and delete ``operator_disk``'s disk."""
        instance = self.node_id(local)

        async def remove(api: HttpOxideClient) -> None:
            await api.instance_stop(instance)
            await api.instance_disk_detach(instance, name)
            await api.instance_start(instance)
            await api.disk_delete(name)

        self._call(remove)

    def disks_of(self, instance: str) -> list[Disk]:
        """The disks attached to ``instance``."""
        found: list[Disk] = self._call(lambda api: api.instance_disk_list(instance))
        return found


def loops_backed_by(folder: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip().startswith(str(folder)):
                found.append(backing.parent.parent.name)
    return found


def cluster_images(tools: Tools, out: Path) -> list[images.Image]:
    """The driver (from the Dockerfile), the sidecars, busybox and the pause image, in ``out``."""
    built = [
        images.driver_image(ROOT / ".tools" / "images", out),
        images.busybox_image(out),
        images.pause_image(out),
    ]
    for name, image in SIDECARS:
        built.append(images.sidecar_image(image, tools[name], out))
    return built


def install_snapshot_support(cluster: Cluster, tools: Tools) -> None:
    crds = sorted(
        p for p in tools["snapshot-crds"].glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for crd in crds:
        cluster.kubectl("apply", "-f", str(crd))
    for crd in crds:
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=60s")
    manifest = (Path(__file__).parent / "manifests" / "snapshot-controller.yaml").read_text()
    cluster.apply(manifest.replace("@API_PORT@", str(cluster.api_port)))


def install_driver(
    cluster: Cluster, sim: Sim, ports: tuple[int, int], run: str, *, how: str = "kustomize"
) -> None:
    """Install (or re-install against a new simulator) and wait until the kubelet registered it.
    Installed with the startup taint on (the node plugins lift it from their nodes).

    ``how``: "kustomize" (deploy/kubernetes/base through overlay.py, applied with kubectl) or
    "helm" (deploy/helm/csi-oxide through helm.py). One install path per cluster."""
    if how == "helm":
        helm.install(
            cluster.kubeconfig,
            sim_env=sim.env,
            api_port=cluster.api_port,
            kubelet_dir=cluster.kubelet_dir,
            state_dir=cluster.state,
            ports=ports,
            run=run,
            nodes=node_targets(cluster, sim, ports[1]),
            startup_taint=True,
        )
    elif how == "kustomize":
        docs = overlay.overlay(
            overlay.render_base(cluster.kubectl_path, overlay.WITH_STARTUP_TAINT),
            sim_env=sim.env,
            api_port=cluster.api_port,
            kubelet_dir=cluster.kubelet_dir,
            state_dir=cluster.state,
            ports=ports,
            run=run,
            nodes=node_targets(cluster, sim, ports[1]),
        )
        cluster.apply(docs)
    else:
        raise ValueError(f"unknown install path {how!r}")
    expected = {node.name: sim.node_id(i) for i, node in enumerate(cluster.nodes)}

    def registered() -> bool:
        return all(registered_id(cluster, name) == node_id for name, node_id in expected.items())

    def rolled(kind: str, name: str) -> bool:
        done = cluster.kubectl(
            "rollout", "status", "-n", "kube-system", f"{kind}/{name}", "--timeout=5s", check=False
        )
        return done.returncode == 0

    try:
        wait_for("controller rolled out", lambda: rolled("deployment", "csi-oxide-controller"), 180)
        for node in cluster.nodes:
            name = f"csi-oxide-node{node.tag}"
            wait_for(f"{name} rolled out", functools.partial(rolled, "daemonset", name), 180)
        wait_for("the kubelets registered the driver (CSINode)", registered, 120)
    except TimeoutError as exc:
        pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = cluster.kubectl("get", "events", "-n", "kube-system", check=False).stdout[-4000:]
        raise AssertionError(f"{exc}\n{pods}\n{events}\n{cluster.diagnostics()}") from None


def registered_id(cluster: Cluster, node: str) -> str | None:
    """The node ID the driver registered on ``node`` (CSINode), if it did."""
    csinode = cluster.get("csinode", node)
    drivers = (csinode or {}).get("spec", {}).get("drivers") or []
    return next((d["nodeID"] for d in drivers if d["name"] == "csi.oxide.computer"), None)


def node_targets(cluster: Cluster, sim: Sim, first_port: int) -> list[overlay.NodeTarget]:
    """Each node's node plugin (none for the one-node layout): local instance ``i`` of the
    simulator is node ``i``."""
    if len(cluster.nodes) == 1:
        return []
    if sim.local_instances != len(cluster.nodes):
        raise ValueError(f"{len(cluster.nodes)} nodes want as many local instances")
    return [
        overlay.NodeTarget(
            node.name,
            node.kubelet_dir,
            sim.node_id(i),
            str(sim.device_dir(i)),
            first_port if i == 0 else free_port(),
            node.tag,
        )
        for i, node in enumerate(cluster.nodes)
    ]


def track(cluster: Cluster, sim: Sim) -> None:
    """The simulator's folder and process in the cluster's ledger, so that the next run cleans
    them up if this one is killed (its loop devices are backed by files in that folder)."""
    assert sim.proc is not None
    cluster.ledger.record_dir(sim.state)
    cluster.ledger.record_pid(f"sim {sim.state.name}", sim.proc.pid)


def import_everywhere(built: list[images.Image]) -> Callable[[Cluster], None]:
    """The images imported into every node's containerd, at the same time."""

    def run(cluster: Cluster) -> None:
        with ThreadPoolExecutor(len(cluster.nodes)) as pool:
            done = [
                pool.submit(images.import_images, built, node.containerd_sock)
                for node in cluster.nodes
            ]
            for future in done:
                future.result()

    return run
