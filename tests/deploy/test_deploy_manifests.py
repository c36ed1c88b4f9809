"""The Kubernetes manifests, validated offline against the Kubernetes API schemas.

Core kinds: kubernetes-validate's schemas for Kubernetes 1.35, strict (unknown fields fail).
Snapshot CRDs: the schema in snapshot_schemas.json (see its ``_source``). Then what the schemas
cannot see: the kustomization lists every file, each csi-oxide container's arguments parse with
the real CLI, images are pinned, and the node holds no Oxide credentials.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from csi_oxide.cli import build_parser
from csi_oxide.errors import CsiOxideError
from csi_oxide.server import parse

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
EXAMPLES = ROOT / "deploy" / "kubernetes" / "examples"
K8S_VERSION = "1.35.0"
CRD_SCHEMAS = json.loads((Path(__file__).parent / "snapshot_schemas.json").read_text())

Doc = dict[str, Any]


def _docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> list[tuple[str, Doc]]:
    files = sorted(BASE.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yaml"))
    return [
        (f"{f.name}:{d['kind']}/{d['metadata']['name']}", d)
        for f in files
        if f.name != "kustomization.yaml"
        for d in _docs(f)
    ]


def _by_kind(kind: str) -> list[Doc]:
    return [d for _, d in _all() if d["kind"] == kind]


def _validate(doc: Doc) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("name", "doc"), _all(), ids=[n for n, _ in _all()])
def test_every_manifest_validates(name: str, doc: Doc) -> None:
    _validate(doc)


@pytest.mark.parametrize("kind", ["CSIDriver", "VolumeSnapshotClass"])
def test_the_validation_rejects_an_unknown_field(kind: str) -> None:
    doc = copy.deepcopy(_by_kind(kind)[0])
    target = doc.get("spec", doc)
    target["attachRequird"] = True  # a typo must not pass
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(doc)


def test_kustomization_lists_exactly_the_base_files() -> None:
    kustomization = _docs(BASE / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {f.name for f in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["namespace"] == "kube-system"


def _containers(kind: str) -> list[Doc]:
    return list(_by_kind(kind)[0]["spec"]["template"]["spec"]["containers"])


def _ours(kind: str) -> Doc:
    return next(c for c in _containers(kind) if c["name"] == "csi-oxide")


@pytest.mark.parametrize(("kind", "mode"), [("Deployment", "controller"), ("DaemonSet", "node")])
def test_csi_oxide_arguments_parse_with_the_cli(kind: str, mode: str) -> None:
    args = build_parser().parse_args(_ours(kind)["args"])
    assert (args.command, args.mode, args.endpoint) == ("serve", mode, "unix:///csi/csi.sock")


def test_images_are_pinned() -> None:
    for kind in ("Deployment", "DaemonSet"):
        for c in _containers(kind):
            if c["name"] == "csi-oxide":
                continue  # set by the kustomization's images entry
            image = c["image"]
            assert image.startswith("registry.k8s.io/sig-storage/"), image
            assert ":v" in image, f"{image} is not pinned to a release"


def test_csidriver_matches_what_the_driver_does() -> None:
    spec = _by_kind("CSIDriver")[0]["spec"]
    assert spec["attachRequired"] is True
    assert spec["podInfoOnMount"] is False
    assert spec["fsGroupPolicy"] == "File"
    assert spec["volumeLifecycleModes"] == ["Persistent"]


def test_controller_has_credentials_and_runs_unprivileged() -> None:
    deployment = _by_kind("Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in _ours("Deployment")["env"]}
    assert env["OXIDE_HOST"]["valueFrom"]["secretKeyRef"]["key"] == "oxide-host"
    assert env["OXIDE_PROJECT"]["valueFrom"]["secretKeyRef"]["key"] == "oxide-project"
    assert "OXIDE_TOKEN" not in env  # read from the mounted Secret file, so rotation works
    assert env["CSI_OXIDE_TOKEN_FILE"]["value"] == "/etc/oxide/oxide-token"
    for c in _containers("Deployment"):
        if c["name"].startswith("csi-") and c["name"] != "csi-oxide":
            assert "--leader-election" in c["args"]
        assert "limits" in c["resources"]
        assert "requests" in c["resources"]
    resizer = next(c for c in _containers("Deployment") if c["name"] == "csi-resizer")
    assert "--handle-volume-inuse-error=true" in resizer["args"]


def test_node_is_privileged_without_credentials() -> None:
    pod = _by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    ours = _ours("DaemonSet")
    assert ours["securityContext"]["privileged"] is True
    assert "env" not in ours or not any("OXIDE" in e["name"] for e in ours["env"])
    mounts = {m["name"]: m for m in ours["volumeMounts"]}
    assert mounts["kubelet-dir"]["mountPropagation"] == "Bidirectional"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host["kubelet-dir"] == "/var/lib/kubelet"
    assert {host["device-dir"], host["sys-dir"], host["udev-dir"]} == {"/dev", "/sys", "/run/udev"}
    registrar = next(c for c in pod["containers"] if c["name"] == "node-driver-registrar")
    assert (
        "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.oxide.computer/csi.sock"
        in registrar["args"]
    )
    assert host["plugin-dir"].rstrip("/") == "/var/lib/kubelet/plugins/csi.oxide.computer"


def test_storageclass_parameters_are_accepted_by_the_driver() -> None:
    sc = _by_kind("StorageClass")[0]
    assert sc["provisioner"] == "csi.oxide.computer"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["allowVolumeExpansion"] is True
    try:
        parse.volume_parameters(sc["parameters"])
    except CsiOxideError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"the driver refuses the StorageClass parameters: {exc}")


def test_e2e_test_driver_names_classes_that_exist() -> None:
    driver = yaml.safe_load((ROOT / "e2e" / "testdriver.yaml").read_text())
    assert driver["DriverInfo"]["Name"] == "csi.oxide.computer"
    assert (
        driver["StorageClass"]["FromExistingClassName"]
        == _by_kind("StorageClass")[0]["metadata"]["name"]
    )
    vsc = _by_kind("VolumeSnapshotClass")[0]["metadata"]["name"]
    assert driver["SnapshotClass"]["FromExistingClassName"] == vsc
    caps = driver["DriverInfo"]["Capabilities"]
    assert (caps["offlineExpansion"], caps["onlineExpansion"]) == (True, False)
