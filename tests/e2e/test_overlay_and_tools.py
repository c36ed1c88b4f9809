"""The cluster test's own logic that needs no cluster: the overlay and the wrapper-module builds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.e2e import overlay

ROOT = Path(__file__).resolve().parents[2]
SIM_ENV = {
    "OXIDE_HOST": "http://127.0.0.1:41000",
    "OXIDE_TOKEN": "oxide-token-abc",
    "OXIDE_PROJECT": "csi",
    "CSI_OXIDE_NODE_ID": "7b0c3c1e-8f3a-4f4e-9a51-0d3f1c2b5a6e",
    "CSI_OXIDE_SIM_DEVICE_DIR": "/tmp/e2e-sim/disks",
}


def _base() -> list[Any]:
    files = sorted(overlay.BASE.glob("*.yaml"))
    return [
        d
        for f in files
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]


def _overlaid(state: Path) -> list[Any]:
    return overlay.overlay(
        _base(),
        sim_env=SIM_ENV,
        api_port=6443,
        kubelet_dir=state / "kubelet",
        state_dir=state,
        ports=(19090, 19091),
        run="r1",
    )


def _one(docs: list[Any], kind: str) -> Any:
    return next(d for d in docs if d["kind"] == kind)


def test_nothing_is_aimed_outside_loopback(tmp_path: Path) -> None:
    docs = _overlaid(tmp_path)
    for kind in ("Deployment", "DaemonSet"):
        pod = _one(docs, kind)["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        for c in pod["containers"]:
            probe = c.get("livenessProbe")
            if probe is not None:
                # A host-network pod's probe would otherwise go to the node's own address.
                assert probe["httpGet"]["host"] == "127.0.0.1", (kind, c["name"])
            if c["name"] == "csi-oxide":
                flags = [a for a in c["args"] if a.startswith("--metrics-address=")]
                assert flags == [f"--metrics-address=127.0.0.1:{probe['httpGet']['port']}"]
    secret = _one(docs, "Secret")["stringData"]
    assert secret["oxide-host"].startswith("http://127.0.0.1:")


def test_the_kubelet_folder_moves_everywhere_the_node_plugin_names_it(tmp_path: Path) -> None:
    kubelet = tmp_path / "kubelet"
    node = _one(_overlaid(tmp_path), "DaemonSet")["spec"]["template"]["spec"]
    text = yaml.safe_dump(node)
    assert "/var/lib/kubelet" not in text
    ours = next(c for c in node["containers"] if c["name"] == "csi-oxide")
    mounts = {m["name"]: m["mountPath"] for m in ours["volumeMounts"]}
    hosts = {v["name"]: v["hostPath"]["path"] for v in node["volumes"]}
    assert mounts["kubelet-dir"] == hosts["kubelet-dir"] == str(kubelet)
    assert (
        f"--kubelet-registration-path={kubelet}/plugins/csi.oxide.computer/csi.sock" in ours["args"]
    )
    env = {e["name"]: e["value"] for e in ours["env"] if "value" in e}
    assert env["CSI_OXIDE_NODE_ID"] == SIM_ENV["CSI_OXIDE_NODE_ID"]
    assert mounts["sim-devices"] == hosts["sim-devices"] == SIM_ENV["CSI_OXIDE_SIM_DEVICE_DIR"]
    for path in hosts.values():
        # Host folders the base would create when absent go to the state folder instead.
        assert (
            Path(path).exists() or path.startswith(str(tmp_path)) or path.startswith("/tmp/e2e-sim")
        )


def test_the_base_is_not_changed_in_place(tmp_path: Path) -> None:
    base = _base()
    before = yaml.safe_dump_all(base)
    overlay.overlay(
        base, sim_env=SIM_ENV, api_port=1, kubelet_dir=tmp_path / "k", state_dir=tmp_path,
        ports=(1, 2), run="x",
    )  # fmt: skip
    assert yaml.safe_dump_all(base) == before


def _build_tools() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_tools", ROOT / "scripts" / "cluster" / "build_tools.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_tools"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_wrapper_replaces_point_at_published_modules() -> None:
    bt = _build_tools()
    kube = next(t for t in bt.TOOLS if t.name == "kube-apiserver")
    gomod = {
        "Replace": [
            {"Old": {"Path": "k8s.io/api"}, "New": {"Path": "./staging/src/k8s.io/api"}},
            {
                "Old": {"Path": "github.com/x/y", "Version": "v1.0.0"},
                "New": {"Path": "github.com/x/y", "Version": "v1.0.1"},
            },
        ]
    }
    assert bt._replace_lines(kube, gomod) == [
        "k8s.io/api => k8s.io/api v0.34.4",
        "github.com/x/y v1.0.0 => github.com/x/y v1.0.1",
    ]
    snap = next(t for t in bt.TOOLS if t.name == "csi-snapshotter")
    client = "github.com/kubernetes-csi/external-snapshotter/client/v8"
    lines = bt._replace_lines(
        snap, {"Replace": [{"Old": {"Path": client}, "New": {"Path": "./client"}}]}
    )
    assert lines == [f"{client} => {client} v8.6.0"]


def test_binaries_are_cached_by_version() -> None:
    bt = _build_tools()
    paths = {t.name: bt.cached_path(Path("/cache"), t) for t in bt.TOOLS}
    assert paths["kubelet"] == Path("/cache/kubelet-v1.34.4")
    assert paths["csi-resizer"] == Path("/cache/csi-resizer-v2.3.0")
    assert len(set(paths.values())) == len(paths)


def test_two_nodes_get_a_node_plugin_each(tmp_path: Path) -> None:
    targets = [
        overlay.NodeTarget("localhost", tmp_path / "kubelet", "id-a", "/sim/local-0", 19091),
        overlay.NodeTarget(
            "127.0.0.2", tmp_path / "node-b" / "kubelet", "id-b", "/sim/local-1", 19092, "-b"
        ),
    ]
    docs = overlay.overlay(
        _base(), sim_env=SIM_ENV, api_port=6443, kubelet_dir=tmp_path / "unused",
        state_dir=tmp_path, ports=(19090, 0), run="r1", nodes=targets,
    )  # fmt: skip
    plugins = [d for d in docs if d["kind"] == "DaemonSet"]
    assert [d["metadata"]["name"] for d in plugins] == ["csi-oxide-node", "csi-oxide-node-b"]
    assert len([d for d in docs if d["kind"] == "Deployment"]) == 1
    for doc, target in zip(plugins, targets, strict=True):
        pod = doc["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": target.node}
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ours = next(c for c in pod["containers"] if c["name"] == "csi-oxide")
        env = {e["name"]: e.get("value") for e in ours["env"]}
        assert env["CSI_OXIDE_NODE_ID"] == target.node_id
        assert env["CSI_OXIDE_SIM_DEVICE_DIR"] == target.device_dir
        assert f"--metrics-address=127.0.0.1:{target.port}" in ours["args"]
        hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
        assert hosts["kubelet-dir"] == str(target.kubelet_dir)
        assert hosts["state-dir"].startswith(str(tmp_path / f"hostpaths{target.tag}/"))
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in plugins]
    assert len(set(selectors)) == 2  # neither DaemonSet adopts the other's pods
