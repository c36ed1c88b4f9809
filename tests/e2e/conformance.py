"""Kubernetes' own external-storage e2e suite against csi-oxide, on the two-node cluster.

`make conformance` (root) runs ``python -m tests.e2e.conformance``: it builds (or finds cached) the
cluster's binaries plus the suite (``e2e.test``, a ``go test -c`` of k8s.io/kubernetes/test/e2e at
the cluster's version), agnhost and the ginkgo runner (scripts/cluster/build_tools.py --suite),
makes the images (images.py) and imports them into both nodes, brings the two-node cluster up
(cluster.py) with the simulated rack in hot-plug mode and one local instance per node (``csi-oxide
sim --hotplug --backing loop --local-instances 2``, so attach and detach work and a volume can
move between instances), installs the driver with the Helm chart (helm.py, the second node's
plugin as an additional DaemonSet; the cluster test installs the kustomize base), runs the suite
with ginkgo in parallel processes (then the [Serial] specs alone) on the patterns
tests/e2e/testdriver.yaml claims, prints the suite's own passed / failed / skipped counts from its
JUnit report and the time, and tears everything down. The suite's log and JUnit report stay in
.tools/conformance/last. A watch on ``ss -tnp`` checks that none of the run's processes connects
to anything outside 127.0.0.0/8 (the API server reaches the kubelets for exec and logs on their
Hostname addresses, ``localhost`` and ``127.0.0.2``; see cluster.py).

It exits non-zero on any failure of a claimed pattern (or of the suite's set-up), or if nothing
passed. ``--print-skip`` prints the skip expression for use against another cluster; ``--procs``
sets ginkgo's process count.

Every skip below carries its reason, and only what this cluster cannot run is skipped. The suite
skips more by itself, reading the test driver's capabilities (online expansion, ROX/RWX, NTFS,
...); those count as "skipped by the suite".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTDRIVER = ROOT / "tests" / "e2e" / "testdriver.yaml"
BUILD_TOOLS = ROOT / "scripts" / "cluster" / "build_tools.py"
# What is kept of the last run (the suite's log and JUnit report).
RESULTS_DIR = ROOT / ".tools" / "conformance" / "last"
# The driver's tests among the suite's thousands.
FOCUS = r"External.Storage.*csi\.oxide\.computer"
# What build_tools.py builds for the run, beside the cluster's own binaries.
SUITE_TOOLS = ("e2e.test", "agnhost", "ginkgo")
# The driver is installed with the Helm chart (deploy/helm/csi-oxide, tests/e2e/helm.py); the
# cluster test (test_cluster.py) installs the kustomize base, so both install paths run for real.
INSTALL = "helm"
# The whole run must end well inside CI's budget; ginkgo stops the suite at this point.
SUITE_TIMEOUT = "50m"
# ginkgo's parallel processes: each runs one spec at a time, with its pods on either node. Measured
# on the 2-core machine, warm: 2 processes 24.9 min for the suite (101 passed), 3 processes 17.3
# min (92 passed, before ext3 and singleNodeVolume: false; the machine also busy with other tests),
# 4 processes 14.6 min (101 passed). The specs wait on the cluster
# far more than they compute; 12 disk slots per node bound how many volumes can be attached.
PROCS = 4
# Two nodes, so that volumes move between instances ("on different node" specs).
NODES = 2


@dataclass(frozen=True)
class Skip:
    pattern: str  # a regular expression on the spec's full text
    reason: str


# Only specs this cluster cannot run. What the driver does not claim (NTFS, inline and
# pre-provisioned patterns, ephemeral volumes, topology, capacity, online expansion, group
# snapshots, VolumeAttributesClass, performance options) is skipped by the suite itself from
# tests/e2e/testdriver.yaml and counted as such.
SKIPS: tuple[Skip, ...] = (
    Skip(
        r"\[Disruptive\]",
        "stops/restarts the kubelet over SSH: this cluster's kubelet is a local process, no SSH",
    ),
    Skip(
        r"should not mount / map unused volumes in a pod",
        "reads a hard-coded /var/lib/kubelet; this kubelet has its own --root-dir (vacuous pass)",
    ),
    Skip(
        r"any volume data source \[Serial\]",
        "volume populators: the Go module proxy refuses hello-populator and the validator here",
    ),
)


def skip_expression(skips: Iterable[Skip] = SKIPS) -> str:
    """The ``-ginkgo.skip`` regular expression: any of the skips."""
    patterns = [s.pattern for s in skips]
    for p in patterns:
        re.compile(p)
    return "|".join(f"(?:{p})" for p in patterns)


def skip_reason(name: str, skips: Iterable[Skip] = SKIPS) -> str | None:
    """Why our list skips the spec ``name`` (None when it does not)."""
    return next((s.reason for s in skips if re.search(s.pattern, name)), None)


# ---- the suite's JUnit report -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    status: str  # passed, failed, skipped (ginkgo also writes pending, interrupted, ...)
    message: str = ""
    seconds: float = 0.0


@dataclass
class Counts:
    passed: list[Case] = field(default_factory=list)
    failed: list[Case] = field(default_factory=list)
    skipped_by_us: list[Case] = field(default_factory=list)
    skipped_by_suite: list[Case] = field(default_factory=list)
    suite_failures: list[Case] = field(default_factory=list)  # set-up/tear-down nodes

    @property
    def skipped(self) -> int:
        return len(self.skipped_by_us) + len(self.skipped_by_suite)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.suite_failures and bool(self.passed)

    def summary(self) -> str:
        return (
            f"passed {len(self.passed)}, failed {len(self.failed)}, skipped {self.skipped} "
            f"({len(self.skipped_by_us)} by our skip list, {len(self.skipped_by_suite)} by the "
            f"suite itself from the driver's capabilities)"
        )


def read_junit(path: Path) -> list[Case]:
    """Every testcase of a ginkgo JUnit report."""
    root = ET.parse(path).getroot()  # noqa: S314 (the suite's own report, written by this run)
    cases = []
    for tc in root.iter("testcase"):
        status = tc.get("status", "")
        message = ""
        failure = tc.find("failure")
        error = tc.find("error")
        skipped = tc.find("skipped")
        if not status:
            status = (
                "failed"
                if failure is not None or error is not None
                else "skipped"
                if skipped is not None
                else "passed"
            )
        for node in (failure, error, skipped):
            if node is not None:
                message = (node.get("message") or "") + (node.text or "")
                break
        cases.append(Case(tc.get("name", ""), status, message.strip(), float(tc.get("time", 0))))
    return cases


def count(cases: Sequence[Case], focus: str = FOCUS, skips: Sequence[Skip] = SKIPS) -> Counts:
    """The suite's passed / failed / skipped specs among those the focus selects."""
    counts = Counts()
    for case in cases:
        if not re.search(focus, case.name):
            if case.status not in ("passed", "skipped"):
                # BeforeSuite/AfterSuite and report nodes: their failure fails the run.
                counts.suite_failures.append(case)
            continue
        if case.status == "passed":
            counts.passed.append(case)
        elif case.status == "skipped":
            if skip_reason(case.name, skips) is not None:
                counts.skipped_by_us.append(case)
            else:
                counts.skipped_by_suite.append(case)
        else:  # failed, panicked, interrupted, timedout, aborted: all failures
            counts.failed.append(case)
    return counts


# ---- the command line of the suite -----------------------------------------------------------


def suite_argv(
    ginkgo: Path,
    e2e_test: Path,
    *,
    procs: int = PROCS,
    kubeconfig: Path,
    kubectl: Path,
    report_dir: Path,
    kubelet_dir: Path,
    testdriver: Path = TESTDRIVER,
    focus: str = FOCUS,
    skip: str | None = None,
    timeout: str = SUITE_TIMEOUT,
) -> list[str]:
    """ginkgo running ``e2e_test`` in ``procs`` processes: the parallel specs first, then the
    [Serial] ones one at a time (the suite marks them with ginkgo's Serial decorator)."""
    return [
        str(ginkgo),
        f"--procs={procs}",
        f"--focus={focus}",
        f"--skip={skip_expression() if skip is None else skip}",
        f"--timeout={timeout}",
        "--no-color",
        "--silence-skips",
        str(e2e_test),
        "--",
        f"-kubeconfig={kubeconfig}",
        f"-kubectl-path={kubectl}",
        # No cloud: nothing provider-specific, no SSH to nodes.
        "-provider=skeleton",
        f"-report-dir={report_dir}",
        f"-storage.testdriver={testdriver}",
        f"-kubelet-root-dir={kubelet_dir}",
        "-allowed-not-ready-nodes=0",
        "-disable-log-dump",
        "-system-pods-startup-timeout=3m",
    ]


# ---- nothing leaves loopback ---------------------------------------------------------------------

_USERS = re.compile(r'\("([^"]*)",pid=(\d+)')


def outside_loopback(ss_output: str, pids: set[int]) -> list[str]:
    """Lines of ``ss -tnpH`` for ``pids`` whose peer is not a loopback address."""
    found = []
    for line in ss_output.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        peer = parts[4].rsplit(":", 1)[0].strip("[]")
        with contextlib.suppress(ValueError):
            address = ip_address(peer.split("%")[0])
            mapped = getattr(address, "ipv4_mapped", None)
            if (mapped or address).is_loopback:
                continue
        owners = {int(pid) for _, pid in _USERS.findall(line)}
        if owners & pids:
            found.append(line.strip())
    return found


def _descendants(root_pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in found and pid not in found:
                found.add(pid)
                changed = True
    return found


class LoopbackWatch:
    """Samples ``ss -tnp`` every second: any TCP connection of this run's processes (this process,
    its children, containerd's shims and the pods' processes) to a non-loopback peer is kept."""

    def __init__(self, extra_pids: Iterable[int] = ()) -> None:
        self.found: set[str] = set()
        self.samples = 0
        self._extra = set(extra_pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _ours(self) -> set[int]:
        pids = _descendants(os.getpid()) | self._extra
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if b"containerd-shim" in (entry / "cmdline").read_bytes()[:200]:
                        pids |= _descendants(int(entry.name))
        return pids

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            done = subprocess.run(
                ["ss", "-tnpH"], capture_output=True, text=True, check=False, timeout=30
            )
            self.found.update(outside_loopback(done.stdout, self._ours()))
            self.samples += 1

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join()
        return self.found


# ---- the run ------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[conformance] {msg}", flush=True)


def _suite_tools() -> dict[str, Path]:
    subprocess.run([sys.executable, BUILD_TOOLS, "--only", *SUITE_TOOLS, "--jobs", "2"], check=True)
    listed = subprocess.run(
        [sys.executable, BUILD_TOOLS, "--list", "--only", *SUITE_TOOLS],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {n: Path(p) for n, _, p in (line.partition("=") for line in listed.splitlines())}


def _run_suite(argv: list[str], log_path: Path) -> int:
    """The suite, its output in ``log_path`` and echoed on the terminal; its exit status.

    Interrupted (Ctrl-C, SIGTERM), the suite gets SIGINT and time to delete its namespaces."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    echo = threading.Event()
    tail = threading.Thread(target=_echo, args=(log_path, echo), daemon=True)
    tail.start()
    try:
        return proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        echo.set()
        tail.join(10)


def _echo(path: Path, stop: threading.Event) -> None:
    """Copy what the suite writes to ``path`` onto the terminal, until ``stop`` (then drain)."""
    with path.open("rb") as f:
        while True:
            stopping = stop.is_set()
            while chunk := f.read(65536):
                sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            if stopping:
                return
            stop.wait(0.5)


def run(
    keep_results: Path = RESULTS_DIR, *, procs: int = PROCS, install: str = INSTALL
) -> tuple[Counts | None, list[str]]:
    """Everything, from the builds to the teardown: the counts and what went wrong outside them."""
    # Imported here: the pure parts above must not need the cluster's modules.
    from tests.e2e import helm, images
    from tests.e2e.cluster import Cluster, Tools, free_port
    from tests.e2e.stack import (
        Sim,
        cluster_images,
        import_everywhere,
        install_driver,
        install_snapshot_support,
        loops_backed_by,
        track,
    )

    started = time.monotonic()
    problems: list[str] = []
    tools = Tools.build()
    suite = _suite_tools()
    log(f"binaries ready in {time.monotonic() - started:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="csi-oxide-conformance-"))
    cluster = Cluster(tools, NODES)
    sim: Sim | None = None
    watch: LoopbackWatch | None = None
    counts: Counts | None = None
    try:
        out = work / "images"
        out.mkdir()
        t = time.monotonic()
        built = cluster_images(tools, out)
        built += [
            images.busybox_image(out, (images.SUITE_BUSYBOX_IMAGE,)),
            images.agnhost_image(suite["agnhost"], out),
            images.nginx_image(ROOT / ".tools" / "images", out),
            images.dnsutils_image(ROOT / ".tools" / "images", out),
        ]
        log(f"images ready in {time.monotonic() - t:.0f} s: {', '.join(i.name for i in built)}")
        t = time.monotonic()
        watch = LoopbackWatch()
        cluster.start(import_everywhere(built))
        install_snapshot_support(cluster, tools)
        sim = Sim(work / "sim", hotplug=True, port=free_port(), local_instances=NODES)
        cluster.ledger.record_dir(work)
        sim.start()
        track(cluster, sim)
        install_driver(cluster, sim, (free_port(), free_port()), run="conformance", how=install)
        if install == "helm":  # the chart's own check, in the cluster: csi-oxide doctor pods
            t_test = time.monotonic()
            tested = helm.run_chart_tests(cluster.kubeconfig, cluster.state)
            log(f"helm test passed in {time.monotonic() - t_test:.0f} s:\n{tested[-3000:]}")
        log(
            f"{NODES} nodes up and driver installed ({install}) in {time.monotonic() - t:.0f} s; "
            "the rack is simulated with hot-plug on (today's racks refuse attaching a disk to a "
            "running instance: docs/todays-racks.md)"
        )
        report_dir = work / "report"
        report_dir.mkdir()
        # ginkgo takes a compiled suite only by a name ending in ".test".
        e2e_test = work / "e2e.test"
        e2e_test.symlink_to(suite["e2e.test"])
        argv = suite_argv(
            suite["ginkgo"],
            e2e_test,
            procs=procs,
            kubeconfig=cluster.kubeconfig,
            kubectl=tools["kubectl"],
            report_dir=report_dir,
            kubelet_dir=cluster.kubelet_dir,
        )
        log(f"focus: {FOCUS}")
        log(f"skip:  {skip_expression()}")
        for s in SKIPS:
            log(f"  skipped: {s.pattern}  -- {s.reason}")
        t = time.monotonic()
        keep_results.mkdir(parents=True, exist_ok=True)
        rc = _run_suite(argv, keep_results / "e2e.log")
        suite_seconds = time.monotonic() - t
        junit = report_dir / "junit_01.xml"
        if not junit.exists():
            problems.append(f"the suite wrote no JUnit report (exit status {rc})")
        else:
            shutil.copy2(junit, keep_results / "junit_01.xml")
            counts = count(read_junit(junit))
            if rc != 0 and counts.ok:
                problems.append(f"the suite exited {rc} with no failed spec")
        log(f"suite ran in {suite_seconds / 60:.1f} min with {procs} processes (exit status {rc})")
    finally:
        t = time.monotonic()
        if sim is not None:
            sim.stop()
        problems += cluster.stop()
        if sim is not None:
            problems += [
                f"loop device {d} still backed by {sim.state}" for d in loops_backed_by(sim.state)
            ]
        shutil.rmtree(work, ignore_errors=True)
        log(f"teardown in {time.monotonic() - t:.0f} s")
        if watch is not None:
            outside = watch.stop()
            log(f"connections outside 127.0.0.0/8: {len(outside)} ({watch.samples} samples of ss)")
            problems += [f"connection outside loopback: {line}" for line in sorted(outside)]
    if counts is not None:
        for case in counts.failed + counts.suite_failures:
            log(f"FAILED {case.name}\n{case.message[-3000:]}")
        log(counts.summary())
    log(f"total {(time.monotonic() - started) / 60:.1f} min; results in {keep_results}")
    return counts, problems


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-skip", action="store_true", help="print the skip expression")
    parser.add_argument("--list-skips", action="store_true", help="print each skip and its reason")
    parser.add_argument(
        "--procs", type=int, default=PROCS, help=f"ginkgo's parallel processes (default {PROCS})"
    )
    parser.add_argument(
        "--install", choices=("helm", "kustomize"), default=INSTALL, help="the install path"
    )
    args = parser.parse_args(argv)
    if args.print_skip:
        print(skip_expression())
        return 0
    if args.list_skips:
        for s in SKIPS:
            print(f"{s.pattern}\n    {s.reason}")
        return 0
    if os.geteuid() != 0:
        print("make conformance needs root (containerd, kubelet, loop devices)", file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM (a CI timeout) end the run through its teardown; started in the
    # background by a shell, SIGINT may arrive ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    counts, problems = run(procs=args.procs, install=args.install)
    for p in problems:
        log(f"PROBLEM {p}")
    return 0 if counts is not None and counts.ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
