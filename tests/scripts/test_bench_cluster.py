"""The pure parts of scripts/bench_cluster.py (``make bench``, step "pods"): the metrics parsing,
the per-volume chain of Oxide requests, the reference arithmetic and the goal, the pairing of
watch timestamps, the attach-limit cap and the skip rule. The cluster run itself is the
benchmark (root, minutes), not a test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest
from prometheus_client import generate_latest

from csi_oxide.metrics import Metrics
from csi_oxide.oxide.client import RequestRecord

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


@pytest.fixture(scope="module")
def bc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cluster", SCRIPTS / "bench_cluster.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cluster"] = module  # its dataclasses look their module up
    sys.path.insert(0, str(SCRIPTS))  # it imports bench_load, as bench.py does
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def _record(op: str, seconds: float, status: int = 200, outcome: str = "ok") -> RequestRecord:
    return RequestRecord(op, "GET", status, outcome, seconds, None, 1)


def _exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


# ---- metrics, as the driver really exposes them ---------------------------------------------


def test_parse_metrics_reads_the_drivers_own_exposition(bc: ModuleType) -> None:
    metrics = Metrics()
    metrics.oxide_request(_record("disk_create", 0.5, 201))
    metrics.oxide_request(_record("disk_create", 0.25, 503, "http_error"))  # a retried attempt
    metrics.oxide_request(_record("disk_view", 0.125))
    metrics.rpc_started("CreateVolume")
    metrics.rpc_finished("CreateVolume", "OK", 0.75)
    got = bc.parse_metrics(_exposition(metrics))
    # Attempts summed over status and outcome, durations from the histogram's _sum.
    assert got.count == {"disk_create": 2.0, "disk_view": 1.0}
    assert got.seconds == {"disk_create": 0.75, "disk_view": 0.125}
    assert got.rpc_seconds == {"CreateVolume": 0.75}


def test_parse_metrics_ignores_other_families_and_comments(bc: ModuleType) -> None:
    text = (
        "# HELP csi_oxide_oxide_requests_total x\n"
        'csi_oxide_rpc_total{method="Probe",code="OK"} 7.0\n'
        'csi_oxide_oxide_request_duration_seconds_bucket{le="0.5",operation="disk_view"} 3.0\n'
        'csi_oxide_oxide_request_duration_seconds_count{operation="disk_view"} 3.0\n'
        "process_cpu_seconds_total 12.0\n"
    )
    got = bc.parse_metrics(text)
    assert (got.count, got.seconds, got.rpc_seconds) == ({}, {}, {})


def test_scrapes_of_two_processes_add_up(bc: ModuleType) -> None:
    a = bc.Requests({"disk_view": 1.0}, {"disk_view": 0.5}, {"CreateVolume": 1.0})
    b = bc.Requests({"disk_view": 2.0, "x": 1.0}, {"disk_view": 1.0}, {"NodeStageVolume": 0.25})
    total = a + b
    assert total.count == {"disk_view": 3.0, "x": 1.0}
    assert total.seconds == {"disk_view": 1.5}
    assert total.rpc_seconds == {"CreateVolume": 1.0, "NodeStageVolume": 0.25}


# ---- the chain and the reference ------------------------------------------------------------


def test_chain_is_per_volume_without_the_background_requests(bc: ModuleType) -> None:
    before = bc.Requests(
        {"disk_create": 2.0, "utilization_view": 5.0, "disk_view": 1.0},
        {"disk_create": 1.0, "utilization_view": 2.5, "disk_view": 0.5},
    )
    after = bc.Requests(
        {
            "disk_create": 6.0,  # 4 volumes: 1 each
            "instance_disk_attach": 4.0,  # 1 each
            "disk_view": 7.0,  # 6 for 4 volumes: 1.5 each
            "utilization_view": 9.0,  # the health check: not the volumes'
            "disk_list": 1.0,  # csi-attacher's ListVolumes: not the volumes'
            "snapshot_list": 1.0,  # the reconciler: not the volumes'
        },
        {
            "disk_create": 3.0,
            "instance_disk_attach": 2.0,
            "disk_view": 3.5,
            "utilization_view": 99.0,
            "disk_list": 99.0,
            "snapshot_list": 99.0,
        },
    )
    chain = bc.chain_of(before, after, 4)
    assert chain.per_volume == {"disk_create": 1.0, "instance_disk_attach": 1.0, "disk_view": 1.5}
    assert chain.requests == pytest.approx(3.5)
    # 14 requests of the volumes took 2 + 2 + 3 seconds: 0.5 s each on average.
    assert chain.mean_seconds == pytest.approx(0.5)
    assert chain.seconds == pytest.approx(1.75)
    assert "3.5 Oxide requests" in chain.describe()
    assert "disk_view 1.5" in chain.describe()
    assert "500 ms on average = 1.75 s" in chain.describe()


def test_a_chain_needs_requests_and_volumes(bc: ModuleType) -> None:
    same = bc.Requests({"disk_view": 1.0}, {"disk_view": 0.5})
    with pytest.raises(ValueError, match="no Oxide request"):
        bc.chain_of(same, same, 1)
    only_background = bc.Requests({"utilization_view": 3.0}, {"utilization_view": 1.0})
    with pytest.raises(ValueError, match="no Oxide request"):
        bc.chain_of(bc.Requests({}, {}), only_background, 1)
    with pytest.raises(ValueError, match="at least 1"):
        bc.chain_of(bc.Requests({}, {}), same, 0)


def test_rpc_time_per_volume_covers_the_path_to_a_pod(bc: ModuleType) -> None:
    before = bc.Requests({}, {}, {"CreateVolume": 1.0, "Probe": 1.0})
    after = bc.Requests(
        {}, {}, {"CreateVolume": 3.0, "ControllerPublishVolume": 4.0, "NodeStageVolume": 0.5}
    )
    got = bc.rpc_per_volume(before, after, 2)
    assert got == {
        "CreateVolume": 1.0,
        "ControllerPublishVolume": 2.0,
        "NodeStageVolume": 0.25,
        "NodePublishVolume": 0.0,
    }


def test_reference_own_time_and_goal(bc: ModuleType) -> None:
    chain = bc.Chain({"disk_create": 1.0, "disk_view": 2.0, "instance_disk_attach": 1.0}, 0.55)
    by_hand = 0.03
    ref = bc.reference_seconds(chain, by_hand)
    assert ref == pytest.approx(4 * 0.55 + 0.03)
    # Kubernetes' own time: the zero-latency figure less the mkfs + mount it holds, never < 0.
    assert bc.kubernetes_own(3.63, by_hand) == pytest.approx(3.6)
    assert bc.kubernetes_own(0.01, by_hand) == 0.0
    bound = bc.goal_bound(ref, 3.6)
    assert bound == pytest.approx(1.2 * (2.23 + 3.6))
    assert bc.goal_bound(ref, 3.6, slack=1.0) == pytest.approx(5.83)


# ---- the watch timestamps -------------------------------------------------------------------


def test_summarize_pairs_each_pod_with_its_claim(bc: ModuleType) -> None:
    created = {"p-0": 10.0, "p-1": 10.5, "p-2": 11.0}
    running = {"p-0": 14.0, "p-1": 12.5, "p-2": 19.0}
    got = bc.summarize(created, running)
    assert got.seconds == {"p-0": 4.0, "p-1": 2.0, "p-2": 8.0}
    assert got.median == 4.0
    assert got.slowest == 8.0
    assert got.wall == 9.0  # first claim created (10.0) -> last pod Running (19.0)


def test_summarize_refuses_unpaired_or_impossible_timings(bc: ModuleType) -> None:
    with pytest.raises(ValueError, match="p-1"):
        bc.summarize({"p-0": 1.0, "p-1": 1.0}, {"p-0": 2.0})
    with pytest.raises(ValueError, match="p-9"):
        bc.summarize({"p-0": 1.0}, {"p-0": 2.0, "p-9": 2.0})
    with pytest.raises(ValueError, match="before its claim"):
        bc.summarize({"p-0": 5.0}, {"p-0": 2.0})
    with pytest.raises(ValueError, match="without both"):
        bc.summarize({}, {})


def test_pod_phases(bc: ModuleType) -> None:
    assert bc.pod_running({"status": {"phase": "Running"}})
    assert not bc.pod_running({"status": {"phase": "Pending"}})
    assert not bc.pod_running({"metadata": {"name": "no status yet"}})
    assert bc.pod_failed({"status": {"phase": "Failed"}})
    assert bc.pod_failed({"status": {"phase": "Succeeded"}})  # ended: it will never run
    assert not bc.pod_failed({"status": {"phase": "Running"}})


# ---- how many pods, and whether to run at all -----------------------------------------------


def test_the_attach_limit_caps_the_pods(bc: ModuleType) -> None:
    csinode = {
        "spec": {
            "drivers": [
                {"name": "other.csi.example", "allocatable": {"count": 99}},
                {"name": "csi.oxide.computer", "nodeID": "x", "allocatable": {"count": 12}},
            ]
        }
    }
    assert bc.allocatable_of(csinode) == 12
    assert bc.effective_pods(20, 12) == 12
    assert bc.effective_pods(5, 12) == 5
    assert bc.effective_pods(20, None) == 20
    assert bc.effective_pods(20, 0) == 1
    assert bc.allocatable_of({"spec": {"drivers": [{"name": "csi.oxide.computer"}]}}) is None
    assert bc.allocatable_of({"spec": {}}) is None
    assert bc.allocatable_of(None) is None


def test_skip_reason(bc: ModuleType) -> None:
    def every(name: str) -> str | None:
        return f"/usr/bin/{name}"

    def yes(path: Path) -> bool:
        return True

    def no(path: Path) -> bool:
        return False

    assert bc.skip_reason(0, True, every, yes) is None
    assert "root" in bc.skip_reason(1000, True, every, yes)
    assert "loop-control" in bc.skip_reason(0, False, every, yes)
    no_podman = bc.skip_reason(0, True, lambda n: None if n == "podman" else every(n), yes)
    assert no_podman.startswith("missing podman")
    assert "make cluster-deps" in no_podman
    assert "cni-loopback" in bc.skip_reason(0, True, every, no)


def test_the_objects_validate_against_the_kubernetes_schema(bc: ModuleType) -> None:
    pvc = bc.pvc_object("p-0")
    pod = bc.pod_object("p-0", "p-0")
    for doc in (pvc, pod):
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
    assert pvc["spec"]["storageClassName"] == "oxide-disk"  # the shipped class
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "p-0"
    assert pod["metadata"]["labels"] == pvc["metadata"]["labels"] == {bc.LABEL: "1"}


def test_num(bc: ModuleType) -> None:
    assert [bc.num(x) for x in (4.3333, 1.0, 1.25, 0.0)] == ["4.33", "1", "1.25", "0"]
