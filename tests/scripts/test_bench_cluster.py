"""The pure parts of scripts/bench_cluster.py (``make bench``, step "pods and move on the
cluster"): the metrics parsing, the per-volume chain of Oxide requests, the reference arithmetic
and the goal, the pairing of watch timestamps, the attach-limit cap and the skip rule; and for the
move round, the detach and attach means between two scrapes, the move figure and its verdict, the
pods (objects and their program) and the metrics ports read back from the installed objects. The
cluster run itself is the benchmark (root, minutes), not a test."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest
import yaml

from csi_oxide.daemon.metrics import Metrics
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
    return metrics.registry.exposition().decode()


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


# ---- two nodes: the move round ----------------------------------------------------------------


def test_the_rounds_a_word_asks_for(bc: ModuleType) -> None:
    everything = {"pods", "move"}
    assert bc.cluster_rounds([]) == everything  # make bench: every step, every round
    assert bc.cluster_rounds(["pods"]) == everything
    assert bc.cluster_rounds(["cluster"]) == everything
    assert bc.cluster_rounds(["move"]) == {"move"}
    assert bc.cluster_rounds(["burst", "move"]) == {"move"}
    assert bc.cluster_rounds(["move", "pods"]) == everything


def test_the_moves_go_back_and_forth(bc: ModuleType) -> None:
    assert bc.move_plan(["a", "b"]) == [("a", "b"), ("b", "a"), ("a", "b")]
    assert bc.move_plan(["a", "b"], 2) == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError, match="two nodes"):
        bc.move_plan(["a"])


def test_op_time_is_the_mean_duration_between_two_scrapes(bc: ModuleType) -> None:
    before = bc.Requests(
        {"instance_disk_detach": 3.0, "instance_disk_attach": 4.0, "disk_view": 1.0},
        {"instance_disk_detach": 1.5, "instance_disk_attach": 2.0, "disk_view": 0.1},
    )
    after = bc.Requests(
        {"instance_disk_detach": 4.0, "instance_disk_attach": 6.0, "disk_view": 1.0},
        {"instance_disk_detach": 2.0, "instance_disk_attach": 3.5, "disk_view": 0.1},
    )
    detach = bc.op_time(before, after, bc.DETACH)
    assert (detach.count, detach.seconds, detach.mean) == (1.0, 0.5, 0.5)
    attach = bc.op_time(before, after, bc.ATTACH)  # one retried: 2 attempts, 1.5 s in all
    assert (attach.count, attach.mean) == (2.0, pytest.approx(0.75))
    with pytest.raises(ValueError, match="no disk_view request"):
        bc.op_time(before, after, "disk_view")
    with pytest.raises(ValueError, match="no instance_disk_detach request"):
        bc.op_time(bc.Requests({}, {}), bc.Requests({}, {}), bc.DETACH)


def _run(bc: ModuleType, reference: float, move: float, detach: float, attach: float) -> object:
    return bc.MoveRun(
        "a",
        "b",
        reference,
        move,
        bc.OpTime(1.0, detach),
        bc.OpTime(1.0, attach),
        {"ControllerUnpublishVolume": detach + 0.01, "ControllerPublishVolume": attach + 0.02},
    )


def test_the_move_figure_is_the_median_move_over_kubernetes_own_plus_detach_and_attach(
    bc: ModuleType,
) -> None:
    moves = bc.Moves(
        (
            _run(bc, 2.0, 4.0, 0.5, 0.6),
            _run(bc, 2.2, 3.6, 0.4, 0.7),
            _run(bc, 1.8, 3.8, 0.6, 0.5),
        )
    )
    # Medians: moves 3.8 s; without a volume 2.0 s; detach 0.5 s; attach 0.6 s.
    assert moves.limit == pytest.approx(3.1)
    assert moves.ratio == pytest.approx(3.8 / 3.1)
    assert moves.verdict().text == "NOT met"  # 1.23 > 1.2
    text = moves.describe()
    assert "3 moves (a -> b, a -> b, a -> b)" in text
    assert "with its volume median 3800 ms of 3 (min 3600 ms, max 4000 ms, spread 11%)" in text
    assert "a pod without a volume moved the same way median 2000 ms of 3" in text
    assert "Oxide detach median 500 ms of 3" in text
    assert "(3 requests), attach median 600 ms of 3" in text
    assert "1.2 x (2.00 + 0.50 + 0.60 s) = 3.72 s" in text
    assert "ControllerUnpublishVolume 0.51" in text
    assert "NodeStageVolume 0.00" in text  # every RPC of a move named, 0 when not seen
    met = bc.Moves(tuple(_run(bc, 2.0, 3.5, 0.5, 0.6) for _ in range(3)))
    assert met.verdict().text == "met"  # 3.5 / 3.1 = 1.13


def test_a_move_figure_refuses_an_outlier_and_an_impossible_ratio(bc: ModuleType) -> None:
    stalled = bc.Moves(
        (
            _run(bc, 2.0, 4.0, 0.5, 0.6),
            _run(bc, 2.0, 16.0, 0.5, 0.6),  # 4x the median move
            _run(bc, 2.0, 3.9, 0.5, 0.6),
        )
    )
    verdict = stalled.verdict()
    assert verdict.met is None
    assert verdict.invalid is not None and "run 2 of 3 took 16.0 s" in verdict.invalid
    # A move cannot beat Kubernetes' own time plus the detach and the attach by half.
    impossible = bc.Moves(tuple(_run(bc, 2.0, 1.0, 0.5, 0.6) for _ in range(3)))
    assert impossible.verdict().text.startswith("INVALID: 0.32 is below 0.5")
    slow_attach = bc.Moves(
        (
            _run(bc, 2.0, 4.0, 0.5, 0.6),
            _run(bc, 2.0, 4.0, 0.5, 3.0),  # an attach 5x the others
            _run(bc, 2.0, 4.0, 0.5, 0.6),
        )
    )
    invalid = slow_attach.verdict().invalid
    assert invalid is not None and invalid.startswith("Oxide attach: run 2 of 3")
    with pytest.raises(ValueError, match="no runs"):
        bc.Moves(())


def test_the_zero_latency_move_is_context_but_still_judged_valid_or_not(bc: ModuleType) -> None:
    # Milliseconds of Oxide jitter at zero latency are no outlier (OXIDE_RESOLUTION).
    fine = bc.Moves(
        (
            _run(bc, 2.0, 9.0, 0.002, 0.003),
            _run(bc, 2.0, 9.5, 0.010, 0.012),
            _run(bc, 2.0, 8.5, 0.003, 0.002),
        )
    )
    assert fine.verdict(goal=True).text == "NOT met"
    assert fine.verdict(goal=False).text == "n/a"
    name, figure, goal, verdict = bc.move_row(fine, goal=False)
    assert name == f"{bc.MOVE_ROW} (zero latency, for context)"
    assert figure.startswith(f"{9.0 / fine.limit:.2f} x (Kubernetes' own + Oxide detach")
    assert goal.startswith("none")
    assert verdict.text == "n/a"
    name, figure, goal, verdict = bc.move_row(fine, goal=True)
    assert "at zero latency" not in figure
    assert name == f"{bc.MOVE_ROW} ({bc.latency_label()})"
    assert goal == bc.MOVE_GOAL
    assert verdict.text == "NOT met"
    at_latency = bc.Moves(tuple(_run(bc, 2.0, 10.0, 0.5, 0.6) for _ in range(3)))
    figure = bc.move_row(at_latency, goal=True, zero=fine)[1]
    assert figure.endswith("; at zero latency the same moves take 9000 ms)")
    stalled = bc.Moves((*fine.runs[:2], _run(bc, 2.0, 40.0, 0.003, 0.002)))
    assert bc.move_row(stalled, goal=False)[3].text.startswith("INVALID")


def test_the_rows_the_step_stands_for(bc: ModuleType) -> None:
    names = [name for name, _ in bc.row_names(bc.ROUNDS)]
    assert names == ["pods: PVC -> Running on the cluster", f"{bc.MOVE_ROW} ({bc.latency_label()})"]
    assert bc.row_names(["move"]) == [(f"{bc.MOVE_ROW} ({bc.latency_label()})", bc.MOVE_GOAL)]
    assert bc.row_names(["pods"]) == [("pods: PVC -> Running on the cluster", bc.GOAL)]


# ---- the pods of the move round -------------------------------------------------------------


def test_the_move_pods_validate_and_differ_only_by_the_volume(bc: ModuleType) -> None:
    plain = bc.pod_object("r-1", None, node="127.0.0.2", work="true")
    moved = bc.pod_object("v-1", "data", node="127.0.0.2", work=bc.find_token("abc"))
    for doc in (plain, moved):
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
        assert doc["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "127.0.0.2"}
        probe = doc["spec"]["containers"][0]["readinessProbe"]
        assert probe["exec"]["command"] == ["test", "-f", bc.READY_FILE]
    assert "volumes" not in plain["spec"]
    assert "volumeMounts" not in plain["spec"]["containers"][0]
    assert moved["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "data"
    # The same pod otherwise: grace, restart policy, image, the way it stops.
    for doc in (plain, moved):
        doc["spec"].pop("volumes", None)
        doc["spec"]["containers"][0].pop("volumeMounts", None)
        doc["spec"]["containers"][0].pop("command")
        doc["metadata"].pop("name")
    assert plain == moved
    # The pods rounds' pods: no probe, and a node when pinned.
    rounds = bc.pod_object("p-0", "p-0", node="localhost")
    assert "readinessProbe" not in rounds["spec"]["containers"][0]
    assert rounds["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "localhost"}
    assert "nodeSelector" not in bc.pod_object("p-0", "p-0")["spec"]


def test_the_token_is_written_then_looked_for(bc: ModuleType) -> None:
    assert bc.write_token("abc") == "echo abc > /data/token && sync"
    assert bc.find_token("abc") == "grep -qx abc /data/token"
    script = bc.pod_script(bc.find_token("abc"))
    assert script.startswith("trap 'exit 0' TERM INT; if { grep -qx abc /data/token ; }; then ")
    assert f"touch {bc.READY_FILE}; else echo WORK FAILED; exit 1; fi; " in script
    assert bc.pod_script() == "trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done"


def _sh(script: str, *, output: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sh", "-c", script],
        stdout=subprocess.PIPE if output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its sleep too is in its own group, killed at the end
    )


def test_a_pod_whose_work_fails_exits_1(bc: ModuleType) -> None:
    proc = _sh(bc.pod_script("false"), output=True)
    try:
        out, _ = proc.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1
    assert out.strip() == b"WORK FAILED"


def test_a_pod_stops_at_once_on_sigterm(bc: ModuleType) -> None:
    proc = _sh(bc.pod_script())
    try:
        time.sleep(0.3)  # into its wait
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - asked
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert took < 0.5  # not held until its one-second sleep ends


def test_pod_readiness_node_and_status(bc: ModuleType) -> None:
    ready = {
        "spec": {"nodeName": "127.0.0.2"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert bc.pod_ready(ready)
    assert bc.pod_node(ready) == "127.0.0.2"
    assert bc.pod_node({"spec": {}}) is None
    waiting = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
        }
    }
    assert not bc.pod_ready(waiting)
    assert not bc.pod_ready({})
    assert bc.status_text(waiting) == (
        "phase Pending; Ready ContainersNotReady; container waiting ContainerCreating"
    )
    assert bc.status_text({}) == "phase None"


# ---- the metrics ports of the driver's processes ----------------------------------------------


def test_metrics_ports_are_read_back_from_the_installed_objects(
    bc: ModuleType, tmp_path: Path
) -> None:
    from tests.e2e import overlay

    base = [
        d
        for f in sorted(overlay.BASE.glob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
        if d
    ]
    env = {"OXIDE_HOST": "http://127.0.0.1:41000", "OXIDE_TOKEN": "t", "OXIDE_PROJECT": "p"}
    targets = [
        overlay.NodeTarget(name, tmp_path / f"kubelet{tag}", f"id{tag}", str(tmp_path), port, tag)
        for name, tag, port in (("localhost", "", 19091), ("127.0.0.2", "-b", 19092))
    ]
    docs = overlay.overlay(
        base,
        sim_env=env,
        api_port=6443,
        kubelet_dir=tmp_path / "kubelet",
        state_dir=tmp_path,
        ports=(19090, 19091),
        run="r1",
        nodes=targets,
    )
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    ports = {d["metadata"]["name"]: bc.metrics_port_of(d) for d in workloads}
    assert ports == {
        "csi-oxide-controller": 19090,
        "csi-oxide-node": 19091,
        "csi-oxide-node-b": 19092,
    }
    with pytest.raises(ValueError, match="no --metrics-address"):
        bc.metrics_port_of({"spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}})
    with pytest.raises(ValueError, match="no --metrics-address"):
        bc.metrics_port_of(None)


# ---- where a move's time went, from the driver's log ------------------------------------------


def _rpc_line(method: str, ended: str, ms: float) -> str:
    """A line of the driver's log as containerd stores it (time, stream, tag, the JSON line)."""
    body = (
        f'{{"code": "OK", "duration_ms": {ms}, "event": "rpc", "rpc": "{method}", '
        f'"level": "info", "timestamp": "2026-12-07T09:00:{ended}Z"}}'
    )
    return f"2026-12-07T09:00:{ended}123Z stderr F {body}"


def test_the_rpc_lines_are_read_from_the_stored_log(bc: ModuleType) -> None:
    lines = [
        _rpc_line("NodeUnstageVolume", "01.500000", 10.0),
        '2026-12-07T09:00:01.6Z stderr F {"event": "serving", "timestamp": "x"}',
        '2026-12-07T09:00:01.7Z stderr P {"event": "rpc", "rpc": "NodeSt',  # cut short
        "not a log line at all",
        _rpc_line("NodeStageVolume", "02.250000", 50.0),
    ]
    got = bc.parse_rpc_log(lines)
    assert [r.method for r in got] == ["NodeUnstageVolume", "NodeStageVolume"]
    assert got[1].end - got[0].end == pytest.approx(0.75)
    assert got[1].seconds == pytest.approx(0.05)
    assert got[1].start == pytest.approx(got[1].end - 0.05)


def test_the_driver_rpcs_come_from_every_nodes_driver_container(
    bc: ModuleType, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, line in (
        (a / "kube-system_csi-oxide-node-x_1/csi-oxide", _rpc_line("NodeUnstageVolume", "03", 1)),
        (b / "kube-system_csi-oxide-node-y_2/csi-oxide", _rpc_line("NodeStageVolume", "05", 1)),
        (a / "kube-system_csi-oxide-controller-z_3/csi-oxide", _rpc_line("CreateVolume", "01", 1)),
        (a / "kube-system_csi-oxide-node-x_1/node-driver-registrar", _rpc_line("Probe", "02", 1)),
    ):
        folder.mkdir(parents=True)
        (folder / "0.log").write_text(line + "\n")
    got = bc.driver_rpcs([a, b])
    assert [r.method for r in got] == ["CreateVolume", "NodeUnstageVolume", "NodeStageVolume"]


def test_a_moves_phases_are_cut_at_the_drivers_rpcs(bc: ModuleType) -> None:
    def rpc(method: str, start: float, seconds: float) -> object:
        return bc.RpcEnd(method, start + seconds, seconds)

    rpcs = [
        rpc("ControllerPublishVolume", 5.0, 0.5),  # before the move: not part of it
        rpc("NodeUnpublishVolume", 100.2, 0.01),
        rpc("NodeUnstageVolume", 100.3, 0.02),
        rpc("ListVolumes", 101.0, 0.1),  # not a move's RPC
        rpc("ControllerUnpublishVolume", 104.0, 0.6),
        rpc("ControllerPublishVolume", 105.0, 0.5),
        rpc("ControllerPublishVolume", 105.6, 0.05),  # the attacher's repeat
        rpc("NodeStageVolume", 108.0, 0.1),
        rpc("NodePublishVolume", 108.2, 0.02),
    ]
    got = bc.move_phases(rpcs, 100.0, 109.0)
    assert got.unmount == pytest.approx(0.32)
    assert got.to_detach == pytest.approx(104.0 - 100.32)
    assert got.oxide == pytest.approx(105.65 - 104.0)
    assert got.to_stage == pytest.approx(108.0 - 105.65)
    assert got.to_running == pytest.approx(1.0)
    assert got.driver == pytest.approx(0.01 + 0.02 + 0.6 + 0.5 + 0.05 + 0.1 + 0.02)
    total = got.unmount + got.to_detach + got.oxide + got.to_stage + got.to_running
    assert total == pytest.approx(9.0)  # the phases cover the move, end to end
    assert bc.move_phases(rpcs, 100.0, 107.0) is None  # no stage yet: no phases
    assert bc.move_phases(rpcs[:3], 100.0, 109.0) is None


def test_the_move_round_names_where_the_time_went(bc: ModuleType) -> None:
    phases = bc.MovePhases(0.3, 4.0, 1.2, 2.5, 1.0, 1.3)
    runs = tuple(
        bc.MoveRun("a", "b", 1.0, 9.0, bc.OpTime(1.0, 0.6), bc.OpTime(1.0, 0.6), {}, p)
        for p in (phases, phases, None)
    )
    text = bc.Moves(runs).describe()
    assert "where the time went, median s of 2: A stops the pod, unmounts 0.30" in text
    assert "A reports it unmounted, detach starts 4.00" in text
    assert "B sees it attached, stage starts 2.50" in text
    assert "(in the driver's RPCs: 1.30)" in text
    without = bc.Moves(runs[2:]).describe()
    assert "where the time went" not in without
