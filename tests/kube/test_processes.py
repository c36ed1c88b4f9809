"""``csi-oxide serve`` itself against the Kubernetes API (the fake one of tests/kube, over TLS):
two controller replicas with ``--leader-election`` run the reconciler one at a time, and the
second takes over when the first is killed; a node plugin with ``--startup-taint`` lifts its
node's taint once its CSINode lists the driver. Real processes, the real simulator."""

from __future__ import annotations

import contextlib
import signal
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from csi_oxide import DRIVER_NAME, RECONCILER_LEASE
from csi_oxide.kube.taint import AGENT_NOT_READY
from csi_oxide_lab import harness
from tests.kube.fake_api import TOKEN, FakeKubeApi
from tests.polling import wait_until

NAMESPACE = "kube-system"
# Short leases, so that a take-over happens within seconds (the defaults are 15 s, 10 s, 2 s),
# yet with seconds of slack for a renewal on a loaded machine.
FAST_LEASE = [
    "--log-level=debug",
    "--leader-election",
    "--leader-election-lease-duration=6",
    "--leader-election-renew-deadline=4",
    "--leader-election-retry-period=0.5",
]


@pytest.fixture
def served(certificate: tuple[Path, Path]) -> Iterator[FakeKubeApi]:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeKubeApi(tls=tls) as api:
        yield api


def _pod_env(api: FakeKubeApi, folder: Path, cert: Path) -> dict[str, str]:
    """What a pod's containers have: the service's address and the service-account folder."""
    folder.mkdir()
    (folder / "token").write_text(TOKEN)
    (folder / "ca.crt").write_text(cert.read_text())
    (folder / "namespace").write_text(NAMESPACE)
    port = api.url.rsplit(":", 1)[1]
    return {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": port,
        "CSI_OXIDE_SERVICE_ACCOUNT_DIR": str(folder),
    }


def _holder(api: FakeKubeApi) -> str | None:
    lease = api.lease(NAMESPACE, RECONCILER_LEASE)
    return None if lease is None else str(lease["spec"].get("holderIdentity", ""))


def _csinode_reads(api: FakeKubeApi, node: str) -> int:
    path = f"/apis/storage.k8s.io/v1/csinodes/{node}"
    return sum(1 for seen in list(api.seen) if seen.method == "GET" and seen.path == path)


def _passes(driver: harness.Driver) -> int:
    """How many reconciler passes the driver made: each lists the project's snapshots (nothing
    else of a controller does unasked), and ``--log-level debug`` logs each Oxide request."""
    return driver.proc.output().count("operation=snapshot_list")


def _controller(
    tmp_path: Path, sim_env: Mapping[str, str], pod: Mapping[str, str], name: str
) -> harness.Driver:
    env = {**sim_env, **pod, "POD_NAME": name}
    return harness.start_driver(tmp_path, env, mode="controller", name=name, extra=FAST_LEASE)


def test_two_controllers_reconcile_one_at_a_time_and_the_second_takes_over(
    tmp_path: Path, served: FakeKubeApi, certificate: tuple[Path, Path]
) -> None:
    pod = _pod_env(served, tmp_path / "serviceaccount", certificate[0])
    with contextlib.ExitStack() as stops:  # every process stopped, whatever fails
        sim = harness.start_sim(tmp_path)
        stops.callback(sim.proc.stop)
        first = _controller(tmp_path, sim.env, pod, "controller-a")
        stops.callback(first.proc.stop)
        assert wait_until(lambda: _holder(served) == "controller-a", 30), _holder(served)
        assert wait_until(lambda: _passes(first) > 0, 30), first.proc.output()[-2000:]
        second = _controller(tmp_path, sim.env, pod, "controller-b")
        stops.callback(second.proc.stop)
        observed = "lease holder observed"
        assert wait_until(lambda: observed in second.proc.output(), 30), second.proc.output()
        # Then it writes nothing and reconciles nothing while the first holds the Lease, for 2
        # lease durations (it would have taken an expired one by then).
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            assert _holder(served) == "controller-a", first.proc.output()[-3000:]
            assert _passes(second) == 0, second.proc.output()[-2000:]
            time.sleep(0.5)
        first.proc.popen.send_signal(signal.SIGKILL)  # no release: the Lease must expire
        first.proc.popen.wait(10)
        assert wait_until(lambda: _holder(served) == "controller-b", 30), _holder(served)
        assert wait_until(lambda: _passes(second) > 0, 30), second.proc.output()[-2000:]
        lease = served.lease(NAMESPACE, RECONCILER_LEASE)
        assert lease is not None and lease["spec"]["leaseTransitions"] >= 1
        # A replica stopped on purpose hands the Lease back at once.
        assert second.proc.stop() == 0
        assert _holder(served) == ""


def test_a_node_plugin_lifts_its_startup_taint_once_registered(
    tmp_path: Path, served: FakeKubeApi, certificate: tuple[Path, Path]
) -> None:
    pod = _pod_env(served, tmp_path / "serviceaccount", certificate[0])
    other = {"key": "example.com/keep", "effect": "NoSchedule"}
    served.put_node("node-a", [{"key": AGENT_NOT_READY, "effect": "NoExecute"}, other])
    with contextlib.ExitStack() as stops:
        sim = harness.start_sim(tmp_path)
        stops.callback(sim.proc.stop)
        env = {**sim.env, **pod, "NODE_NAME": "node-a"}
        extra = ["--startup-taint"]
        node = harness.start_driver(tmp_path, env, mode="node", name="node", extra=extra)
        stops.callback(node.proc.stop)
        # No CSINode lists the driver yet: the plugin looks (twice), and the taint stays.
        assert wait_until(lambda: _csinode_reads(served, "node-a") >= 2, 30), node.proc.output()
        assert served.node("node-a")["spec"]["taints"][0]["key"] == AGENT_NOT_READY
        served.put_csinode("node-a", [{"name": DRIVER_NAME, "nodeID": "another-node"}])
        reads = _csinode_reads(served, "node-a")
        assert wait_until(lambda: _csinode_reads(served, "node-a") >= reads + 2, 30)
        assert served.node("node-a")["spec"]["taints"][0]["key"] == AGENT_NOT_READY
        ours = {"name": DRIVER_NAME, "nodeID": sim.env["CSI_OXIDE_NODE_ID"]}
        served.put_csinode("node-a", [ours])
        assert wait_until(lambda: served.node("node-a")["spec"]["taints"] == [other], 30)
        # The line follows the PATCH's answer: it may reach the log a moment after the taint goes.
        assert wait_until(lambda: "startup taint checked" in node.proc.output(), 30)
