"""The driver installed into the test cluster with the Helm chart (deploy/helm/csi-oxide).

The second install path beside overlay.py: the same changes for this cluster, expressed as chart
VALUES instead of edits of rendered objects (see overlay.py's docstring for why each is needed):
simulator credentials, one controller replica, host networking with KUBERNETES_SERVICE_HOST/PORT
on 127.0.0.1, metrics and /healthz on 127.0.0.1 ports with the probes aimed there, the kubelet's
folder moved, the node ID and simulator device folder as extra environment with the device folder
mounted read-only, host folders this machine lacks made in the test's state folder, and a run
annotation on both pod templates. On two nodes (one machine), the per-node targets overlay.py
takes (``NodeTarget``, from stack.node_targets): the main node-plugin DaemonSet is the first
node's, pinned to it, and ``node.additionalDaemonSets`` holds one per further node, each with its
kubelet's folder, instance ID, device folder, health port and host folders, named as overlay.py
names them (``csi-oxide-node-b``). tests/deploy/test_helm.py checks that the chart with these
values renders what overlay.py makes of the kustomize base for the same inputs, on one node and
on two.

How to call it (from a test that has a running ``Cluster`` and ``Sim``, see stack.py)::

    from tests.e2e import helm, stack
    helm.install(
        cluster.kubeconfig,
        sim_env=sim.env, api_port=cluster.api_port, kubelet_dir=cluster.kubelet_dir,
        state_dir=cluster.state, ports=(metrics_port, node_metrics_port), run=run_id,
        nodes=stack.node_targets(cluster, sim, node_metrics_port),  # [] on one node
    )

``install`` runs ``helm upgrade --install`` (so calling it again with a new simulator or run
upgrades the release and rolls the pods); it returns once Helm has applied the objects, without
waiting for the pods (pass ``wait=True`` for ``helm --wait``). Objects already applied by
``kubectl apply`` (overlay.py) are not Helm's: use one install path per cluster. ``uninstall``
removes the release. ``helm_binary()`` builds helm from its Go module on first use (cached under
.tools/cluster by scripts/cluster/build_tools.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.overlay import NodeTarget

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "csi-oxide"
BUILD_TOOLS = ROOT / "scripts" / "cluster" / "build_tools.py"
RELEASE = "csi-oxide"
NAMESPACE = "kube-system"
# The chart's default host folders of the node plugin (values.yaml node.hostPaths), each mounted
# at the same path inside the container.
NODE_HOST_PATHS = {
    "dev": "/dev",
    "sys": "/sys",
    "udev": "/run/udev",
    "state": "/var/lib/csi-oxide/node",
}
# Those of them the plugin may create (hostPath type DirectoryOrCreate): with several nodes on
# this machine, each node gets its own, as separate machines would have.
NODE_CREATED_PATHS = frozenset({"udev", "state"})
# The label overlay.py pins a node's DaemonSet (its selector and pods) with.
NODE_LABEL = "csi-oxide-e2e/node"

Doc = dict[str, Any]


def helm_path() -> Path:
    """Where build_tools.py caches helm (it may not be built yet)."""
    listed = subprocess.run(
        [sys.executable, str(BUILD_TOOLS), "--list", "--only", "helm"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name, _, path = listed.strip().partition("=")
    assert name == "helm", listed
    return Path(path)


def helm_binary(build: bool = True) -> Path:
    """helm built from its Go module (helm.sh/helm/v3), cached under .tools/cluster.

    Builds it when missing and ``build`` is true (needs ``go``; about a minute with a warm module
    cache). Raises FileNotFoundError when it is missing and cannot be built.
    """
    path = helm_path()
    if path.exists():
        return path
    if not build or shutil.which("go") is None:
        raise FileNotFoundError(f"{path} is not built and there is no go to build it with")
    subprocess.run([sys.executable, str(BUILD_TOOLS), "--only", "helm", "--jobs", "2"], check=True)
    return path


def helm_env(home: Path) -> dict[str, str]:
    """The environment for helm: its cache, config and data folders under ``home``."""
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(home / sub)
    return env


def _host_path(name: str, state_dir: Path, target: NodeTarget) -> str:
    """Host folder ``name`` of ``target``'s node plugin, made in the state folder when this
    machine lacks it or, with several nodes here, when the plugin may create it (overlay.py's
    rule, so both install paths use the same folders)."""
    path = NODE_HOST_PATHS[name]
    own = target.node is not None and name in NODE_CREATED_PATHS
    if Path(path).exists() and not own:
        return path
    moved = str(state_dir / f"hostpaths{target.tag}") + path
    Path(moved).mkdir(parents=True, exist_ok=True)
    return moved


def _node_plugin(target: NodeTarget, state_dir: Path) -> Doc:
    """The node-section values that make a node plugin ``target``'s: its host folders, node ID
    and device folder and, for a named node, its pinning (node selector and selector label)."""
    values: Doc = {
        "hostPaths": {name: _host_path(name, state_dir, target) for name in NODE_HOST_PATHS},
        "extraEnv": [
            {"name": "CSI_OXIDE_NODE_ID", "value": target.node_id},
            {"name": "CSI_OXIDE_SIM_DEVICE_DIR", "value": target.device_dir},
        ],
        "extraVolumes": [
            {"name": "sim-devices", "hostPath": {"path": target.device_dir, "type": "Directory"}}
        ],
        "extraVolumeMounts": [
            {"name": "sim-devices", "mountPath": target.device_dir, "readOnly": True}
        ],
    }
    if target.node is not None:
        values["nodeSelector"] = {"kubernetes.io/hostname": target.node}
        values["selectorLabels"] = {NODE_LABEL: target.node}
    return values


def _additional(targets: Sequence[NodeTarget], state_dir: Path) -> Doc:
    """``node.additionalDaemonSets`` for the nodes after the first: keyed by their tag less its
    dash, so the chart names each ``csi-oxide-node<tag>`` as overlay.py does."""
    extra: Doc = {}
    for target in targets:
        if target.node is None or not target.tag.startswith("-"):
            raise ValueError(f"a further node needs a name and a tag like '-b': {target}")
        extra[target.tag[1:]] = {
            **_node_plugin(target, state_dir),
            "kubeletDir": str(target.kubelet_dir),
            "metrics": {"port": target.port},
        }
    return extra


def _targets(sim_env: Mapping[str, str], kubelet_dir: Path, port: int) -> list[NodeTarget]:
    """The one-node layout's one target (overlay.py's): every node, the simulator's instance."""
    return [
        NodeTarget(
            None,
            kubelet_dir,
            sim_env["CSI_OXIDE_NODE_ID"],
            sim_env["CSI_OXIDE_SIM_DEVICE_DIR"],
            port,
        )
    ]


def cluster_values(
    *,
    sim_env: Mapping[str, str],
    api_port: int,
    kubelet_dir: Path,
    state_dir: Path,
    ports: tuple[int, int],
    run: str,
    nodes: Sequence[NodeTarget] = (),
    startup_taint: bool = False,
) -> Doc:
    """The chart values for the test cluster (same arguments as overlay.overlay). With ``nodes``,
    the main DaemonSet is the first node's and one additional DaemonSet serves each further node
    (``kubelet_dir`` and ``ports[1]`` are then unused); without, one for the one node."""
    first, *rest = list(nodes) or _targets(sim_env, kubelet_dir, ports[1])
    if first.tag:
        raise ValueError(f"the first node's DaemonSet is csi-oxide-node, without a tag: {first}")
    annotations = {"csi-oxide-e2e/run": run}
    node = {"podAnnotations": annotations, **_node_plugin(first, state_dir)}
    if rest:
        node["additionalDaemonSets"] = _additional(rest, state_dir)
    return {
        "credentials": {
            "host": sim_env["OXIDE_HOST"],
            "token": sim_env["OXIDE_TOKEN"],
            "project": sim_env["OXIDE_PROJECT"],
        },
        "hostNetwork": True,
        "apiServer": {"host": "127.0.0.1", "port": str(api_port)},
        "metrics": {
            "enabled": True,
            "controller": {"address": "127.0.0.1", "port": ports[0]},
            "node": {"address": "127.0.0.1", "port": first.port},
        },
        "probeHost": "127.0.0.1",
        "kubeletDir": str(first.kubelet_dir),
        "controller": {"replicas": 1, "podAnnotations": annotations},
        "node": node,
        "startupTaint": {"enabled": startup_taint},
    }


def _values_file(values: Mapping[str, Any], folder: Path, name: str) -> Path:
    """The values as a file only its owner can read (they may hold a token)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(dict(values), f)
    return path


def _run(helm: Path, args: Sequence[str], home: Path) -> str:
    done = subprocess.run(
        [str(helm), *args], env=helm_env(home), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def render(
    values: Mapping[str, Any] | None,
    work: Path,
    *,
    helm: Path | None = None,
    namespace: str = NAMESPACE,
    extra_args: Sequence[str] = (),
) -> list[Doc]:
    """``helm template`` of the chart with ``values`` (None: the defaults), as objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", namespace, *extra_args]
    if values is not None:
        args += ["--values", str(_values_file(values, work, "values.yaml"))]
    out = _run(helm or helm_binary(), args, work / "helm-home")
    return [d for d in yaml.safe_load_all(out) if d]


def install(
    kubeconfig: Path,
    *,
    sim_env: Mapping[str, str],
    api_port: int,
    kubelet_dir: Path,
    state_dir: Path,
    ports: tuple[int, int],
    run: str,
    nodes: Sequence[NodeTarget] = (),
    startup_taint: bool = False,
    helm: Path | None = None,
    wait: bool = False,
    timeout: str = "5m",
) -> None:
    """``helm upgrade --install`` of the chart into the test cluster, with ``cluster_values``
    (``nodes``: one node plugin per node, as stack.node_targets makes them; empty on one node)."""
    values = cluster_values(
        sim_env=sim_env,
        api_port=api_port,
        kubelet_dir=kubelet_dir,
        state_dir=state_dir,
        ports=ports,
        run=run,
        nodes=nodes,
        startup_taint=startup_taint,
    )
    work = state_dir / "helm"
    args = [
        "upgrade", "--install", RELEASE, str(CHART),
        "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig),
        "--values", str(_values_file(values, work, f"values-{run}.yaml")),
    ]  # fmt: skip
    if wait:
        args += ["--wait", "--timeout", timeout]
    _run(helm or helm_binary(), args, work / "home")


def run_chart_tests(kubeconfig: Path, state_dir: Path, *, helm: Path | None = None) -> str:
    """``helm test`` of the release: the chart's doctor pods (controller, and one per node-plugin
    DaemonSet) run and must pass; their logs (``--logs``). RuntimeError when one fails."""
    args = [
        "test", RELEASE, "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig),
        "--logs", "--timeout", "5m",
    ]  # fmt: skip
    return _run(helm or helm_binary(), args, state_dir / "helm" / "home")


def uninstall(kubeconfig: Path, state_dir: Path, *, helm: Path | None = None) -> None:
    """``helm uninstall`` of the release (it must exist)."""
    args = ["uninstall", RELEASE, "--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig)]
    _run(helm or helm_binary(), args, state_dir / "helm" / "home")
