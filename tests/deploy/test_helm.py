"""The Helm chart (deploy/helm/csi-oxide), rendered by the real helm and compared with the base.

helm is built from its Go module (scripts/cluster/build_tools.py, cached under .tools/cluster);
the base is rendered by the real ``kubectl kustomize``. With default values the chart must render
the base's objects, object by object and whole, except for the differences in ALLOWED_DIFFERENCES
(the one list of them). Renderings are what ``helm install`` creates on a cluster that serves the
snapshot API (the base's VolumeSnapshotClass needs its CRDs; ``render`` passes ``--api-versions``
for them unless told not to), without the ``helm test`` pods (``--skip-tests``, unless told to
keep them); a cluster without the CRDs gets everything but the VolumeSnapshotClass. With the test
cluster's values (tests/e2e/helm.py) the chart must render what tests/e2e/overlay.py makes of the
base for the same inputs, on one node and on two (one node-plugin DaemonSet per node, the further
ones through node.additionalDaemonSets). Then what the values claim to do (issue #32's among
them: NOTES.txt and the ``helm test`` pods too), what helm lint says, and that bad values stop
the render with a message.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from csi_oxide import DRIVER_NAME, __version__
from csi_oxide.cli import build_parser
from csi_oxide.commands import doctor
from csi_oxide.contract.mount_options import mount_flags
from csi_oxide.contract.volumes import FILESYSTEMS
from csi_oxide.controller.record import check_cluster_id
from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide.credentials import load_credentials
from tests import skips
from tests.deploy.test_deploy_manifests import K8S_VERSIONS, _validate
from tests.e2e import helm as chart
from tests.e2e import overlay

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "cluster" / "kubectl-v1.34.4"
# The module's first test may build helm from its Go module (a minute with a warm module cache,
# several on a fresh machine).
pytestmark = pytest.mark.timeout(900)
NAMESPACE = "kube-system"

Doc = dict[str, Any]
Key = tuple[str, str, str | None]

# Helm's recommended labels, on every object's metadata (not on pod templates or selectors). The
# chart's appVersion is the driver's version: the default image tag, like the base's newTag.
HELM_LABELS = {
    "app.kubernetes.io/name": "csi-oxide",
    "app.kubernetes.io/instance": chart.RELEASE,
    "app.kubernetes.io/version": __version__,
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "csi-oxide-"
    + yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["version"],
}

# Every way the chart's objects may differ from the base's (or from overlay.py's output), with the
# reason. compare() applies exactly these and nothing else.
ALLOWED_DIFFERENCES = {
    "helm-labels": "every object's metadata.labels also carry Helm's recommended labels "
    "(HELM_LABELS); the base's own labels stay, with the same values. Pod template labels and "
    "selectors are the base's (a selector is immutable, so it must not carry a version).",
    "flag-order": "the order of --flag=value arguments in a container's args: the driver and the "
    "sidecars parse flags by name, and overlay.py appends each flag it changes at the end.",
    "probe-port-name": "a liveness probe's port given by name or as the number the name stands "
    "for in the container's ports (the kubelet resolves the name); overlay.py writes the number.",
}


def _helm() -> Path:
    """The helm binary (built from its Go module if need be), or ``skips.unavailable``."""
    try:
        return chart.helm_binary(build=True)
    except FileNotFoundError as exc:
        skips.unavailable(f"no helm: {exc} (make helm builds it)")
    except subprocess.CalledProcessError as exc:
        skips.unavailable(f"helm could not be built from its Go module: {exc}")


@pytest.fixture(scope="module")
def helm() -> Path:
    return _helm()


def test_without_go_helm_binary_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(chart, "helm_path", lambda: tmp_path / "helm-v3.22.0")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no go to build it with"):
        chart.helm_binary()


def test_a_missing_helm_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_helm(build: bool = False) -> Path:
        raise FileNotFoundError("no helm-v3.22.0 and no go to build it with")

    monkeypatch.setattr(chart, "helm_binary", no_helm)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no helm"):
        _helm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no helm.*CI is set"):
        _helm()


@pytest.fixture(scope="module")
def kubectl() -> Path:
    if KUBECTL.exists():
        return KUBECTL
    found = shutil.which("kubectl")
    if found is None:
        skips.unavailable("no kubectl (.tools/cluster or PATH) to render the kustomize base with")
    return Path(found)


@pytest.fixture(scope="module")
def base(kubectl: Path) -> list[Doc]:
    return overlay.render_base(kubectl)


# What a cluster with the external-snapshotter CRDs serves, as helm's discovery would list it.
SNAPSHOT_API = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass"


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Callable[..., list[Doc]]:
    """``helm template`` of the chart: the objects ``helm install`` creates, on a cluster serving
    the snapshot API (``snapshot_api=False``: one without it); ``tests=True`` adds the test pods."""

    def _render(
        values: Doc | None = None, *extra: str, tests: bool = False, snapshot_api: bool = True
    ) -> list[Doc]:
        args = [*extra, *([] if tests else ["--skip-tests"])]
        if snapshot_api:
            args += ["--api-versions", SNAPSHOT_API]
        return chart.render(values, tmp_path, helm=helm, extra_args=args)

    return _render


# ---- comparison --------------------------------------------------------------------------------


def _key(doc: Doc) -> Key:
    return (doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace"))


def _pod(doc: Doc) -> Doc:
    pod: Doc = doc["spec"]["template"]["spec"]
    return pod


def _normalized(doc: Doc) -> Doc:
    """``doc`` with the flag-order and probe-port-name differences taken out (both sides)."""
    doc = copy.deepcopy(doc)
    if doc["kind"] not in ("Deployment", "DaemonSet"):
        return doc
    for c in _pod(doc)["containers"]:
        args = c.get("args", [])
        positional = [a for a in args if not a.startswith("--")]
        c["args"] = positional + sorted(a for a in args if a.startswith("--"))
        http = (c.get("livenessProbe") or {}).get("httpGet")
        if http is not None and isinstance(http["port"], str):
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            http["port"] = ports[http["port"]]
    return doc


def _without_helm_labels(base: Doc, ours: Doc) -> tuple[Doc, list[str]]:
    """``ours`` less Helm's labels the base lacks (helm-labels), and any label that is wrong."""
    ours = copy.deepcopy(ours)
    labels = ours["metadata"].get("labels", {})
    problems = [
        f"{_key(ours)}: label {k}={labels.get(k)!r}, expected {v!r}"
        for k, v in HELM_LABELS.items()
        if labels.get(k) != v
    ]
    base_labels = base["metadata"].get("labels", {})
    for k in HELM_LABELS:
        if k not in base_labels:
            labels.pop(k, None)
    if not labels:
        ours["metadata"].pop("labels", None)
    return ours, problems


def _paths(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two parsed objects differ, as readable paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'base' if k in a else 'chart'}")
            else:
                out += _paths(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _paths(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: base {a!r} != chart {b!r}"]


def compare(base: list[Doc], ours: list[Doc]) -> list[str]:
    """Every difference between two object lists beyond ALLOWED_DIFFERENCES (empty: the same)."""
    by_key = {_key(d): d for d in base}
    mine = {_key(d): d for d in ours}
    assert len(by_key) == len(base) and len(mine) == len(ours), "duplicate objects"
    problems = [f"{k}: only in the base" for k in sorted(by_key.keys() - mine.keys(), key=str)]
    problems += [f"{k}: only in the chart" for k in sorted(mine.keys() - by_key.keys(), key=str)]
    for key in sorted(by_key.keys() & mine.keys(), key=str):
        theirs, labelled = by_key[key], mine[key]
        unlabelled, wrong = _without_helm_labels(theirs, labelled)
        problems += wrong
        problems += [f"{key}{p}" for p in _paths(_normalized(theirs), _normalized(unlabelled))]
    return problems


def test_default_values_render_the_kustomize_base(base: list[Doc], render: Any) -> None:
    ours = render()
    assert compare(base, ours) == []
    # Twelve kinds, thirteen objects: the comparison really covered them all.
    assert len(ours) == 13
    assert {d["kind"] for d in ours} >= {
        "CSIDriver",
        "Secret",
        "DaemonSet",
        "VolumeSnapshotClass",
        "PodDisruptionBudget",
    }


def test_the_startup_taint_renders_the_kustomize_component(kubectl: Path, render: Any) -> None:
    example = overlay.render_base(kubectl, overlay.BASE.parent / "examples" / "startup-taint")
    ours = render({"startupTaint": {"enabled": True}})
    assert compare(example, ours) == []
    node = _container(_one(ours, "DaemonSet"), "csi-oxide")
    assert "--startup-taint" in node["args"]
    assert _pod(_one(ours, "DaemonSet"))["automountServiceAccountToken"] is True
    role = next(d for d in ours if d["kind"] == "ClusterRole" and "taint" in d["metadata"]["name"])
    verbs = {r["resources"][0]: r["verbs"] for r in role["rules"]}
    assert verbs == {"nodes": ["get", "patch"], "csinodes": ["get"]}  # and nothing more
    # Off by default: the node plugin holds no token.
    assert _pod(_one(render(), "DaemonSet"))["automountServiceAccountToken"] is False


def test_the_comparison_sees_a_difference(base: list[Doc], render: Any) -> None:
    """compare() is not blind: a changed field, a dropped object and a wrong label all show."""
    ours = render({"controller": {"replicas": 3}, "volumeSnapshotClass": {"create": False}})
    ours[0]["metadata"]["labels"]["helm.sh/chart"] = "other"
    problems = compare(base, ours)
    assert any(".spec.replicas: base 2 != chart 3" in p for p in problems), problems
    assert any("VolumeSnapshotClass" in p and "only in the base" in p for p in problems)
    assert any("helm.sh/chart='other'" in p for p in problems)
    reordered = copy.deepcopy(base)
    args = _pod(next(d for d in reordered if d["kind"] == "DaemonSet"))["containers"][0]["args"]
    args.insert(0, args.pop())  # flag order alone is an allowed difference...
    args[0] = args[0] + "x"  # ...a changed flag is not
    assert len(compare(reordered, render())) == 1


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendering_validates_strictly(render: Any, version: str, tmp_path: Path) -> None:
    for values in (
        None,
        _official(),
        _everything_set(),
        _test_values(tmp_path),
        _two_node_values(tmp_path),
        _node_groups(),
        {**_node_groups(), **_official()},
        _new_values(),
        _merged(_new_values(), _node_groups()),
    ):
        for doc in render(values, tests=True):
            _validate_any(doc, version)
    # Without the snapshot API too (the class left out, nothing else changed).
    for doc in render(None, snapshot_api=False):
        _validate_any(doc, version)


def test_helm_lint_strict_passes(helm: Path, tmp_path: Path) -> None:
    every_new_value = tmp_path / "new-values.yaml"
    every_new_value.write_text(yaml.safe_dump(_new_values()))
    for extra in (
        [],
        ["--set", "registration.mode=official"],
        ["--values", str(every_new_value)],  # the VolumeSnapshotClass too (forceCreate)
    ):
        done = subprocess.run(
            [str(helm), "lint", "--strict", str(chart.CHART), *extra],
            env=chart.helm_env(tmp_path),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


# ---- the test cluster's values (tests/e2e/helm.py) against overlay.py -------------------------

SIM_ENV = {
    "OXIDE_HOST": "http://127.0.0.1:41000",
    "OXIDE_TOKEN": "oxide-token-abc",
    "OXIDE_PROJECT": "csi",
    "CSI_OXIDE_NODE_ID": "7b0c3c1e-8f3a-4f4e-9a51-0d3f1c2b5a6e",
    "CSI_OXIDE_SIM_DEVICE_DIR": "/tmp/e2e-sim/disks",
}
INPUTS: dict[str, Any] = {
    "sim_env": SIM_ENV,
    "api_port": 6443,
    "ports": (19090, 19091),
    "run": "r1",
}


def _test_values(state: Path) -> Doc:
    return chart.cluster_values(kubelet_dir=state / "kubelet", state_dir=state, **INPUTS)


def test_the_test_cluster_values_render_what_the_overlay_makes(
    base: list[Doc], render: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    expected = overlay.overlay(base, kubelet_dir=state / "kubelet", state_dir=state, **INPUTS)
    ours = render(_test_values(state))
    assert compare(expected, ours) == []
    # The inputs really landed (the comparison is not between two unchanged renderings).
    secret = _one(ours, "Secret")["stringData"]
    assert secret["oxide-token"] == SIM_ENV["OXIDE_TOKEN"]
    node = _pod(_one(ours, "DaemonSet"))
    assert node["hostNetwork"] is True
    assert "/var/lib/kubelet" not in yaml.safe_dump(node)


def _two_nodes(state: Path) -> list[overlay.NodeTarget]:
    """The two nodes of the test cluster, as stack.node_targets makes them."""
    return [
        overlay.NodeTarget("localhost", state / "kubelet", "id-a", "/sim/local-0", 19091),
        overlay.NodeTarget(
            "127.0.0.2", state / "node-b" / "kubelet", "id-b", "/sim/local-1", 19092, "-b"
        ),
    ]


def _two_node_values(state: Path, startup_taint: bool = False) -> Doc:
    return chart.cluster_values(
        kubelet_dir=state / "unused",
        state_dir=state,
        nodes=_two_nodes(state),
        startup_taint=startup_taint,
        **INPUTS,
    )


@pytest.mark.parametrize("startup_taint", [False, True], ids=["base", "with-startup-taint"])
def test_the_two_node_values_render_what_the_overlay_makes(
    base: list[Doc], kubectl: Path, render: Any, tmp_path: Path, startup_taint: bool
) -> None:
    state = tmp_path / "state"
    targets = _two_nodes(state)
    kustomized = overlay.render_base(kubectl, overlay.WITH_STARTUP_TAINT) if startup_taint else base
    expected = overlay.overlay(
        kustomized, kubelet_dir=state / "unused", state_dir=state, nodes=targets, **INPUTS
    )
    ours = render(_two_node_values(state, startup_taint))
    assert compare(expected, ours) == []
    # One DaemonSet per node, each with that node's folders, ID, port and pinning.
    plugins = [d for d in ours if d["kind"] == "DaemonSet"]
    assert [d["metadata"]["name"] for d in plugins] == ["csi-oxide-node", "csi-oxide-node-b"]
    for doc, target in zip(plugins, targets, strict=True):
        pod = _pod(doc)
        assert pod["nodeSelector"] == {"kubernetes.io/hostname": target.node}
        ours_c = _container(doc, "csi-oxide")
        assert {"name": "CSI_OXIDE_NODE_ID", "value": target.node_id} in ours_c["env"]
        assert f"--metrics-address=127.0.0.1:{target.port}" in ours_c["args"]
        hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
        assert hosts["kubelet-dir"] == str(target.kubelet_dir)
        assert hosts["state-dir"].startswith(str(state / f"hostpaths{target.tag}/"))
    selectors = {yaml.safe_dump(d["spec"]["selector"]) for d in plugins}
    assert len(selectors) == 2  # neither DaemonSet adopts the other's pods


def test_the_test_cluster_values_refuse_nodes_the_chart_cannot_name(tmp_path: Path) -> None:
    first, second = _two_nodes(tmp_path)
    for nodes in ([second, first], [first, first]):
        with pytest.raises(ValueError, match="tag"):
            chart.cluster_values(kubelet_dir=tmp_path, state_dir=tmp_path, nodes=nodes, **INPUTS)


# ---- what the values claim ---------------------------------------------------------------------


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(doc: Doc, name: str) -> Doc:
    return next(c for c in _pod(doc)["containers"] if c["name"] == name)


def _official(**node: Any) -> Doc:
    return {"registration": {"mode": "official"}, **({"node": node} if node else {})}


def _everything_set() -> Doc:
    return {
        "image": {
            "repository": "registry.example/csi-oxide",
            "tag": "1.2.3",
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "pull"}],
        "credentials": {"existingSecret": "my-oxide"},
        "clusterID": "prod-1",
        "logLevel": "debug",
        "hostNetwork": True,
        "probeHost": "127.0.0.1",
        "metrics": {"node": {"address": "127.0.0.1", "port": 19191}},
        "controller": {
            "replicas": 3,
            "nodeSelector": {"role": "infra"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "resources": {"limits": {"memory": "1Gi"}},
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "extraVolumes": [{"name": "ca", "configMap": {"name": "oxide-ca"}}],
            "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/oxide-ca", "readOnly": True}],
        },
        "node": {"tolerations": [{"key": "storage", "operator": "Exists", "effect": "NoExecute"}]},
        "storageClasses": [
            {"name": "oxide-xfs", "default": True, "fsType": "xfs", "blockSize": 512},
            {"name": "oxide-retain", "reclaimPolicy": "Retain", "allowVolumeExpansion": False},
        ],
    }


def _node_groups() -> Doc:
    """values.yaml's example of node.additionalDaemonSets: nodes whose kubelet runs elsewhere."""
    elsewhere = {"key": "example.com/kubelet", "operator": "NotIn", "values": ["data"]}
    return {
        "node": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [elsewhere]}]
                    }
                }
            },
            "additionalDaemonSets": {
                "data": {
                    "affinity": {},
                    "nodeSelector": {"example.com/kubelet": "data"},
                    "kubeletDir": "/data/kubelet/",
                    "hostPaths": {"state": "/data/csi-oxide/node"},
                    "metrics": {"port": 19191},
                    "registration": {"livenessProbePort": 19808},
                    "resources": {"limits": {"memory": "512Mi"}},
                    "extraEnv": [{"name": "CSI_OXIDE_OXIDE_TIMEOUT", "value": "60"}],
                },
            },
        }
    }


def test_additional_daemonsets_override_what_they_give_and_inherit_the_rest(
    render: Any,
) -> None:
    docs = render({**_node_groups(), **_official()})
    main = _one(docs, "DaemonSet", "csi-oxide-node")
    data = _one(docs, "DaemonSet", "csi-oxide-node-data")
    # The main DaemonSet is what it is without additionalDaemonSets.
    plain = {**_official(), "node": {"affinity": _node_groups()["node"]["affinity"]}}
    assert main == _one(render(plain), "DaemonSet")
    pod = _pod(data)
    # Given: replaced whole (affinity emptied, resources without the default request).
    assert "affinity" not in pod
    assert pod["nodeSelector"] == {"example.com/kubelet": "data"}
    ours = _container(data, "csi-oxide")
    assert ours["resources"] == {"limits": {"memory": "512Mi"}}
    assert ours["env"] == [{"name": "CSI_OXIDE_OXIDE_TIMEOUT", "value": "60"}]
    # Key by key: the state folder moved, the others kept; the port moved, the address kept.
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert hosts["state-dir"] == "/data/csi-oxide/node"
    assert hosts["device-dir"] == "/dev" and hosts["udev-dir"] == "/run/udev"
    assert "--metrics-address=0.0.0.0:19191" in ours["args"]
    assert {"name": "healthz", "containerPort": 19808} in ours["ports"]
    assert "--http-endpoint=:19808" in _container(data, "liveness-probe")["args"]
    assert "--http-endpoint=:9809" in _container(data, "node-driver-registrar")["args"]
    # Its own kubelet folder, every kubelet path following it.
    assert hosts["kubelet-dir"] == "/data/kubelet"
    assert "/var/lib/kubelet" not in yaml.safe_dump(data)
    # Not given: the main DaemonSet's (tolerations, priority class, sidecar resources).
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert (
        _container(data, "liveness-probe")["resources"]
        == _container(main, "liveness-probe")["resources"]
    )
    # Selectors apart: a label of its own on the selector and the pods, none on the main one.
    own = {"csi.oxide.computer/node-group": "data"}
    assert data["spec"]["selector"]["matchLabels"].items() >= own.items()
    assert data["spec"]["template"]["metadata"]["labels"].items() >= own.items()
    assert "csi.oxide.computer/node-group" not in main["spec"]["selector"]["matchLabels"]


def test_the_driver_cli_accepts_the_additional_daemonsets_command_lines(
    render: Any, tmp_path: Path
) -> None:
    parser = build_parser()
    for values in (_node_groups(), _two_node_values(tmp_path)):
        for doc in render(values):
            if doc["kind"] == "DaemonSet":
                assert parser.parse_args(_container(doc, "csi-oxide")["args"]).mode == "node"


def test_official_registration_adds_the_two_sidecars_and_drops_the_builtin(render: Any) -> None:
    node = _one(render(_official()), "DaemonSet")
    names = [c["name"] for c in _pod(node)["containers"]]
    assert names == ["csi-oxide", "node-driver-registrar", "liveness-probe"]
    ours = _container(node, "csi-oxide")
    assert not [a for a in ours["args"] if a.startswith(("--registration-dir", "--kubelet-reg"))]
    assert "registration-dir" not in {m["name"] for m in ours["volumeMounts"]}
    registrar = _container(node, "node-driver-registrar")
    assert registrar["image"] == "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0"
    socket = f"/var/lib/kubelet/plugins/{DRIVER_NAME}/csi.sock"
    assert f"--kubelet-registration-path={socket}" in registrar["args"]
    assert {m["name"]: m["mountPath"] for m in registrar["volumeMounts"]} == {
        "plugin-dir": "/csi",
        "registration-dir": "/registration",
    }
    # The driver's liveness probe now asks the livenessprobe sidecar, which asks the CSI socket.
    probe = _container(node, "liveness-probe")
    assert probe["image"] == "registry.k8s.io/sig-storage/livenessprobe:v2.19.0"
    assert "--http-endpoint=:9808" in probe["args"]
    http = ours["livenessProbe"]["httpGet"]
    assert {p["name"]: p["containerPort"] for p in ours["ports"]}[http["port"]] == 9808
    # The built-in choice has none of them.
    builtin = _one(render(), "DaemonSet")
    assert [c["name"] for c in _pod(builtin)["containers"]] == ["csi-oxide"]
    assert "--registration-dir=/registration" in _container(builtin, "csi-oxide")["args"]


@pytest.mark.parametrize("mode", ["builtin", "official"])
def test_kubelet_dir_moves_every_kubelet_path(render: Any, mode: str) -> None:
    node = _one(
        render({"kubeletDir": "/data/kubelet/", "registration": {"mode": mode}}), "DaemonSet"
    )
    text = yaml.safe_dump(node)
    assert "/var/lib/kubelet" not in text
    hosts = {v["name"]: v["hostPath"]["path"] for v in _pod(node)["volumes"]}
    assert hosts["kubelet-dir"] == "/data/kubelet"
    assert hosts["plugin-dir"] == f"/data/kubelet/plugins/{DRIVER_NAME}/"
    assert hosts["registration-dir"] == "/data/kubelet/plugins_registry/"
    ours = _container(node, "csi-oxide")
    mounts = {m["name"]: m for m in ours["volumeMounts"]}
    # The kubelet passes host paths: the plugin sees its folder at the same path.
    assert mounts["kubelet-dir"]["mountPath"] == "/data/kubelet"
    assert mounts["kubelet-dir"]["mountPropagation"] == "Bidirectional"
    registering = "node-driver-registrar" if mode == "official" else "csi-oxide"
    flag = f"--kubelet-registration-path=/data/kubelet/plugins/{DRIVER_NAME}/csi.sock"
    assert flag in _container(node, registering)["args"]


def test_existing_secret_drops_the_secret_and_is_used(render: Any) -> None:
    docs = render({"credentials": {"existingSecret": "my-oxide", "token": ""}})
    assert [d for d in docs if d["kind"] == "Secret"] == []
    controller = _one(docs, "Deployment")
    env = _container(controller, "csi-oxide")["env"]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in env
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {"my-oxide"}
    volume = next(v for v in _pod(controller)["volumes"] if v["name"] == "oxide-token")
    assert volume["secret"]["secretName"] == "my-oxide"


def test_tolerations_land_on_both_pod_specs(render: Any) -> None:
    docs = render(_everything_set())
    controller, node = _pod(_one(docs, "Deployment")), _pod(_one(docs, "DaemonSet"))
    assert controller["tolerations"] == [
        {"key": "infra", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert node["tolerations"] == [{"key": "storage", "operator": "Exists", "effect": "NoExecute"}]
    assert controller["nodeSelector"] == {"role": "infra"}
    assert controller["priorityClassName"] == "high"


def test_the_other_values_land_where_they_claim(render: Any) -> None:
    docs = render(_everything_set())
    controller, node = _one(docs, "Deployment"), _one(docs, "DaemonSet")
    assert controller["spec"]["replicas"] == 3
    for doc in (controller, node):
        pod = _pod(doc)
        assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert pod["imagePullSecrets"] == [{"name": "pull"}]
        ours = _container(doc, "csi-oxide")
        assert ours["image"] == "registry.example/csi-oxide:1.2.3"
        assert ours["imagePullPolicy"] == "Always"
        assert "--log-level=debug" in ours["args"]
        assert ours["livenessProbe"]["httpGet"]["host"] == "127.0.0.1"
    ours = _container(controller, "csi-oxide")
    env = {e["name"]: e.get("value") for e in ours["env"]}
    assert env["CSI_OXIDE_CLUSTER_ID"] == "prod-1"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    # Maps merge with the defaults (Helm's rule): the request stays, the limit is replaced.
    assert ours["resources"] == {
        "limits": {"memory": "1Gi"},
        "requests": {"cpu": "20m", "memory": "64Mi"},
    }
    assert {"name": "ca", "mountPath": "/etc/oxide-ca", "readOnly": True} in ours["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "oxide-ca"}} in _pod(controller)["volumes"]
    node_ours = _container(node, "csi-oxide")
    assert "--metrics-address=127.0.0.1:19191" in node_ours["args"]
    assert node_ours["ports"] == [{"name": "metrics", "containerPort": 19191}]
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    assert set(classes) == {"oxide-xfs", "oxide-retain"}
    xfs, retain = classes["oxide-xfs"], classes["oxide-retain"]
    assert xfs["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert xfs["parameters"] == {"csi.storage.k8s.io/fstype": "xfs", "blockSize": "512"}
    assert retain["reclaimPolicy"] == "Retain" and retain["allowVolumeExpansion"] is False
    assert retain["parameters"]["csi.storage.k8s.io/fstype"] == "ext4"


def test_metrics_disabled_drops_the_port_flag_and_builtin_probe(render: Any) -> None:
    docs = render({"metrics": {"enabled": False}})
    for kind in ("Deployment", "DaemonSet"):
        ours = _container(_one(docs, kind), "csi-oxide")
        assert not [a for a in ours["args"] if a.startswith("--metrics-address")]
        assert "ports" not in ours and "livenessProbe" not in ours
    # Official registration keeps a probe: the livenessprobe sidecar's.
    node = _one(render({"metrics": {"enabled": False}, **_official()}), "DaemonSet")
    ours = _container(node, "csi-oxide")
    assert ours["ports"] == [{"name": "healthz", "containerPort": 9808}]
    assert ours["livenessProbe"]["httpGet"]["port"] == "healthz"


def test_the_driver_cli_accepts_every_rendered_command_line(render: Any, tmp_path: Path) -> None:
    parser = build_parser()
    for values in (None, _official(), _everything_set(), _test_values(tmp_path)):
        for kind, mode in (("Deployment", "controller"), ("DaemonSet", "node")):
            args = _container(_one(render(values), kind), "csi-oxide")["args"]
            parsed = parser.parse_args(args)
            assert parsed.mode == mode


# ---- bad values --------------------------------------------------------------------------------

# values.schema.json refuses these before anything renders, naming the value.
SCHEMA_REFUSES = [
    ({"registration": {"mode": "sidecar"}}, "at '/registration/mode': value must be one of"),
    ({"kubeletDir": "var/lib/kubelet"}, "at '/kubeletDir'"),
    ({"clusterID": "-prod"}, "at '/clusterID'"),
    ({"controler": {"replicas": 1}}, "additional properties 'controler' not allowed"),
    ({"storageClasses": [{"name": "b", "fsType": "btrfs"}]}, "at '/storageClasses/0/fsType'"),
    ({"metrics": {"node": {"port": 0}}}, "at '/metrics/node/port'"),
    (
        {"node": {"additionalDaemonSets": {"b": {"kubeletDirr": "/data/kubelet"}}}},
        "at '/node/additionalDaemonSets/b': additional properties 'kubeletDirr' not allowed",
    ),
    ({"node": {"additionalDaemonSets": {"B_1": {}}}}, "invalid propertyName 'B_1'"),
    (
        {"node": {"additionalDaemonSets": {"b": {"metrics": {"port": 0}}}}},
        "at '/node/additionalDaemonSets/b/metrics/port'",
    ),
    (
        {"node": {"additionalDaemonSets": {"b": {"kubeletDir": "data"}}}},
        "at '/node/additionalDaemonSets/b/kubeletDir'",
    ),
]


@pytest.mark.parametrize(("values", "message"), SCHEMA_REFUSES)
def test_the_schema_refuses_bad_values_by_name(
    helm: Path, tmp_path: Path, values: Doc, message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        chart.render(values, tmp_path, helm=helm)


def test_the_schema_takes_exactly_the_filesystems_the_driver_takes() -> None:
    schema = json.loads((ROOT / "deploy/helm/csi-oxide/values.schema.json").read_text())
    classes = schema["properties"]["storageClasses"]["items"]["properties"]
    assert classes["fsType"]["enum"] == list(FILESYSTEMS)


# The templates refuse these themselves: what the schema cannot say, or when it is skipped.
TEMPLATE_REFUSES = [
    ({"registration": {"mode": "sidecar"}}, "registration.mode must be builtin or official"),
    ({"kubeletDir": "var/lib/kubelet"}, "kubeletDir must be an absolute path"),
    ({"credentials": {"token": ""}}, "credentials.token is required unless"),
    ({"apiServer": {"host": "127.0.0.1"}}, "apiServer.port is required with apiServer.host"),
    (
        {"node": {"additionalDaemonSets": {"B_1": {}}}},
        'node.additionalDaemonSets: "B_1" must be lower-case letters, digits and',
    ),
    (
        {"node": {"additionalDaemonSets": {"b": {"kubeletDir": "data"}}}},
        "node.additionalDaemonSets.b.kubeletDir must be an absolute path",
    ),
    (
        {
            "node": {
                "selectorLabels": {"pool": "a"},
                "additionalDaemonSets": {"b": {"selectorLabels": {"pool": "a"}}},
            }
        },
        "node.additionalDaemonSets.b: its selectorLabels are those of csi-oxide-node",
    ),
    (
        {"node": {"additionalDaemonSets": {"b": {"selectorLabels": {}}}}},
        "node.additionalDaemonSets.b: its selectorLabels are those of csi-oxide-node",
    ),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REFUSES)
def test_the_templates_refuse_bad_values_with_a_message(
    helm: Path, tmp_path: Path, values: Doc, message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        chart.render(values, tmp_path, helm=helm, extra_args=["--skip-schema-validation"])


@pytest.mark.parametrize(
    "cluster_id", ["default", "prod-1", "a", "a.b_c", "-a", "a-", "a b", "a/b", "x" * 63, "x" * 64]
)
def test_the_schema_takes_exactly_the_cluster_ids_the_driver_takes(
    render: Any, cluster_id: str
) -> None:
    try:
        check_cluster_id(cluster_id)
    except ConfigurationError:
        with pytest.raises(RuntimeError, match=re.escape("at '/clusterID'")):
            render({"clusterID": cluster_id})
    else:
        controller = _container(_one(render({"clusterID": cluster_id}), "Deployment"), "csi-oxide")
        assert {"name": "CSI_OXIDE_CLUSTER_ID", "value": cluster_id} in controller["env"]


# ---- what the operator-facing values do (issue #32) ---------------------------------------------
#
# Snapshot API detection, the controller's PodDisruptionBudget, metrics Services and
# ServiceMonitor, sidecar flags and leader election, pod labels, spread and update strategies,
# StorageClass extras, NOTES.txt and the `helm test` pods running `csi-oxide doctor`.

CLUSTER_TOOLS = ROOT / ".tools" / "cluster"
NODE_GROUP = "csi.oxide.computer/node-group"
# Prometheus' duration, as the ServiceMonitor CRD writes it (1h30m, 30s, 500ms).
PROMETHEUS_DURATION = r"0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?"


def _merged(*layers: Doc) -> Doc:
    """Values layered as Helm layers -f files: maps merge key by key, anything else replaces."""
    out: Doc = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = _merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _new_values() -> Doc:
    """Every value issue #32 added, none at its default."""
    return {
        "registration": {"mode": "official"},  # so the node's sidecars render too
        "sidecars": {
            "provisioner": {
                "timeout": "2m",
                "retryIntervalMax": "10m",
                "logLevel": 4,
                "extraArgs": ["--worker-threads=50"],
            },
            "attacher": {"timeout": "6m", "logLevel": 0, "extraArgs": ["--worker-threads=20"]},
            "resizer": {"timeout": "90s", "logLevel": 2},
            "snapshotter": {
                "timeout": "7m",
                "logLevel": 3,
                "extraArgs": ["--retry-interval-start=2s"],
            },
            "nodeDriverRegistrar": {"logLevel": 5},
            "livenessProbe": {"probeTimeout": "7s", "logLevel": 1},
        },
        "metrics": {
            "service": {"enabled": True, "annotations": {"example.com/scrape": "true"}},
            "serviceMonitor": {
                "enabled": True,
                "labels": {"release": "prometheus"},
                "interval": "30s",
                "scrapeTimeout": "10s",
                "relabelings": [{"action": "labeldrop", "regex": "pod_template_hash"}],
                "metricRelabelings": [{"action": "drop", "regex": "go_.*"}],
            },
        },
        "controller": {
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "leaderElection": {"leaseDuration": "30s", "renewDeadline": "20s", "retryPeriod": "4s"},
            "podDisruptionBudget": {
                "maxUnavailable": None,
                "minAvailable": "50%",
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ],
            "podLabels": {"example.com/team": "storage"},
        },
        "node": {
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"example.com/pool": "a"}},
                }
            ],
            "podLabels": {"example.com/team": "storage"},
        },
        "storageClasses": [
            {
                "name": "oxide-disk",
                "mountOptions": ["noatime", "data=ordered"],
                "labels": {"example.com/tier": "disk"},
                "annotations": {"example.com/owner": "storage"},
            }
        ],
        "volumeSnapshotClass": {"forceCreate": True},
        "tests": {"controller": {"enabled": True}, "node": {"enabled": True}},
    }


def _validate_any(doc: Doc, version: str) -> None:
    """_validate, and for the Prometheus Operator's ServiceMonitor (whose CRD is not vendored
    here) the fields this chart writes: metadata as the API server checks ObjectMeta, the
    selector as a LabelSelector (checked inside a PodDisruptionBudget), known endpoint keys."""
    if doc["kind"] != "ServiceMonitor":
        _validate(doc, version)
        return
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(holder, version, strict=True)
    spec = doc["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "selector"},
        "spec": {"selector": spec["selector"]},
    }
    kubernetes_validate.validate(budget, version, strict=True)
    assert set(spec["namespaceSelector"]) == {"matchNames"}
    for endpoint in spec["endpoints"]:
        known = {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
        assert set(endpoint) <= known, endpoint
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert re.fullmatch(PROMETHEUS_DURATION, endpoint[key]), endpoint[key]


def _selected(selector: Doc, labels: Doc) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels(doc: Doc) -> Doc:
    """The labels of the pods ``doc`` makes (a workload's template), or of ``doc`` as a pod."""
    if doc["kind"] == "Pod":
        own: Doc = doc["metadata"]["labels"]
        return own
    if doc["kind"] in ("Deployment", "DaemonSet"):
        labels: Doc = doc["spec"]["template"]["metadata"]["labels"]
        return labels
    return {}


# -- the VolumeSnapshotClass: only where the snapshot API is served, or forced


def test_without_the_snapshot_api_the_class_is_left_out_and_nothing_else_changes(
    base: list[Doc], render: Any
) -> None:
    ours = render(snapshot_api=False)
    assert [d for d in ours if d["apiVersion"].startswith("snapshot.storage.k8s.io/")] == []
    without = [d for d in base if d["kind"] != "VolumeSnapshotClass"]
    assert compare(without, ours) == []


def test_force_create_renders_the_class_without_the_api(base: list[Doc], render: Any) -> None:
    ours = render({"volumeSnapshotClass": {"forceCreate": True}}, snapshot_api=False)
    assert compare(base, ours) == []


def test_create_false_leaves_the_class_out_even_with_the_api(render: Any) -> None:
    for force in (False, True):
        values = {"volumeSnapshotClass": {"create": False, "forceCreate": force}}
        assert [d for d in render(values) if d["kind"] == "VolumeSnapshotClass"] == []


# -- the controller's PodDisruptionBudget


def test_the_disruption_budget_selects_the_controller_pods_only(render: Any) -> None:
    docs = render(_node_groups(), tests=True)
    budget = _one(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    selector = budget["spec"]["selector"]
    # The controller's pods, not the node plugins' nor the test pods.
    selected = [d["metadata"]["name"] for d in docs if _selected(selector, _pod_labels(d))]
    assert selected == ["csi-oxide-controller"]


def test_the_disruption_budget_values(render: Any) -> None:
    budget = _one(render(_new_values()), "PodDisruptionBudget")["spec"]
    assert budget["minAvailable"] == "50%" and "maxUnavailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    disabled = {"controller": {"podDisruptionBudget": {"enabled": False}}}
    assert [d for d in render(disabled) if d["kind"] == "PodDisruptionBudget"] == []
    two = {"controller": {"podDisruptionBudget": {"maxUnavailable": 2}}}
    assert _one(render(two), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 2


# -- metrics Services and the ServiceMonitor


def test_metrics_services_select_every_metrics_port_of_their_component(render: Any) -> None:
    assert [d for d in render() if d["kind"] in ("Service", "ServiceMonitor")] == []
    docs = render(_merged(_node_groups(), {"metrics": {"service": {"enabled": True}}}), tests=True)
    assert [d for d in docs if d["kind"] == "ServiceMonitor"] == []  # off unless enabled
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(services) == {"csi-oxide-controller-metrics", "csi-oxide-node-metrics"}
    ports = {"controller": 9090, "node": 9091}
    for component, port in ports.items():
        service = services[f"csi-oxide-{component}-metrics"]
        assert service["spec"]["clusterIP"] == "None"  # headless: every pod, not one of them
        (service_port,) = service["spec"]["ports"]
        assert service_port == {
            "name": "metrics",
            "port": port,
            "targetPort": "metrics",
            "protocol": "TCP",
        }
        selector = {"matchLabels": service["spec"]["selector"]}
        workloads = [d for d in docs if _selected(selector, _pod_labels(d))]
        expected = {"controller": ["csi-oxide-controller"]}.get(
            component, ["csi-oxide-node", "csi-oxide-node-data"]
        )
        assert [d["metadata"]["name"] for d in workloads] == expected  # no test pod
        for doc in workloads:  # each pod has the port the Service names (data's is 19191)
            ours = _container(doc, "csi-oxide")
            assert "metrics" in {p["name"] for p in ours["ports"]}


def test_the_service_monitor_scrapes_both_services(render: Any) -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    monitor = _one(docs, "ServiceMonitor")
    services = [d for d in docs if d["kind"] == "Service"]  # on by themselves with the monitor
    assert len(services) == 2
    for service in services:
        assert _selected(monitor["spec"]["selector"], service["metadata"]["labels"])
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["metadata"]["labels"].items() >= HELM_LABELS.items()
    full = _one(render(_new_values()), "ServiceMonitor")["spec"]["endpoints"][0]
    assert full["interval"] == "30s" and full["scrapeTimeout"] == "10s"
    assert full["relabelings"] == [{"action": "labeldrop", "regex": "pod_template_hash"}]
    assert full["metricRelabelings"] == [{"action": "drop", "regex": "go_.*"}]


# -- sidecar flags, log levels and leader election


SIDECAR_KEYS = {
    "csi-provisioner": "provisioner",
    "csi-attacher": "attacher",
    "csi-resizer": "resizer",
    "csi-snapshotter": "snapshotter",
    "node-driver-registrar": "nodeDriverRegistrar",
    "liveness-probe": "livenessProbe",
}


def _sidecar_args(docs: list[Doc]) -> dict[str, list[str]]:
    """Each sidecar's args, by container name (of the controller and the main node plugin)."""
    workloads = [
        d for d in docs if d["metadata"]["name"] in ("csi-oxide-controller", "csi-oxide-node")
    ]
    return {
        c["name"]: c["args"]
        for d in workloads
        if d["kind"] in ("Deployment", "DaemonSet")
        for c in _pod(d)["containers"]
        if c["name"] in SIDECAR_KEYS
    }


def test_sidecar_values_default_to_the_flags_the_base_hard_codes(base: list[Doc]) -> None:
    """The defaults of the new sidecar values are the base's flags, so the default rendering
    stays the base (test_default_values_render_the_kustomize_base) and says so here by name."""
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    sidecars = values["sidecars"]
    args = _sidecar_args(base)
    for name, key in SIDECAR_KEYS.items():
        if name not in args:  # the node's two run only in official mode
            continue
        assert f"--timeout={sidecars[key]['timeout']}" in args[name]
        assert sidecars[key]["logLevel"] is None and not [a for a in args[name] if "--v=" in a]
        assert sidecars[key]["extraArgs"] == []
    assert (
        f"--retry-interval-max={sidecars['provisioner']['retryIntervalMax']}"
        in args["csi-provisioner"]
    )
    assert values["controller"]["leaderElection"] == dict.fromkeys(
        ("leaseDuration", "renewDeadline", "retryPeriod"), ""
    )
    timings = [a for v in args.values() for a in v if a.startswith("--leader-election-")]
    assert set(timings) == {"--leader-election-namespace=$(POD_NAMESPACE)"}


def test_sidecar_values_land_on_their_sidecar_only(render: Any) -> None:
    args = _sidecar_args(render(_new_values()))
    assert set(args) == set(SIDECAR_KEYS)
    expected = {
        "csi-provisioner": ["--timeout=2m", "--retry-interval-max=10m", "--v=4"],
        "csi-attacher": ["--timeout=6m", "--v=0"],  # 0 is given, so it is written
        "csi-resizer": ["--timeout=90s", "--v=2", "--handle-volume-inuse-error=true"],
        "csi-snapshotter": ["--timeout=7m", "--v=3", "--retry-interval-start=2s"],
        "node-driver-registrar": ["--v=5"],
        "liveness-probe": ["--probe-timeout=7s", "--v=1"],
    }
    for name, flags in expected.items():
        assert set(flags) <= set(args[name]), (name, args[name])
        assert len([a for a in args[name] if a.startswith("--v=")]) == 1
    # extraArgs come last, after the chart's flags.
    assert args["csi-provisioner"][-1] == "--worker-threads=50"
    assert args["csi-attacher"][-1] == "--worker-threads=20"
    # The leases: on each of the controller's four, on none of the node's.
    lease = [
        "--leader-election-lease-duration=30s",
        "--leader-election-renew-deadline=20s",
        "--leader-election-retry-period=4s",
    ]
    for name, flags in args.items():
        has = set(lease) <= set(flags)
        assert has == (name.startswith("csi-")), name


def test_the_controller_sidecars_know_every_flag_the_chart_gives_them(render: Any) -> None:
    """Each controller sidecar's own --help (the binaries the cluster test builds) lists every
    flag the chart renders for it, the optional ones included."""
    tags = yaml.safe_load((chart.CHART / "values.yaml").read_text())["sidecars"]
    args = _sidecar_args(render(_new_values()))
    checked = 0
    for name in ("csi-provisioner", "csi-attacher", "csi-resizer", "csi-snapshotter"):
        binary = CLUSTER_TOOLS / f"{name}-{tags[SIDECAR_KEYS[name]]['tag']}"
        if not binary.exists():
            continue
        shown = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        flag = re.compile(r"^\s+(?:-\w, )?--?([a-z][a-z0-9-]*)", re.MULTILINE)
        known = set(flag.findall(shown.stdout + shown.stderr))
        for arg in args[name]:
            assert arg.lstrip("-").split("=", 1)[0] in known, f"{name} has no flag {arg}"
        checked += 1
    if not checked:
        # Built by the cluster test, which make test runs after this: not asked of CI here.
        skips.skip("no sidecar binaries in .tools/cluster (the cluster test builds them)")


# -- pod labels, topology spread, update strategies


def test_pod_labels_go_on_the_pods_and_never_on_a_selector(render: Any) -> None:
    docs = render(_merged(_new_values(), _node_groups()))
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert len(workloads) == 3
    for doc in workloads:
        assert _pod_labels(doc)["example.com/team"] == "storage"
        selector = doc["spec"]["selector"]["matchLabels"]
        assert "example.com/team" not in selector
        assert _pod_labels(doc).items() >= selector.items()
        assert "example.com/team" not in doc["metadata"]["labels"]


def test_topology_spread_gets_the_pods_own_selector_unless_given(render: Any) -> None:
    docs = render(_merged(_new_values(), _node_groups()))
    controller = _one(docs, "Deployment")
    (spread,) = _pod(controller)["topologySpreadConstraints"]
    assert spread["labelSelector"] == controller["spec"]["selector"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    for name in ("csi-oxide-node", "csi-oxide-node-data"):  # inherited by the node group
        (given,) = _pod(_one(docs, "DaemonSet", name))["topologySpreadConstraints"]
        assert given["labelSelector"] == {"matchLabels": {"example.com/pool": "a"}}
    assert "topologySpreadConstraints" not in _pod(_one(render(), "Deployment"))


def test_update_strategies(render: Any) -> None:
    assert "strategy" not in _one(render(), "Deployment")["spec"]
    docs = render(_new_values())
    assert _one(docs, "Deployment")["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    # Helm merges the node's map with the default's: the type stays, the budget is replaced.
    assert _one(docs, "DaemonSet")["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 2},
    }


def test_on_the_host_network_a_rollout_replaces_before_it_adds(render: Any) -> None:
    # A surge replica would need the ports its node's replica holds: one node would never fit it.
    host = render({"hostNetwork": True})
    assert _one(host, "Deployment")["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    chosen = {"type": "Recreate"}
    given = render({"hostNetwork": True, "controller": {"updateStrategy": chosen}})
    assert _one(given, "Deployment")["spec"]["strategy"] == chosen
    # A pod's hostname is its node's there, and the sidecars' leader identity: one per node.
    (term,) = _pod(_one(host, "Deployment"))["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["labelSelector"]["matchLabels"]
        == _one(host, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    off = _pod(_one(render(), "Deployment"))["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in off  # off the host network


# -- StorageClass extras


def test_storage_class_mount_options_labels_and_annotations(render: Any) -> None:
    (oxide,) = [d for d in render(_new_values()) if d["kind"] == "StorageClass"]
    assert oxide["mountOptions"] == ["noatime", "data=ordered"]
    assert oxide["metadata"]["labels"] == {**HELM_LABELS, "example.com/tier": "disk"}
    assert oxide["metadata"]["annotations"] == {
        "example.com/owner": "storage",
        "storageclass.kubernetes.io/is-default-class": "false",
    }
    # What the node will do with them: the driver's own check accepts both for the class's fs.
    fstype = oxide["parameters"]["csi.storage.k8s.io/fstype"]
    assert mount_flags(oxide["mountOptions"], fstype) == ("noatime", "data=ordered")
    (plain,) = [d for d in render() if d["kind"] == "StorageClass"]
    assert "mountOptions" not in plain


# -- NOTES.txt


def _notes(helm: Path, tmp_path: Path, values: Doc | None = None, *extra: str) -> str:
    """templates/NOTES.txt as ``helm install`` prints it. ``helm template`` does not render it,
    so a copy of the chart carries it as a ConfigMap's data."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    copied = work / "chart"
    shutil.copytree(chart.CHART, copied)
    notes = copied / "templates" / "NOTES.txt"
    (copied / "templates" / "_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes.read_text() + "\n{{- end }}\n"
    )
    notes.unlink()
    (copied / "templates" / "notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include "test.notes" . | toJson }}}\n'
    )
    args = ["template", chart.RELEASE, str(copied), "--namespace", NAMESPACE]
    args += ["--show-only", "templates/notes.yaml", *extra]
    if values is not None:
        (work / "values.yaml").write_text(yaml.safe_dump(values))
        args += ["--values", str(work / "values.yaml")]
    done = subprocess.run(
        [str(helm), *args], env=chart.helm_env(work), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    text: str = yaml.safe_load(done.stdout)["data"]["notes"]
    return text


def test_the_notes_say_what_to_check_and_what_todays_racks_cannot_do(
    helm: Path, tmp_path: Path
) -> None:
    text = _notes(helm, tmp_path, _node_groups(), "--api-versions", SNAPSHOT_API)
    assert "kubectl get csinode" in text and DRIVER_NAME in text
    assert f"helm test {chart.RELEASE} -n {NAMESPACE} --logs" in text
    exec_ = f"kubectl -n {NAMESPACE} exec"
    doctor_lines = [
        line.split(" -- ", 1)[1].split()
        for line in text.splitlines()
        if exec_ in line and "doctor" in line
    ]
    assert f"{exec_} deploy/csi-oxide-controller -c csi-oxide -- csi-oxide doctor" in text
    for name in ("csi-oxide-node", "csi-oxide-node-data"):  # every node-plugin DaemonSet
        assert f"{exec_} ds/{name} -c csi-oxide -- csi-oxide doctor --mode node" in text
    parser = build_parser()
    assert [parser.parse_args(line[1:]).mode for line in doctor_lines] == [
        "controller",
        "node",
        "node",
    ]
    # The data group's kubelet is elsewhere, where the doctor does not look.
    assert 'In csi-oxide-node-data the "kubelet directory" row fails' in text
    # Today's racks: the hot-plug limit, and the way that works.
    assert "cannot attach a disk to a running instance" in text
    assert "FAILED_PRECONDITION" in text and "csi-oxide static-pv" in text
    assert "docs/todays-racks.md" in text and (ROOT / "docs" / "todays-racks.md").is_file()
    assert "no VolumeSnapshotClass was made" not in text
    # The chart-made Secret still holds values.yaml's placeholders.
    assert "placeholder credentials" in text


def test_the_notes_say_when_the_class_was_left_out_and_the_secret_is_real(
    helm: Path, tmp_path: Path
) -> None:
    text = _notes(helm, tmp_path, {"credentials": {"existingSecret": "mine"}})
    assert "no VolumeSnapshotClass was made" in text and "helm upgrade" in text
    assert "placeholder credentials" not in text
    assert "kubelet directory" not in text  # the default kubelet folder: nothing to say
    forced = _notes(helm, tmp_path, {"volumeSnapshotClass": {"forceCreate": True}})
    assert "no VolumeSnapshotClass was made" not in forced


# -- `helm test`: csi-oxide doctor in both modes


def _tests(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Pod"}


def test_install_creates_no_test_pods_and_helm_test_has_one_per_mode_and_daemonset(
    render: Any,
) -> None:
    assert _tests(render()) == {}
    assert set(_tests(render(_node_groups(), tests=True))) == {
        "csi-oxide-test-controller",
        "csi-oxide-test-node",
        "csi-oxide-test-node-data",
    }
    off = {"tests": {"controller": {"enabled": False}, "node": {"enabled": False}}}
    assert _tests(render(off, tests=True)) == {}
    only_node = {"tests": {"controller": {"enabled": False}}}
    assert set(_tests(render(only_node, tests=True))) == {"csi-oxide-test-node"}


def test_every_test_pod_is_a_hook_running_the_doctor_unprivileged(render: Any) -> None:
    docs = render(_merged(_everything_set(), _node_groups()), tests=True)
    pods = _tests(docs)
    assert len(pods) == 3
    parser = build_parser()
    image = _container(_one(docs, "Deployment"), "csi-oxide")["image"]
    for name, pod in pods.items():
        assert pod["metadata"]["annotations"] == {
            "helm.sh/hook": "test",
            "helm.sh/hook-delete-policy": "before-hook-creation",
        }
        # Never selected by a workload, a Service or the budget: labelled as a test.
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        (container,) = spec["containers"]
        assert container["image"] == image
        args = parser.parse_args(container["args"])
        assert (args.command, args.mode) == ("doctor", name.split("-")[3])
        security = container["securityContext"]
        assert "privileged" not in security and security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert all(m.get("readOnly") for m in container["volumeMounts"])
        assert spec.get("imagePullSecrets") == [{"name": "pull"}]


def test_the_controller_test_has_the_controllers_credentials_and_reach(
    render: Any, tmp_path: Path
) -> None:
    docs = render(_everything_set(), tests=True)
    controller = _one(docs, "Deployment")
    theirs = _container(controller, "csi-oxide")
    test = _tests(docs)["csi-oxide-test-controller"]
    spec = test["spec"]
    (ours,) = spec["containers"]
    # The controller's environment (the Secret's keys, the token file, extraEnv such as a proxy)
    # but what only `serve` reads; its Secret volume and extra volumes, at the same paths.
    serve_only = {
        "CSI_OXIDE_CLUSTER_ID",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "POD_NAME",
    }
    assert ours["env"] == [e for e in theirs["env"] if e["name"] not in serve_only]
    pod = _pod(controller)
    assert spec["volumes"] == [v for v in pod["volumes"] if v["name"] != "socket-dir"]
    assert ours["volumeMounts"] == [m for m in theirs["volumeMounts"] if m["name"] != "socket-dir"]
    # Where the controller runs: its network, placement and user.
    for key in ("hostNetwork", "dnsPolicy", "nodeSelector", "tolerations", "securityContext"):
        assert spec[key] == pod[key], key
    assert ours["resources"] == theirs["resources"]
    # What the doctor then loads: the credentials, from the mounted token file.
    secret = {
        "oxide-host": "https://rack.example",
        "oxide-token": "t0ken-abc",
        "oxide-project": "p",
    }
    env: dict[str, str] = {}
    for var in ours["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = secret[ref["key"]] if ref else var["value"]
    token = tmp_path / "oxide-token"
    token.write_text(secret["oxide-token"])
    env["CSI_OXIDE_TOKEN_FILE"] = str(token)
    creds = load_credentials(env, tmp_path / "no-config")
    assert (creds.host, creds.project, creds.token()) == ("https://rack.example", "p", "t0ken-abc")


def test_each_node_test_checks_its_daemonsets_nodes_and_kubelet(render: Any) -> None:
    node_id = {"node": {"extraEnv": [{"name": "CSI_OXIDE_NODE_ID", "value": "x"}]}}
    docs = render(_merged(_node_groups(), node_id), tests=True)
    pods = _tests(docs)
    for name in ("csi-oxide-node", "csi-oxide-node-data"):
        plugin = _pod(_one(docs, "DaemonSet", name))
        test = pods[name.replace("csi-oxide-node", "csi-oxide-test-node")]["spec"]
        (ours,) = test["containers"]
        # Placed like its DaemonSet, so on one of its nodes.
        for key in ("nodeSelector", "tolerations", "affinity"):
            assert test.get(key) == plugin.get(key), (name, key)
        # The plugin's environment (a node ID where SMBIOS lacks it) and user.
        assert ours.get("env") == _container(_one(docs, "DaemonSet", name), "csi-oxide").get("env")
        assert ours["securityContext"]["runAsUser"] == 0  # the doctor's first row
        assert test["serviceAccountName"] == plugin["serviceAccountName"]
        # The kubelet folder the plugin registers in, where the doctor looks for the kubelet's.
        theirs = {v["name"]: v["hostPath"]["path"].rstrip("/") for v in plugin["volumes"]}
        mine = {v["name"]: v["hostPath"] for v in test["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in ours["volumeMounts"]}
        assert mine["kubelet-registry"] == {
            "path": theirs["registration-dir"],
            "type": "Directory",
        }
        assert Path(mounts["kubelet-registry"]).parent == doctor.KUBELET_DIR
        assert mine["sys-dir"]["path"] == theirs["sys-dir"]
        assert mounts["sys-dir"] == "/sys"
    # The main one's node ID is the main one's; data's extraEnv is its own.
    assert pods["csi-oxide-test-node-data"]["spec"]["containers"][0]["env"] == [
        {"name": "CSI_OXIDE_OXIDE_TIMEOUT", "value": "60"}
    ]


# -- bad new values


NEW_SCHEMA_REFUSES = [
    ({"sidecars": {"provisioner": {"timeout": "soon"}}}, "at '/sidecars/provisioner/timeout'"),
    ({"sidecars": {"attacher": {"logLevel": "high"}}}, "at '/sidecars/attacher/logLevel'"),
    ({"sidecars": {"resizer": {"extraArgs": ["worker"]}}}, "at '/sidecars/resizer/extraArgs/0'"),
    (
        {"controller": {"leaderElection": {"leaseDuration": 15}}},
        "at '/controller/leaderElection/leaseDuration'",
    ),
    (
        {"controller": {"podDisruptionBudget": {"maxUnavailable": "half"}}},
        "at '/controller/podDisruptionBudget/maxUnavailable'",
    ),
    (
        {"controller": {"updateStrategy": {"type": "OnDelete"}}},
        "at '/controller/updateStrategy/type'",
    ),
    ({"controller": {"podLabels": {"a": 1}}}, "at '/controller/podLabels/a'"),
    ({"node": {"podLabels": {"a": 1}}}, "at '/node/podLabels/a'"),
    (
        {"node": {"additionalDaemonSets": {"b": {"topologySpreadConstraints": {}}}}},
        "at '/node/additionalDaemonSets/b/topologySpreadConstraints'",
    ),
    (
        {"metrics": {"serviceMonitor": {"interval": "5x"}}},
        "at '/metrics/serviceMonitor/interval'",
    ),
    ({"metrics": {"service": {"enable": True}}}, "additional properties 'enable' not allowed"),
    (
        {
            "storageClasses": [
                {
                    "name": "a",
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                }
            ]
        },
        "at '/storageClasses/0/annotations': 'not' failed",
    ),
    ({"storageClasses": [{"name": "a", "mountOptions": [""]}]}, "at '/storageClasses/0/mount"),
    ({"volumeSnapshotClass": {"forceCreate": "yes"}}, "at '/volumeSnapshotClass/forceCreate'"),
    ({"tests": {"node": True}}, "at '/tests/node'"),
]


@pytest.mark.parametrize(("values", "message"), NEW_SCHEMA_REFUSES)
def test_the_schema_refuses_bad_new_values_by_name(
    helm: Path, tmp_path: Path, values: Doc, message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        chart.render(values, tmp_path, helm=helm)


NEW_TEMPLATE_REFUSES = [
    (
        {"controller": {"podLabels": {"app.kubernetes.io/component": "other"}}},
        "controller.podLabels: app.kubernetes.io/component is a selector label (controller)",
    ),
    (
        {"node": {"additionalDaemonSets": {"b": {"podLabels": {NODE_GROUP: "c"}}}}},
        f"csi-oxide-node-b: podLabels: {NODE_GROUP} is a selector label (b)",
    ),
    (
        {"sidecars": {"attacher": {"extraArgs": ["--timeout=1s"]}}},
        "sidecars.attacher.extraArgs: the chart sets --timeout=1s already",
    ),
    (
        {"sidecars": {"provisioner": {"logLevel": 2, "extraArgs": ["--v=5"]}}},
        "sidecars.provisioner.extraArgs: the chart sets --v=5 already",
    ),
    (
        {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
        "metrics.service and metrics.serviceMonitor need metrics.enabled: true",
    ),
    (
        {"metrics": {"service": {"enabled": True}, "node": {"address": "127.0.0.1"}}},
        "metrics.service: metrics.node.address 127.0.0.1 is a loopback address",
    ),
    (
        {"controller": {"podDisruptionBudget": {"maxUnavailable": None}}},
        "controller.podDisruptionBudget: set maxUnavailable or minAvailable",
    ),
    (
        {
            "storageClasses": [
                {"name": "a", "annotations": {"storageclass.kubernetes.io/is-default-class": "x"}}
            ]
        },
        "storageClasses a: set default: true|false, not the annotation",
    ),
    (
        {"storageClasses": [{"name": "a", "labels": {"app.kubernetes.io/name": "x"}}]},
        "storageClasses a: label app.kubernetes.io/name is the chart's own",
    ),
]


@pytest.mark.parametrize(("values", "message"), NEW_TEMPLATE_REFUSES)
def test_the_templates_refuse_bad_new_values_with_a_message(
    helm: Path, tmp_path: Path, values: Doc, message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        chart.render(values, tmp_path, helm=helm, extra_args=["--skip-schema-validation"])
