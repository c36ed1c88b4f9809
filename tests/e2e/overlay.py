"""The test overlay: deploy/kubernetes/base rendered by kustomize, plus what this cluster needs.

Every change below is one a real cluster would not need; anything a real cluster needs too is
fixed in the base instead. What differs here:

- the Secret holds the simulator's address, token and project;
- one controller replica;
- host networking for the driver's pods, with KUBERNETES_SERVICE_HOST/PORT naming the API server
  on 127.0.0.1 (this cluster has no kube-proxy), metrics/health on 127.0.0.1 ports of their own and
  the liveness probes aimed at 127.0.0.1 (a host-network pod's probe otherwise goes to the node's
  address, which nothing here may contact);
- the node plugin: the simulator's local instance as node ID, the simulator's device folder (so it
  accepts the simulator's loop devices as disks), and the kubelet's folder moved to the test's
  ``--root-dir`` (same path inside the container, as the kubelet passes host paths); a host folder
  the base names that this machine lacks (its state folder, /run/udev) is made in the test's state
  folder instead;
- a run annotation on both pod templates, so re-applying with a new simulator rolls the pods;
- on two nodes (one machine), one node-plugin DaemonSet per node, pinned to it by its
  ``kubernetes.io/hostname``, each with its kubelet's folder, its simulated instance's ID and
  device folder, a health port and host folders of its own (a real node gets its ID from its
  instance's SMBIOS, and has its own /var/lib and ports, so one DaemonSet serves them all).
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
# The base with the startup-taint component: what the test cluster installs.
WITH_STARTUP_TAINT = ROOT / "deploy" / "kubernetes" / "examples" / "startup-taint"
KUBELET_DIR = "/var/lib/kubelet"

Doc = dict[str, Any]


def render_base(kubectl: Path, folder: Path = BASE) -> list[Doc]:
    """``kubectl kustomize deploy/kubernetes/base`` (or another kustomization ``folder``, such
    as an example overlay of it) as objects."""
    out = subprocess.run(
        [str(kubectl), "kustomize", str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _containers(doc: Doc) -> Iterator[Doc]:
    yield from doc["spec"]["template"]["spec"]["containers"]


def _set_env(container: Doc, values: Mapping[str, str]) -> None:
    env = [e for e in container.get("env", []) if e["name"] not in values]
    env += [{"name": k, "value": v} for k, v in values.items()]
    container["env"] = env


def _set_flag(container: Doc, flag: str, value: str) -> None:
    args = [a for a in container.get("args", []) if not a.startswith(f"--{flag}=")]
    args.append(f"--{flag}={value}")
    container["args"] = args


def _loopback_health(container: Doc, port: int) -> None:
    """Metrics and /healthz on 127.0.0.1:port, the liveness probe aimed there."""
    _set_flag(container, "metrics-address", f"127.0.0.1:{port}")
    container["ports"] = [{"name": "metrics", "containerPort": port}]
    probe = container.get("livenessProbe")
    if probe is not None and "httpGet" in probe:
        probe["httpGet"]["host"] = "127.0.0.1"
        probe["httpGet"]["port"] = port


def _move_kubelet_dir(path: str, kubelet_dir: Path) -> str:
    if path == KUBELET_DIR or path.startswith(KUBELET_DIR + "/"):
        return str(kubelet_dir) + path[len(KUBELET_DIR) :]
    return path


@dataclass(frozen=True)
class NodeTarget:
    """One node's node plugin: the node it runs on (None: every node, the one-node layout), its
    kubelet's folder, its instance's ID and device folder, its health port and a tag naming
    its DaemonSet (``csi-oxide-node<tag>``) and host folders."""

    node: str | None
    kubelet_dir: Path
    node_id: str
    device_dir: str
    port: int
    tag: str = ""


def overlay(
    base: list[Doc],
    *,
    sim_env: Mapping[str, str],
    api_port: int,
    kubelet_dir: Path,
    state_dir: Path,
    ports: tuple[int, int],
    run: str,
    nodes: Sequence[NodeTarget] = (),
) -> list[Doc]:
    """The base objects changed for this cluster (see the module's docstring). With ``nodes``,
    one node-plugin DaemonSet per node, pinned to it (``kubelet_dir`` and ``ports[1]`` are then
    unused); without, one for the one node, from ``kubelet_dir`` and the simulator's env."""
    targets = list(nodes) or [
        NodeTarget(
            None,
            kubelet_dir,
            sim_env["CSI_OXIDE_NODE_ID"],
            sim_env["CSI_OXIDE_SIM_DEVICE_DIR"],
            ports[1],
        )
    ]
    docs: list[Doc] = []
    for doc in copy.deepcopy(base):
        kind = doc["kind"]
        if kind == "Secret" and doc["metadata"]["name"] == "oxide-credentials":
            doc.pop("data", None)
            doc["stringData"] = {
                "oxide-host": sim_env["OXIDE_HOST"],
                "oxide-token": sim_env["OXIDE_TOKEN"],
                "oxide-project": sim_env["OXIDE_PROJECT"],
            }
        if kind == "Deployment":
            _host_network(doc, run)
            _controller(doc, api_port, ports[0])
        if kind == "DaemonSet":
            for target in targets:
                one = copy.deepcopy(doc)
                _host_network(one, run)
                _node_plugin(one, target, state_dir, api_port)
                docs.append(one)
            continue
        docs.append(doc)
    return docs


# What the chart renders for the controller's Deployment with hostNetwork and no updateStrategy.
HOST_NETWORK_STRATEGY = {
    "type": "RollingUpdate",
    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
}


def _host_network(doc: Doc, run: str) -> None:
    pod = doc["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    doc["spec"]["template"]["metadata"].setdefault("annotations", {})["csi-oxide-e2e/run"] = run


def _api_env(api_port: int) -> dict[str, str]:
    """The API server on loopback, for host-network containers that call it (no kube-proxy)."""
    return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port)}


def _controller(doc: Doc, api_port: int, port: int) -> None:
    api_env = _api_env(api_port)
    doc["spec"]["replicas"] = 1
    # On the host network a replica's ports are the node's: a rollout replaces before it adds.
    doc["spec"]["strategy"] = HOST_NETWORK_STRATEGY
    # And its hostname too, which the sidecars' leader elections name it by: one per node.
    term = {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": doc["spec"]["selector"]["matchLabels"]},
    }
    anti = (
        doc["spec"]["template"]["spec"].setdefault("affinity", {}).setdefault("podAntiAffinity", {})
    )
    anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", []).append(term)
    for c in _containers(doc):
        _set_env(c, api_env)
        if c["name"] == "csi-oxide":
            _loopback_health(c, port)


def _pin(doc: Doc, target: NodeTarget) -> None:
    """The DaemonSet renamed after ``target`` and run on its node only."""
    if target.node is None:
        return
    doc["metadata"]["name"] += target.tag
    label = {"csi-oxide-e2e/node": target.node}
    doc["spec"]["selector"]["matchLabels"].update(label)
    template = doc["spec"]["template"]
    template["metadata"]["labels"].update(label)
    template["spec"]["nodeSelector"] = {"kubernetes.io/hostname": target.node}


def _node_plugin(doc: Doc, target: NodeTarget, state_dir: Path, api_port: int) -> None:
    _pin(doc, target)
    pod = doc["spec"]["template"]["spec"]
    kubelet_dir = target.kubelet_dir
    for volume in pod.get("volumes", []):
        host = volume.get("hostPath")
        if host is None:
            continue
        host["path"] = _move_kubelet_dir(host["path"], kubelet_dir)
        outside = not host["path"].startswith(str(kubelet_dir))
        missing = not Path(host["path"]).exists()
        # Several nodes on one machine: each keeps the folders the plugin may create (its
        # records, /run/udev) apart, as separate machines would.
        own = target.node is not None and host.get("type") == "DirectoryOrCreate"
        if host.get("type") in ("Directory", "DirectoryOrCreate") and (missing or own) and outside:
            # A host folder this machine lacks (a state folder, /run/udev): made in the test's
            # state folder instead of on the host, one per node.
            host["path"] = str(state_dir / f"hostpaths{target.tag}") + host["path"]
            Path(host["path"]).mkdir(parents=True, exist_ok=True)
    pod["volumes"].append(
        {"name": "sim-devices", "hostPath": {"path": target.device_dir, "type": "Directory"}}
    )
    for c in _containers(doc):
        for mount in c.get("volumeMounts", []):
            mount["mountPath"] = _move_kubelet_dir(mount["mountPath"], kubelet_dir)
        c["args"] = [_moved_flag(a, kubelet_dir) for a in c.get("args", [])]
        if c["name"] == "csi-oxide":
            _loopback_health(c, target.port)
            if "--startup-taint" in c["args"]:  # it calls the API server (the startup taint)
                _set_env(c, _api_env(api_port))
            _set_env(
                c,
                {
                    "CSI_OXIDE_NODE_ID": target.node_id,
                    "CSI_OXIDE_SIM_DEVICE_DIR": target.device_dir,
                },
            )
            c["volumeMounts"].append(
                {"name": "sim-devices", "mountPath": target.device_dir, "readOnly": True}
            )


def _moved_flag(arg: str, kubelet_dir: Path) -> str:
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return f"{flag}={_move_kubelet_dir(value, kubelet_dir)}"
    return arg
