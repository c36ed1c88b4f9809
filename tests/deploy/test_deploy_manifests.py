"""The Kubernetes manifests, validated offline, and checked against the driver they deploy.

Core kinds: kubernetes-validate's strict schemas (unknown fields fail) for Kubernetes 1.34, the
first release that serves ``CSIDriver.nodeAllocatableUpdatePeriodSeconds`` by default, and 1.37,
the newest the installed kubernetes-validate ships. Snapshot kinds: the v1 ``openAPIV3Schema`` of
the external-snapshotter CRDs in ``snapshot_schemas.json`` (its ``_source`` says where from), made
strict the way the API server's strict field validation is, plus the CRDs' CEL rules that apply
on create. Then what no schema sees: what kustomize renders, the csi-oxide containers' flags and
environment (read by the real CLI and credential loader), the sidecars, RBAC and resources.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from csi_oxide import DRIVER_NAME, __version__
from csi_oxide.cli import build_parser
from csi_oxide.contract.oxide_rules import is_valid_name
from csi_oxide.contract.volumes import FILESYSTEMS
from csi_oxide.controller import record
from csi_oxide.oxide.credentials import load_credentials
from csi_oxide.server import parse
from tests import skips

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
EXAMPLES = ROOT / "deploy" / "kubernetes" / "examples"
K8S_VERSIONS = ("1.34.0", "1.37.0")
CRDS = json.loads((Path(__file__).parent / "snapshot_schemas.json").read_text())
NAMESPACE = "kube-system"
SOCKET = "/csi/csi.sock"

# A parsed YAML document: JSON-like values of any shape, so Any is what yaml gives us.
Doc = dict[str, Any]

# Kinds the manifests use that are cluster-scoped (snapshot kinds take their scope from the CRD).
CLUSTER_SCOPED = {"CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding"}


def _docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_files() -> list[Path]:
    base = [f for f in sorted(BASE.glob("*.yaml")) if f.name != "kustomization.yaml"]
    return base + sorted(EXAMPLES.glob("*.yaml"))


def _base_docs() -> list[Doc]:
    return [d for f in _manifest_files() if f.parent == BASE for d in _docs(f)]


def _all() -> list[tuple[str, Doc]]:
    return [
        (f"{f.name}:{d['kind']}/{d['metadata']['name']}", d)
        for f in _manifest_files()
        for d in _docs(f)
    ]


def _one(kind: str, docs: list[Doc] | None = None) -> Doc:
    found = [d for d in (docs if docs is not None else _base_docs()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# ---- schema validation -------------------------------------------------------------------------


def _strict(schema: Doc) -> Doc:
    """The schema with unknown fields refused wherever the CRD does not preserve them."""
    node = dict(schema)
    if "properties" in node:
        node["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    return node


def _exactly_one(a: str, b: str) -> Callable[[Any], bool]:
    return lambda value: (a in value) != (b in value)


# The CEL rules of the vendored CRDs that apply on create, as Python. Transition rules (they
# mention oldSelf) only apply on update. A rule not listed here fails
# test_every_cel_rule_of_the_snapshot_crds_is_checked, so a new CRD version cannot slip one past.
CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "size(self) > 0": lambda value: len(value) > 0,
    "(has(self.volumeSnapshotContentName) && !has(self.persistentVolumeClaimName)) || "
    "(!has(self.volumeSnapshotContentName) && has(self.persistentVolumeClaimName))": _exactly_one(
        "volumeSnapshotContentName", "persistentVolumeClaimName"
    ),
    "(has(self.volumeHandle) && !has(self.snapshotHandle)) || "
    "(!has(self.volumeHandle) && has(self.snapshotHandle))": _exactly_one(
        "volumeHandle", "snapshotHandle"
    ),
    "has(self.name) && has(self.__namespace__)": lambda value: (
        "name" in value and "namespace" in value
    ),
}


def _cel_rules(schema: Doc, path: str = "") -> Iterator[tuple[str, Doc]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, sub in schema.get("properties", {}).items():
        yield from _cel_rules(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _cel_rules(schema[key], f"{path}[]")


def _cel_failures(schema: Doc, value: Any, path: str = "") -> list[str]:
    failures = [
        f"{path or '.'}: {rule['message']}"
        for rule in schema.get("x-kubernetes-validations", [])
        if "oldSelf" not in rule["rule"] and not CEL_RULES[rule["rule"]](value)
    ]
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                failures += _cel_failures(sub, value[key], f"{path}.{key}")
    return failures


def _validate(doc: Doc, version: str) -> None:
    crd = CRDS.get(doc["kind"])
    if crd is None:
        kubernetes_validate.validate(doc, version, strict=True)
        return
    assert doc["apiVersion"] == crd["apiVersion"]
    schema = crd["openAPIV3Schema"]
    jsonschema.validate(doc, _strict(schema))
    failures = _cel_failures(schema, doc)
    if failures:
        raise jsonschema.ValidationError("; ".join(failures))
    # The CRD leaves metadata to the API server, which checks it as ObjectMeta.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(holder, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), _all(), ids=[n for n, _ in _all()])
def test_every_manifest_validates(name: str, doc: Doc, version: str) -> None:
    _validate(doc, version)


def _typo(doc: Doc) -> None:
    (doc.get("spec") or doc)["attachRequird"] = True


def _empty_class_name(doc: Doc) -> None:
    doc["spec"]["volumeSnapshotClassName"] = ""


def _two_sources(doc: Doc) -> None:
    doc["spec"]["source"]["volumeSnapshotContentName"] = "some-content"


def _bad_policy(doc: Doc) -> None:
    doc["deletionPolicy"] = "Keep"


def _bad_metadata(doc: Doc) -> None:
    doc["metadata"]["labelz"] = {}


@pytest.mark.parametrize(
    ("kind", "damage"),
    [
        ("CSIDriver", _typo),
        ("Deployment", _typo),
        ("VolumeSnapshotClass", _typo),
        ("VolumeSnapshotClass", _bad_policy),
        ("VolumeSnapshotClass", _bad_metadata),
        ("VolumeSnapshot", _typo),
        ("VolumeSnapshot", _empty_class_name),
        ("VolumeSnapshot", _two_sources),
    ],
)
def test_the_validation_catches_a_broken_manifest(kind: str, damage: Callable[[Doc], None]) -> None:
    doc = copy.deepcopy(next(d for _, d in _all() if d["kind"] == kind))
    _validate(doc, K8S_VERSIONS[-1])  # whole, it passes
    damage(doc)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc, K8S_VERSIONS[-1])


def test_every_cel_rule_of_the_snapshot_crds_is_checked() -> None:
    for kind in ("VolumeSnapshotClass", "VolumeSnapshot", "VolumeSnapshotContent"):
        for path, rule in _cel_rules(CRDS[kind]["openAPIV3Schema"]):
            known = "oldSelf" in rule["rule"] or rule["rule"] in CEL_RULES
            assert known, f"{kind}{path}: CEL rule {rule['rule']!r} has no check here"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_validator_ships_each_version(version: str) -> None:
    # validate() falls back to the newest schemas not newer than asked for, and says which.
    used = kubernetes_validate.validate(_one("CSIDriver"), version, strict=True)
    assert used == version.rsplit(".", 1)[0]


def test_the_newest_version_is_the_validator_newest() -> None:
    assert kubernetes_validate.latest_version() == K8S_VERSIONS[-1]


# ---- kustomize --------------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_base_files() -> None:
    kustomization = _docs(BASE / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    present = {f.name for f in _manifest_files() if f.parent == BASE}
    assert sorted(listed) == sorted(present)
    assert len(listed) == len(set(listed))
    image = kustomization["images"][0]
    assert (image["name"], image["newTag"]) == ("csi-oxide", __version__)


def _kustomize() -> list[str] | None:
    """A kustomize to render with: $KUSTOMIZE, the project's tools dir, PATH, or kubectl's."""
    for candidate in (os.environ.get("KUSTOMIZE"), str(ROOT / ".tools" / "bin" / "kustomize")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate, "build"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    command = _kustomize()
    if command is None:
        skips.unavailable(
            "no kustomize ($KUSTOMIZE, .tools/bin, PATH) and no kubectl to render with"
        )
    out = subprocess.run(
        [*command, str(BASE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _key(doc: Doc) -> tuple[str, str]:
    return (doc["kind"], doc["metadata"]["name"])


def test_kustomize_renders_every_base_object_validly(rendered: list[Doc]) -> None:
    assert sorted(map(_key, rendered)) == sorted(map(_key, _base_docs()))
    for doc in rendered:
        for version in K8S_VERSIONS:
            _validate(doc, version)


def test_rendered_namespaces_follow_each_kind_scope(rendered: list[Doc]) -> None:
    for doc in rendered:
        crd = CRDS.get(doc["kind"])
        cluster = doc["kind"] in CLUSTER_SCOPED or (crd is not None and crd["scope"] == "Cluster")
        expected = None if cluster else NAMESPACE
        assert doc["metadata"].get("namespace") == expected, _key(doc)
        for subject in doc.get("subjects", []):
            assert subject["namespace"] == NAMESPACE


def test_rendered_csi_oxide_image_is_the_released_version(rendered: list[Doc]) -> None:
    for kind in ("Deployment", "DaemonSet"):
        assert _ours(kind, rendered)["image"] == f"csi-oxide:{__version__}"


# ---- the workloads ----------------------------------------------------------------------------


def _containers(kind: str, docs: list[Doc] | None = None) -> list[Doc]:
    return list(_one(kind, docs)["spec"]["template"]["spec"]["containers"])


def _ours(kind: str, docs: list[Doc] | None = None) -> Doc:
    return next(c for c in _containers(kind, docs) if c["name"] == "csi-oxide")


def _sidecar(kind: str, image: str) -> Doc:
    found = [c for c in _containers(kind) if c["image"].split("/")[-1].split(":")[0] == image]
    assert len(found) == 1, f"{kind}: expected one {image} sidecar"
    return found[0]


def _flag(container: Doc, name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, f"{duration!r} is not a duration this test reads"
    return int(match[1]) * (60 if match[2] == "m" else 1)


@pytest.mark.parametrize(("kind", "mode"), [("Deployment", "controller"), ("DaemonSet", "node")])
def test_csi_oxide_arguments_parse_with_the_cli(
    kind: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = _ours(kind)
    for var in ours.get("env", []):
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
    try:
        args = build_parser().parse_args(ours["args"])
    except SystemExit as exc:  # argparse reports an unknown flag or bad value this way
        pytest.fail(f"csi-oxide refuses the {kind}'s args {ours['args']}: exit {exc.code}")
    assert (args.command, args.mode, args.endpoint) == ("serve", mode, f"unix://{SOCKET}")
    cluster = {v["name"]: v.get("value") for v in ours.get("env", [])}.get("CSI_OXIDE_CLUSTER_ID")
    if cluster is not None:
        assert args.cluster_id == cluster  # the env name is the one the CLI reads
    ports = {p["containerPort"] for p in ours["ports"]}
    assert args.metrics_address is None or int(args.metrics_address.rsplit(":", 1)[1]) in ports


def test_every_env_name_set_for_csi_oxide_is_one_it_reads() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "csi_oxide").rglob("*.py"))
    for kind in ("Deployment", "DaemonSet"):
        for var in _ours(kind).get("env", []):
            assert re.search(rf"\b{var['name']}\b", sources), f"{kind}: nothing reads {var['name']}"


def test_controller_environment_yields_credentials(tmp_path: Path) -> None:
    """The Deployment's env and Secret mount, filled from the Secret template, load as the
    controller would load them."""
    secret = _one("Secret")
    assert set(secret["stringData"]) == {"oxide-host", "oxide-token", "oxide-project"}
    pod = _one("Deployment")["spec"]["template"]["spec"]
    ours = _ours("Deployment")
    volumes = {v["name"]: v for v in pod["volumes"]}
    moved: dict[str, Path] = {}
    for mount in ours["volumeMounts"]:
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue
        assert source["secretName"] == secret["metadata"]["name"]
        moved[mount["mountPath"]] = tmp_path / mount["name"]
        moved[mount["mountPath"]].mkdir()
        for item in source["items"]:
            (moved[mount["mountPath"]] / item["path"]).write_text(secret["stringData"][item["key"]])
    env: dict[str, str] = {}
    for var in ours["env"]:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
        elif "value" in var:
            env[var["name"]] = var["value"]  # (fieldRefs, such as POD_NAME, are no credentials)
    for mount_path, local in moved.items():  # the token file path, as seen on this machine
        env = {k: v.replace(mount_path, str(local)) for k, v in env.items()}
    assert "OXIDE_TOKEN" not in env, "the token must come from the mounted file (rotation)"
    creds = load_credentials(env, tmp_path / "no-config")
    assert creds.host == secret["stringData"]["oxide-host"]
    assert creds.project == secret["stringData"]["oxide-project"]
    assert creds.token() == secret["stringData"]["oxide-token"]
    assert secret["stringData"]["oxide-token"] not in repr(creds)


def test_node_holds_no_credentials_and_no_api_token() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        for var in c.get("env", []):
            name = var["name"]
            assert not name.startswith("OXIDE_"), var
            assert name not in ("CSI_OXIDE_TOKEN_FILE", "CSI_OXIDE_CA_FILE"), var
            assert "secretKeyRef" not in var.get("valueFrom", {}), var
    assert not any("secret" in v for v in pod["volumes"])


def test_node_is_privileged_with_the_host_paths_it_needs() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    ours = _ours("DaemonSet")
    assert ours["securityContext"]["privileged"] is True
    assert ours["securityContext"]["runAsUser"] == 0
    host = {v["name"]: v["hostPath"]["path"].rstrip("/") for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in ours["volumeMounts"]}
    kubelet = mounts["/var/lib/kubelet"]
    assert host[kubelet["name"]] == "/var/lib/kubelet"
    assert kubelet["mountPropagation"] == "Bidirectional"
    for path in ("/dev", "/sys", "/run/udev"):
        assert host[mounts[path]["name"]] == path
    socket_dir = f"/var/lib/kubelet/plugins/{DRIVER_NAME}"
    assert host[mounts["/csi"]["name"]] == socket_dir
    # csi-oxide registers with the kubelet itself (no node-driver-registrar): it serves the
    # registration API in the kubelet's plugins_registry and names the CSI socket's host path.
    args = build_parser().parse_args(ours["args"])
    assert args.kubelet_registration_path == f"{socket_dir}/csi.sock"
    assert args.registration_dir is not None
    assert host[mounts[args.registration_dir]["name"]] == "/var/lib/kubelet/plugins_registry"


def test_sidecars_are_the_pinned_set_and_share_the_socket() -> None:
    expected = {
        "Deployment": {
            "csi-provisioner",
            "csi-attacher",
            "csi-resizer",
            "csi-snapshotter",
        },
        # Registration and liveness are csi-oxide's own (README: "Install on a cluster").
        "DaemonSet": set(),
    }
    for kind, names in expected.items():
        ours = {m["name"] for m in _ours(kind)["volumeMounts"] if m["mountPath"] == "/csi"}
        sidecars = [c for c in _containers(kind) if c["name"] != "csi-oxide"]
        assert {c["image"].split("/")[-1].split(":")[0] for c in sidecars} == names
        for c in sidecars:
            assert c["image"].startswith("registry.k8s.io/sig-storage/"), c["image"]
            assert re.search(r":v\d+\.\d+\.\d+$", c["image"]), f"{c['image']} is not pinned"
            assert _flag(c, "csi-address") == SOCKET, c["name"]
            shared = {m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/csi"}
            assert shared == ours, f"{c['name']} does not see csi-oxide's socket"


def test_controller_sidecars_elect_a_leader_and_wait_long_enough() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    minimum = {
        "csi-provisioner": 60,
        "csi-attacher": 120,
        "csi-resizer": 60,
        "csi-snapshotter": 300,
    }
    for image, seconds in minimum.items():
        c = _sidecar("Deployment", image)
        assert "--leader-election" in c["args"] or _flag(c, "leader-election") == "true", image
        timeout = _flag(c, "timeout")
        assert timeout is not None and _seconds(timeout) >= seconds, f"{image} --timeout={timeout}"
    provisioner = _sidecar("Deployment", "csi-provisioner")
    assert "--extra-create-metadata" in provisioner["args"]
    assert "--extra-create-metadata" in _sidecar("Deployment", "csi-snapshotter")["args"]
    assert _flag(provisioner, "default-fstype") in FILESYSTEMS
    # Expansion is offline only: the resizer must wait for the claim to be unused.
    assert _flag(_sidecar("Deployment", "csi-resizer"), "handle-volume-inuse-error") == "true"


def test_controller_disruption_budget_covers_its_replicas_and_lets_drains_through() -> None:
    """Voluntary evictions (node drains) take the controller's replicas one at a time, and can
    still take a lone replica (minAvailable: 1 would block every drain of its node)."""
    budget = _one("PodDisruptionBudget")
    deployment = _one("Deployment")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    assert budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_liveness_probes_point_at_a_listening_port(kind: str) -> None:
    # csi-oxide answers /healthz beside /metrics on --metrics-address (no livenessprobe sidecar).
    ours = _ours(kind)
    args = build_parser().parse_args(ours["args"])
    assert args.metrics_address is not None, "the liveness answer needs --metrics-address"
    listening = int(args.metrics_address.rsplit(":", 1)[1])
    named = {p["name"]: p["containerPort"] for p in ours.get("ports", [])}
    probe = ours["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert named.get(probe["port"], probe["port"]) == listening
    for c in _containers(kind):
        assert "livenessProbe" not in c or c["name"] == "csi-oxide", c["name"]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_every_container_has_requests_and_a_memory_limit(kind: str) -> None:
    for c in _containers(kind):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]


def test_controller_runs_unprivileged() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "privileged" not in context, c["name"]


# ---- RBAC -------------------------------------------------------------------------------------


def test_rbac_is_least_privilege() -> None:
    docs = _base_docs()
    for doc in docs:
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{_key(doc)} has a wildcard in {field}"
            assert "secrets" not in rule["resources"], f"{_key(doc)} grants Secrets"
    roles = {_key(d) for d in docs if d["kind"] in ("Role", "ClusterRole")}
    bound: set[str] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        bound |= {s["name"] for s in binding["subjects"]}
    node_account = _one("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    controller_account = _one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert bound == {controller_account}, "only the controller may call the Kubernetes API"
    assert node_account != controller_account
    leases = [r for r in _one("Role")["rules"] if "leases" in r["resources"]]
    assert leases and leases[0]["apiGroups"] == ["coordination.k8s.io"]


# ---- classes and examples ---------------------------------------------------------------------


def test_csidriver_matches_what_the_driver_does() -> None:
    driver = _one("CSIDriver")
    spec = driver["spec"]
    assert driver["metadata"]["name"] == DRIVER_NAME
    assert spec["attachRequired"] is True
    assert spec["podInfoOnMount"] is False
    assert spec["fsGroupPolicy"] == "File"
    assert spec["volumeLifecycleModes"] == ["Persistent"]
    assert spec["nodeAllocatableUpdatePeriodSeconds"] >= 10  # the API's minimum


def test_storageclass_parameters_are_accepted_by_the_driver() -> None:
    sc = _one("StorageClass")
    assert sc["provisioner"] == DRIVER_NAME
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["allowVolumeExpansion"] is True
    params = sc.get("parameters", {})
    assert params.get("csi.storage.k8s.io/fstype", "ext4") in FILESYSTEMS
    # What CreateVolume receives: the provisioner drops its own csi.storage.k8s.io/ keys and,
    # with --extra-create-metadata, adds the claim's and volume's names.
    sent = {k: v for k, v in params.items() if not k.startswith(parse.K8S_PREFIX)}
    sent |= {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default",
        "csi.storage.k8s.io/pv/name": "pvc-0f0e",
    }
    accepted = parse.volume_parameters(sent)
    assert (accepted.pvc, accepted.pv) == ("default/data", "pvc-0f0e")


def test_volumesnapshotclass_parameters_are_accepted_by_the_driver() -> None:
    vsc = _one("VolumeSnapshotClass")
    assert vsc["driver"] == DRIVER_NAME
    sent = {k: v for k, v in vsc.get("parameters", {}).items() if not k.startswith("csi.storage")}
    sent["csi.storage.k8s.io/volumesnapshot/name"] = "snap"
    parse.snapshot_parameters(sent)


def _named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_example_classes_are_the_drivers_and_accepted_by_it() -> None:
    examples = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(f)]
    for sc in _named(examples, "StorageClass").values():
        assert sc["provisioner"] == DRIVER_NAME
        sent = {
            k: v for k, v in sc.get("parameters", {}).items() if k != "csi.storage.k8s.io/fstype"
        }
        parse.volume_parameters(sent)
    for vsc in _named(examples, "VolumeSnapshotClass").values():
        assert vsc["driver"] == DRIVER_NAME
        parse.snapshot_parameters(vsc.get("parameters", {}))
    for content in _named(examples, "VolumeSnapshotContent").values():
        assert content["spec"]["driver"] == DRIVER_NAME
        handle = content["spec"]["source"]["snapshotHandle"]
        assert record.is_image_id(handle) and is_valid_name(handle)
        assert content["spec"]["deletionPolicy"] == "Retain"  # the driver never deletes it


def test_examples_use_the_base_classes() -> None:
    examples = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in _docs(f)]
    sc = {_one("StorageClass")["metadata"]["name"], *_named(examples, "StorageClass")}
    vsc = {
        _one("VolumeSnapshotClass")["metadata"]["name"],
        *_named(examples, "VolumeSnapshotClass"),
    }
    claims = _named(examples, "PersistentVolumeClaim")
    assert claims and all(c["spec"]["storageClassName"] in sc for c in claims.values())
    for c in claims.values():
        assert c["spec"]["accessModes"] == ["ReadWriteOnce"]  # one instance at a time
    snapshots = _named(examples, "VolumeSnapshot")
    contents = _named(examples, "VolumeSnapshotContent")
    for snap in snapshots.values():
        assert snap["spec"]["volumeSnapshotClassName"] in vsc
        source = snap["spec"]["source"]
        if "volumeSnapshotContentName" in source:
            content = contents[source["volumeSnapshotContentName"]]
            assert content["spec"]["volumeSnapshotRef"]["name"] == snap["metadata"]["name"]
        else:
            assert source["persistentVolumeClaimName"] in claims
    for claim in claims.values():
        source = claim["spec"].get("dataSource")
        if source is not None:
            assert source["name"] in snapshots
    pods = [d for d in examples if d["kind"] == "Pod"]
    assert pods
    for pod in pods:
        for volume in pod["spec"]["volumes"]:
            assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_e2e_test_driver_names_classes_that_exist() -> None:
    driver = yaml.safe_load((ROOT / "tests" / "e2e" / "testdriver.yaml").read_text())
    assert driver["DriverInfo"]["Name"] == DRIVER_NAME
    assert (
        driver["StorageClass"]["FromExistingClassName"] == _one("StorageClass")["metadata"]["name"]
    )
    vsc = _one("VolumeSnapshotClass")["metadata"]["name"]
    assert driver["SnapshotClass"]["FromExistingClassName"] == vsc
    caps = driver["DriverInfo"]["Capabilities"]
    assert (caps["offlineExpansion"], caps["onlineExpansion"]) == (True, False)
