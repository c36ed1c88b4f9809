"""tests/e2e/helm.py against a real API server: the chart installed, upgraded and removed.

Only etcd and kube-apiserver run (the cluster test's own, from cluster.py): no kubelet, so no pod
starts. What this proves is what the conformance run relies on before any pod: ``helm upgrade
--install`` with the test cluster's values is accepted by a real v1.34 API server (every object,
the VolumeSnapshotClass against the real snapshot CRDs), a second call with a new run upgrades
the release and changes the pod templates, and ``helm uninstall`` leaves none of the objects.
Teardown stops only the processes this test started (never Cluster.stop(), which also clears the
kubelet's pod cgroups of the machine).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import skips
from tests.e2e import helm
from tests.e2e.cluster import TOOLS_DIR, Cluster, Tools

ROOT = Path(__file__).resolve().parents[2]
KUBE = "v1.34.4"

pytestmark = [
    pytest.mark.root,
    pytest.mark.e2e,
    pytest.mark.timeout(1800),  # etcd, an API server and the chart installed, upgraded, removed
    skips.opt_in("CSI_OXIDE_E2E", "make e2e; make test runs it as root"),
]


def _api_server(*, snapshot_crds: bool) -> Iterator[Cluster]:
    """etcd + kube-apiserver, with the snapshot CRDs or without; stopped by PID at the end."""
    tools = Tools({n: TOOLS_DIR / f"{n}-{KUBE}" for n in ("kube-apiserver", "kubectl")})
    cluster = Cluster(tools)
    cluster.ledger.record_dir(cluster.state)  # a killed run's processes go at the next start
    try:
        cluster.state.chmod(0o755)
        cluster._pki()
        cluster._etcd()
        cluster._apiserver()
        if not snapshot_crds:
            yield cluster
            return
        crds = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "cluster" / "build_tools.py"), "--crd-dir"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for crd in sorted(Path(crds).glob("*.yaml")):
            if crd.name != "kustomization.yaml":
                cluster.kubectl("apply", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "--all", "crd", "--timeout=60s")
        yield cluster
    finally:
        for proc in reversed(cluster.procs):
            cluster._stop_proc(proc)
        shutil.rmtree(cluster.state, ignore_errors=True)
        cluster.ledger.drop()


@pytest.fixture
def api() -> Iterator[Cluster]:
    yield from _api_server(snapshot_crds=True)


@pytest.fixture
def bare_api() -> Iterator[Cluster]:
    yield from _api_server(snapshot_crds=False)


def _install(api: Cluster, run: str) -> None:
    disks = api.state / "disks"
    disks.mkdir(exist_ok=True)
    sim_env = {
        "OXIDE_HOST": "http://127.0.0.1:41000",
        "OXIDE_TOKEN": "oxide-token-abc",
        "OXIDE_PROJECT": "csi",
        "CSI_OXIDE_NODE_ID": "7b0c3c1e-8f3a-4f4e-9a51-0d3f1c2b5a6e",
        "CSI_OXIDE_SIM_DEVICE_DIR": str(disks),
    }
    helm.install(
        api.kubeconfig,
        sim_env=sim_env,
        api_port=api.api_port,
        kubelet_dir=api.kubelet_dir,
        state_dir=api.state,
        ports=(19090, 19091),
        run=run,
    )


def test_helm_installs_without_the_snapshot_crds(bare_api: Cluster) -> None:
    """A cluster without external-snapshotter's CRDs: the install succeeds, without the class."""
    _install(bare_api, "r1")
    assert bare_api.get("deployment", "-n", helm.NAMESPACE, "csi-oxide-controller") is not None
    kinds = bare_api.kubectl("api-resources", "-o", "name").stdout.split()
    assert not any(k.startswith("volumesnapshotclasses") for k in kinds)  # really none here
    helm.uninstall(bare_api.kubeconfig, bare_api.state)


def test_helm_installs_upgrades_and_uninstalls_the_chart(api: Cluster) -> None:
    def install(run: str) -> None:
        _install(api, run)

    install("r1")
    ns = ("-n", helm.NAMESPACE)
    node = api.get("daemonset", *ns, "csi-oxide-node")
    assert node is not None
    pod = node["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"csi-oxide-e2e/run": "r1"}
    args = pod["spec"]["containers"][0]["args"]
    socket = f"{api.kubelet_dir}/plugins/csi.oxide.computer/csi.sock"
    assert f"--kubelet-registration-path={socket}" in args
    controller = api.get("deployment", *ns, "csi-oxide-controller")
    assert controller["spec"]["replicas"] == 1
    secret = api.get("secret", *ns, "oxide-credentials")
    assert secret is not None and set(secret["data"]) == {
        "oxide-host",
        "oxide-token",
        "oxide-project",
    }
    for kind, name in (
        ("csidriver", "csi.oxide.computer"),
        ("storageclass", "oxide-disk"),
        ("volumesnapshotclass", "oxide-snapshot"),
        ("clusterrole", "csi-oxide-controller"),
    ):
        got = api.get(kind, name)
        assert got is not None, (kind, name)
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    # Again with a new run: an upgrade of the same release, rolling the pod templates.
    install("r2")
    node = api.get("daemonset", *ns, "csi-oxide-node")
    assert node["spec"]["template"]["metadata"]["annotations"] == {"csi-oxide-e2e/run": "r2"}
    releases = [
        s["metadata"]["name"]
        for s in api.get("secrets", *ns, "-l", "owner=helm,name=csi-oxide")["items"]
    ]
    assert sorted(releases) == [
        "sh.helm.release.v1.csi-oxide.v1",
        "sh.helm.release.v1.csi-oxide.v2",
    ]

    helm.uninstall(api.kubeconfig, api.state)
    assert api.get("daemonset", *ns, "csi-oxide-node") is None
    assert api.get("csidriver", "csi.oxide.computer") is None
    assert api.get("volumesnapshotclass", "oxide-snapshot") is None
    assert api.get("secret", *ns, "oxide-credentials") is None
