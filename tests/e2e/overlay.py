"""The test overlay: deploy/kubernetes/base rendered by kustomize, plus what this cluster needs.

Every change below is one a real cluster would not need; anything a real cluster needs too is
fixed in the base instead. What differs here:

- the Secret holds the simulator's address, token and project;
- one controller replica (one node);
- host networking for the driver's pods, with KUBERNETES_SERVICE_HOST/PORT naming the API server
  on 127.0.0.1 (this cluster has no kube-proxy), metrics/health on 127.0.0.1 ports of their own and
  the liveness probes aimed at 127.0.0.1 (a host-network pod's probe otherwise goes to the node's
  address, which nothing here may contact);
- the node plugin: the simulator's local instance as node ID, the simulator's device folder (so it
  accepts the simulator's loop devices as disks), and the kubelet's folder moved to the test's
  ``--root-dir`` (same path inside the container, as the kubelet passes host paths); a host folder
  the base names that this machine lacks (its state folder, /run/udev) is made in the test's state
  folder instead;
- a run annotation on both pod templates, so re-applying with a new simulator rolls the pods.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
KUBELET_DIR = "/var/lib/kubelet"

Doc = dict[str, Any]


def render_base(kubectl: Path) -> list[Doc]:
    """``kubectl kustomize deploy/kubernetes/base`` as objects."""
    out = subprocess.run(
        [str(kubectl), "kustomize", str(BASE)], check=True, capture_output=True, text=True
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


def overlay(
    base: list[Doc],
    *,
    sim_env: Mapping[str, str],
    api_port: int,
    kubelet_dir: Path,
    state_dir: Path,
    ports: tuple[int, int],
    run: str,
) -> list[Doc]:
    """The base objects changed for this cluster (see the module's docstring)."""
    docs = copy.deepcopy(base)
    api_env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port)}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Secret" and name == "oxide-credentials":
            doc.pop("data", None)
            doc["stringData"] = {
                "oxide-host": sim_env["OXIDE_HOST"],
                "oxide-token": sim_env["OXIDE_TOKEN"],
                "oxide-project": sim_env["OXIDE_PROJECT"],
            }
        if kind not in ("Deployment", "DaemonSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        pod["hostNetwork"] = True
        pod["dnsPolicy"] = "ClusterFirstWithHostNet"
        doc["spec"]["template"]["metadata"].setdefault("annotations", {})["csi-oxide-e2e/run"] = run
        if kind == "Deployment":
            doc["spec"]["replicas"] = 1
            for c in _containers(doc):
                _set_env(c, api_env)
                if c["name"] == "csi-oxide":
                    _loopback_health(c, ports[0])
        else:
            device_dir = sim_env["CSI_OXIDE_SIM_DEVICE_DIR"]
            for volume in pod.get("volumes", []):
                host = volume.get("hostPath")
                if host is None:
                    continue
                host["path"] = _move_kubelet_dir(host["path"], kubelet_dir)
                outside = not host["path"].startswith(str(kubelet_dir))
                missing = not Path(host["path"]).exists()
                if host.get("type") in ("Directory", "DirectoryOrCreate") and missing and outside:
                    # A host folder this machine lacks (a state folder, /run/udev): made in the
                    # test's state folder instead of on the host.
                    host["path"] = str(state_dir / "hostpaths") + host["path"]
                    Path(host["path"]).mkdir(parents=True, exist_ok=True)
            pod["volumes"].append(
                {"name": "sim-devices", "hostPath": {"path": device_dir, "type": "Directory"}}
            )
            for c in _containers(doc):
                for mount in c.get("volumeMounts", []):
                    mount["mountPath"] = _move_kubelet_dir(mount["mountPath"], kubelet_dir)
                args = c.get("args", [])
                c["args"] = [
                    a.split("=", 1)[0] + "=" + _move_kubelet_dir(a.split("=", 1)[1], kubelet_dir)
                    if a.startswith("--") and "=" in a
                    else a
                    for a in args
                ]
                if c["name"] == "csi-oxide":
                    _loopback_health(c, ports[1])
                    _set_env(
                        c,
                        {
                            "CSI_OXIDE_NODE_ID": sim_env["CSI_OXIDE_NODE_ID"],
                            "CSI_OXIDE_SIM_DEVICE_DIR": device_dir,
                        },
                    )
                    c["volumeMounts"].append(
                        {"name": "sim-devices", "mountPath": device_dir, "readOnly": True}
                    )
    return docs
