"""The Helm chart (deploy/helm/csi-oxide), rendered by the real helm and compared with the base.

helm is built from its Go module (scripts/cluster/build_tools.py, cached under .tools/cluster);
the base is rendered by the real ``kubectl kustomize``. With default values the chart must render
the base's objects, object by object and whole, except for the differences in ALLOWED_DIFFERENCES
(the one list of them). With the test cluster's values (tests/e2e/helm.py) it must render what
tests/e2e/overlay.py makes of the base for the same inputs. Then what a few values claim to do,
what helm lint says, and that bad values stop the render with a message.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from csi_oxide import DRIVER_NAME, __version__
from csi_oxide.cli import build_parser
from csi_oxide.controller.record import check_cluster_id
from csi_oxide.errors import ConfigurationError
from tests.conftest import sanity_required
from tests.deploy.test_deploy_manifests import K8S_VERSIONS, _validate
from tests.e2e import helm as chart
from tests.e2e import overlay

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "cluster" / "kubectl-v1.34.4"
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


def _unavailable(reason: str) -> NoReturn:
    if sanity_required():
        pytest.fail(f"CSI_OXIDE_REQUIRE_SANITY=1 but the Helm chart cannot be checked: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return chart.helm_binary(build=True)
    except FileNotFoundError as exc:
        _unavailable(f"no helm: {exc} (make helm builds it)")
    except subprocess.CalledProcessError as exc:
        _unavailable(f"helm could not be built from its Go module: {exc}")


def test_without_go_helm_binary_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(chart, "helm_path", lambda: tmp_path / "helm-v3.22.0")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no go to build it with"):
        chart.helm_binary()


def test_a_missing_helm_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSI_OXIDE_REQUIRE_SANITY", "0")
    with pytest.raises(pytest.skip.Exception, match="no helm"):
        _unavailable("no helm")
    monkeypatch.setenv("CSI_OXIDE_REQUIRE_SANITY", "1")
    with pytest.raises(pytest.fail.Exception, match="CSI_OXIDE_REQUIRE_SANITY=1 but"):
        _unavailable("no helm")


@pytest.fixture(scope="module")
def kubectl() -> Path:
    if KUBECTL.exists():
        return KUBECTL
    found = shutil.which("kubectl")
    if found is None:
        _unavailable("no kubectl (.tools/cluster or PATH) to render the kustomize base with")
    return Path(found)


@pytest.fixture(scope="module")
def base(kubectl: Path) -> list[Doc]:
    return overlay.render_base(kubectl)


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Callable[..., list[Doc]]:
    def _render(values: Doc | None = None, *extra: str) -> list[Doc]:
        return chart.render(values, tmp_path, helm=helm, extra_args=extra)

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
    # Ten kinds, twelve objects: the comparison really covered them all.
    assert len(ours) == 12
    assert {d["kind"] for d in ours} >= {"CSIDriver", "Secret", "DaemonSet", "VolumeSnapshotClass"}


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
    for values in (None, _official(), _everything_set(), _test_values(tmp_path)):
        for doc in render(values):
            _validate(doc, version)


def test_helm_lint_strict_passes(helm: Path, tmp_path: Path) -> None:
    for extra in ([], ["--set", "registration.mode=official"]):
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
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
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
]


@pytest.mark.parametrize(("values", "message"), SCHEMA_REFUSES)
def test_the_schema_refuses_bad_values_by_name(
    helm: Path, tmp_path: Path, values: Doc, message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        chart.render(values, tmp_path, helm=helm)


# The templates refuse these themselves: what the schema cannot say, or when it is skipped.
TEMPLATE_REFUSES = [
    ({"registration": {"mode": "sidecar"}}, "registration.mode must be builtin or official"),
    ({"kubeletDir": "var/lib/kubelet"}, "kubeletDir must be an absolute path"),
    ({"credentials": {"token": ""}}, "credentials.token is required unless"),
    ({"apiServer": {"host": "127.0.0.1"}}, "apiServer.port is required with apiServer.host"),
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
