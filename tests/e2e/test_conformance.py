"""The conformance run (conformance.py): its pure parts without a cluster, and, opt-in, the run.

The pure parts: the skip list against real spec names of the suite, the JUnit counting, the
loopback watch's parsing of ``ss``, the suite's command line, the test driver definition against
the driver's own capabilities and manifests, the suite's images and the build entries.

The run itself: root and CSI_OXIDE_CONFORMANCE=1 (`make conformance` runs the module directly).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.contract.mount_options import mount_flags
from csi_oxide.contract.oxide_rules import MAX_DISKS_PER_INSTANCE
from csi_oxide.daemon.health import Health
from csi_oxide.server import controller, identity, node
from tests import skips
from tests.e2e import conformance, images
from tests.e2e.conformance import FOCUS, Case, count, skip_reason
from tests.e2e.test_overlay_and_tools import _build_tools

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
PREFIX = "External Storage [Driver: csi.oxide.computer] "

# Spec texts of e2e.test v1.34.4 run with tests/e2e/testdriver.yaml (from its -list-tests).
SKIPPED_BY_US = {
    "[Testpattern: Dynamic PV (block volmode)] disruptive [Disruptive] [LinuxOnly] Should test "
    "that pv written before kubelet restart is readable after restart.": "SSH",
    "[Testpattern: Dynamic PV (default fs)] provisioning should provision storage with any "
    "volume data source [Serial]": "populators",
    "[Testpattern: Dynamic PV (default fs)] volumeMode should not mount / map unused volumes in "
    "a pod [LinuxOnly]": "kubelet dir",
}
# What the suite skips by itself from the test driver's capabilities: not on our list.
SKIPPED_BY_THE_SUITE = [
    "[Testpattern: Dynamic PV (ntfs)] [Feature:Windows] volumes should store data",
    "[Testpattern: CSI Ephemeral-volume (default fs)] ephemeral should create read/write inline "
    "ephemeral volume",
    "[Testpattern: Pre-provisioned PV (default fs)] subPath should support existing directory",
    "[Testpattern: Inline-volume (default fs)] volumes should store data",
    "[Testpattern: Dynamic PV (default fs)] volume-modify [FeatureGate:VolumeAttributesClass] "
    "[Feature:VolumeAttributesClass] should modify volume with no VAC",
    "[Testpattern: Dynamic PV (immediate binding)] topology should provision a volume and "
    "schedule a pod with AllowedTopologies",
    "[Testpattern: Dynamic PV (default fs)] capacity provides storage capacity information",
    "[Testpattern: Dynamic PV (default fs)(allowExpansion)] volume-expand should resize volume "
    "when PVC is edited while pod is using it",
    "[Testpattern: Dynamic PV (filesystem volmode)] volume-lifecycle-performance should "
    "provision volumes at scale within performance constraints [Slow] [Serial]",
]
CLAIMED = [
    # Once skipped to save time, or for want of a second node: the suite runs them now.
    "[Testpattern: Dynamic PV (default fs)] subPath should support restarting containers using "
    "directory as subpath [Slow]",
    "[Testpattern: Dynamic PV (ext4)] multiVolume [Slow] should concurrently access the single "
    "volume from pods on the same node",
    "[Testpattern: Dynamic PV (filesystem volmode)] multiVolume [Slow] should access to two "
    "volumes with the same volume mode and retain data across pod recreation on different node",
    "[Testpattern: Dynamic PV (default fs)] provisioning should provision storage with mount "
    "options",
    "[Testpattern: Dynamic PV (default fs)] volumes should store data",
    "[Testpattern: Dynamic PV (xfs)] [Slow] volumes should allow exec of files on the volume",
    # ext3, claimed in SupportedFsType: made by mkfs.ext3, mounted -t ext3.
    "[Testpattern: Dynamic PV (ext3)] volumes should store data",
    "[Testpattern: Dynamic PV (ext3)] volumes should allow exec of files on the volume",
    "[Testpattern: Dynamic PV (block volmode)] volumes should store data",
    "[Testpattern: Dynamic PV (default fs)(allowExpansion)] volume-expand Verify if offline PVC "
    "expansion works",
    "[Testpattern: Dynamic PV (block volmode)(allowExpansion)] volume-expand should resize volume "
    "when PVC is edited and the pod is re-created on the same node after controller resize is "
    "finished",
    "[Testpattern: Dynamic Snapshot (delete policy)] snapshottable "
    "[Feature:VolumeSnapshotDataSource] volume snapshot controller  should check snapshot fields, "
    "check restore correctly works, check deletion (ephemeral)",
    "[Testpattern: Dynamic PV (default fs)] provisioning should provision storage with pvc data "
    "source",
    "[Testpattern: Dynamic PV (xfs)] [Slow] multiVolume [Slow] should concurrently access the "
    "volume and its clone from pods on the same node [LinuxOnly] [Feature:VolumeSourceXFS]",
    "[Testpattern: Dynamic PV (filesystem volmode)] multiVolume [Slow] should concurrently access "
    "the single volume from pods on the same node",
    "[Testpattern: Dynamic PV (default fs)] read-write-once-pod [MinimumKubeletVersion:1.27] "
    "should block a second pod from using an in-use ReadWriteOncePod volume on the same node",
    "[Testpattern: Dynamic PV (filesystem volmode)] volumeLimits should support volume limits "
    "[Serial]",
    "[Testpattern: Dynamic PV (default fs)] fsgroupchangepolicy (Always)[LinuxOnly], pod created "
    "with an initial fsgroup, new pod fsgroup applied to volume contents",
    "[Testpattern: Dynamic PV (default fs)] subPath should support file as subpath [LinuxOnly]",
    "[Testpattern: Generic Ephemeral-volume (default fs) (late-binding)] ephemeral should create "
    "read/write inline ephemeral volume",
]


# ---- the skip list ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SKIPPED_BY_US))
def test_each_skip_class_is_skipped_for_its_reason(name: str) -> None:
    reason = skip_reason(PREFIX + name)
    assert reason is not None, name
    assert re.search(conformance.skip_expression(), PREFIX + name)


@pytest.mark.parametrize("name", SKIPPED_BY_THE_SUITE)
def test_what_the_suite_skips_by_itself_is_not_on_our_list(name: str) -> None:
    assert re.search(FOCUS, PREFIX + name)
    assert skip_reason(PREFIX + name) is None


@pytest.mark.parametrize("name", CLAIMED)
def test_what_the_driver_claims_is_not_skipped(name: str) -> None:
    assert re.search(FOCUS, PREFIX + name)
    assert skip_reason(PREFIX + name) is None
    assert re.search(conformance.skip_expression(), PREFIX + name) is None


def test_every_skip_has_a_one_line_reason_and_a_valid_pattern() -> None:
    patterns = set()
    for skip in conformance.SKIPS:
        assert skip.reason and "\n" not in skip.reason and len(skip.reason) <= 100, skip
        assert skip.pattern not in patterns
        patterns.add(skip.pattern)
    # Every skip is used by at least one spec name above: none is dead.
    for skip in conformance.SKIPS:
        assert any(skip_reason(PREFIX + n, [skip]) for n in SKIPPED_BY_US), skip


def test_the_skip_list_covers_the_real_suite_when_it_is_built() -> None:
    """Against the suite's own list: each skip matches a spec, and the claimed ones remain."""
    e2e_test = ROOT / ".tools" / "cluster" / "e2e.test-v1.34.4"
    if not e2e_test.exists():
        skips.skip("e2e.test not built (make conformance builds it)")
    listed = subprocess.run(
        [str(e2e_test), f"-storage.testdriver={conformance.TESTDRIVER}", "-list-tests"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [ln.split(": ", 1)[1] for ln in listed.splitlines() if "csi.oxide.computer" in ln]
    assert len(names) > 200
    for skip in conformance.SKIPS:
        assert any(re.search(skip.pattern, n) for n in names), skip
    kept = [n for n in names if skip_reason(n) is None]
    for claimed in CLAIMED + SKIPPED_BY_THE_SUITE:
        assert PREFIX + claimed in kept, claimed


# ---- counting the JUnit report ---------------------------------------------------------------


def _junit(tmp_path: Path, cases: list[tuple[str, str, str]]) -> Path:
    rows = []
    for name, status, inner in cases:
        rows.append(f'<testcase name="{name}" classname="Kubernetes e2e suite" status="{status}"')
        rows.append(f' time="1.5">{inner}</testcase>')
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<testsuites tests="9">'
        '<testsuite name="Kubernetes e2e suite">' + "".join(rows) + "</testsuite></testsuites>"
    )
    path = tmp_path / "junit_01.xml"
    path.write_text(xml)
    return path


def test_junit_counts_only_the_focused_specs_and_splits_the_skips(tmp_path: Path) -> None:
    ok = "[It] " + PREFIX + CLAIMED[0]
    bad = "[It] " + PREFIX + CLAIMED[1]
    ours = "[It] " + PREFIX + sorted(SKIPPED_BY_US)[0]
    theirs = "[It] " + PREFIX + SKIPPED_BY_THE_SUITE[0]
    path = _junit(
        tmp_path,
        [
            ("[SynchronizedBeforeSuite]", "passed", ""),
            (ok, "passed", ""),
            (bad, "failed", '<failure type="failed">boom: pod never ran</failure>'),
            (ours, "skipped", '<skipped message="skipped"></skipped>'),
            (theirs, "skipped", '<skipped message="skipped - ntfs not supported"></skipped>'),
            ("[It] [sig-node] Pods should be submitted", "skipped", "<skipped/>"),
        ],
    )
    counts = count(conformance.read_junit(path))
    assert [c.name for c in counts.passed] == [ok]
    assert [c.name for c in counts.failed] == [bad]
    assert "pod never ran" in counts.failed[0].message
    assert [c.name for c in counts.skipped_by_us] == [ours]
    assert [c.name for c in counts.skipped_by_suite] == [theirs]
    assert counts.skipped == 2
    assert not counts.ok
    assert counts.summary().startswith("passed 1, failed 1, skipped 2")


def test_a_failed_suite_node_fails_the_run_and_nothing_passed_is_not_ok(tmp_path: Path) -> None:
    path = _junit(
        tmp_path,
        [
            ("[SynchronizedBeforeSuite]", "failed", "<failure>nodes not ready</failure>"),
            ("[It] " + PREFIX + CLAIMED[0], "skipped", "<skipped/>"),
        ],
    )
    counts = count(conformance.read_junit(path))
    assert [c.name for c in counts.suite_failures] == ["[SynchronizedBeforeSuite]"]
    assert not counts.ok
    assert not count([]).ok  # nothing ran: not a pass
    assert count([Case("[It] " + PREFIX + CLAIMED[0], "passed")]).ok


def test_an_interrupted_or_timed_out_spec_is_a_failure() -> None:
    cases = [Case("[It] " + PREFIX + CLAIMED[0], s) for s in ("interrupted", "timedout")]
    assert len(count(cases).failed) == 2


# ---- nothing leaves loopback -------------------------------------------------------------------


SS = """\
ESTAB 0 0 127.0.0.1:6443 127.0.0.1:51234 users:(("kube-apiserver",pid=100,fd=7))
ESTAB 0 0 [::ffff:127.0.0.1]:6443 [::ffff:127.0.0.1]:40000 users:(("kubelet",pid=101,fd=9))
ESTAB 0 0 [::1]:2379 [::1]:40010 users:(("etcd",pid=102,fd=9))
SYN-SENT 0 1 192.0.2.2:41000 192.0.2.2:10250 users:(("kube-apiserver",pid=100,fd=12))
ESTAB 0 0 10.0.0.5:40022 151.101.0.223:443 users:(("pip",pid=999,fd=3))
"""


def test_the_loopback_watch_keeps_only_our_non_loopback_connections() -> None:
    found = conformance.outside_loopback(SS, {100, 101, 102})
    assert found == [SS.splitlines()[3]]
    # Someone else's connection (another process on the machine) is not ours.
    assert conformance.outside_loopback(SS, {999}) == [SS.splitlines()[4]]


# ---- the suite's command line ------------------------------------------------------------------


def test_the_suite_command_line(tmp_path: Path) -> None:
    argv = conformance.suite_argv(
        tmp_path / "ginkgo",
        tmp_path / "e2e.test",
        procs=3,
        kubeconfig=tmp_path / "admin.kubeconfig",
        kubectl=tmp_path / "kubectl",
        report_dir=tmp_path / "report",
        kubelet_dir=tmp_path / "kubelet",
    )
    # ginkgo's own flags, then the suite binary, then the suite's flags after "--".
    split = argv.index("--")
    assert argv[0] == str(tmp_path / "ginkgo") and argv[split - 1] == str(tmp_path / "e2e.test")
    runner = dict(a.split("=", 1) for a in argv[1 : split - 1] if "=" in a)
    assert runner["--procs"] == "3"
    assert runner["--focus"] == FOCUS
    assert runner["--skip"] == conformance.skip_expression()
    assert "--timeout" in runner
    flags = dict(a.split("=", 1) for a in argv[split + 1 :] if "=" in a)
    assert flags["-provider"] == "skeleton"
    assert flags["-storage.testdriver"] == str(conformance.TESTDRIVER)
    assert flags["-kubelet-root-dir"] == str(tmp_path / "kubelet")
    assert flags["-report-dir"] == str(tmp_path / "report")
    assert not any(a.startswith("-ginkgo.") for a in argv)


def test_print_skip_prints_the_expression(capsys: pytest.CaptureFixture[str]) -> None:
    assert conformance.main(["--print-skip"]) == 0
    assert capsys.readouterr().out.strip() == conformance.skip_expression()


# ---- tests/e2e/testdriver.yaml is what the driver does -------------------------------------


def _driver() -> dict[str, object]:
    doc = yaml.safe_load(conformance.TESTDRIVER.read_text())
    assert isinstance(doc, dict)
    return doc


def _base(kind: str, name: str | None = None) -> dict[str, object]:
    for f in sorted(BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["kind"] == kind and name in (None, doc["metadata"]["name"]):
                return dict(doc)
    raise AssertionError(f"no {kind} {name} in the base")


def test_the_test_driver_names_the_base_classes_and_sizes() -> None:
    doc = _driver()
    info = doc["DriverInfo"]
    assert isinstance(info, dict)
    assert info["Name"] == _base("CSIDriver")["metadata"]["name"]  # type: ignore[index]
    sc = _base("StorageClass", doc["StorageClass"]["FromExistingClassName"])  # type: ignore[index]
    assert sc["provisioner"] == info["Name"]
    assert sc["allowVolumeExpansion"] is True
    vsc = _base(
        "VolumeSnapshotClass",
        doc["SnapshotClass"]["FromExistingClassName"],  # type: ignore[index]
    )
    assert vsc["driver"] == info["Name"]
    assert info["SupportedSizeRange"] == {"Min": "1Gi", "Max": "1023Gi"}
    assert set(info["SupportedFsType"]) == {"", "ext3", "ext4", "xfs"}


def test_the_capabilities_are_the_drivers() -> None:
    caps = _driver()["DriverInfo"]["Capabilities"]  # type: ignore[index]
    ctrl = set(controller.CAPABILITIES)
    nodes = set(node.CAPABILITIES)
    rpc = csi.ControllerServiceCapability.RPC
    nrpc = csi.NodeServiceCapability.RPC
    answer = asyncio.run(
        identity.IdentityService(Health()).GetPluginCapabilities(
            csi.GetPluginCapabilitiesRequest(),
            None,  # type: ignore[arg-type]
        )
    )
    plugin = [
        c.volume_expansion.type for c in answer.capabilities if c.HasField("volume_expansion")
    ]
    expected = {
        "persistence": True,
        "block": True,
        "fsGroup": _base("CSIDriver")["spec"]["fsGroupPolicy"] == "File",  # type: ignore[index]
        "exec": True,
        "snapshotDataSource": rpc.CREATE_DELETE_SNAPSHOT in ctrl,
        "pvcDataSource": rpc.CLONE_VOLUME in ctrl,
        "multipods": rpc.SINGLE_NODE_MULTI_WRITER in ctrl
        and nrpc.SINGLE_NODE_MULTI_WRITER in nodes,
        "readWriteOncePod": nrpc.SINGLE_NODE_MULTI_WRITER in nodes,
        "RWX": False,
        "capReadOnlyMany": False,
        "controllerExpansion": rpc.EXPAND_VOLUME in ctrl,
        "nodeExpansion": nrpc.EXPAND_VOLUME in nodes,
        "offlineExpansion": plugin == [csi.PluginCapability.VolumeExpansion.OFFLINE],
        "onlineExpansion": csi.PluginCapability.VolumeExpansion.ONLINE in plugin,
        "volumeLimits": True,
        # "single node" in the suite's sense is a volume bound to one node, like hostpath; an
        # Oxide disk moves between instances (ControllerUnpublish, then Publish elsewhere).
        "singleNodeVolume": not ({rpc.PUBLISH_UNPUBLISH_VOLUME} <= ctrl),
        "topology": False,
        "volumeMountGroup": nrpc.VOLUME_MOUNT_GROUP in nodes,
        "groupSnapshot": False,
        # The kubelet names a staging path after the volume handle: two PVs with one handle
        # share one NodeStageVolume (idempotent), each pod its own publish.
        "multiplePVsSameID": True,
    }
    # Storage capacity is published only with the provisioner's --enable-capacity and the
    # CSIDriver's storageCapacity: true; GetCapacity alone is not enough.
    deployment = _base("Deployment")
    args = [
        a
        for c in deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
        for a in c.get("args", [])
    ]
    publishes = "--enable-capacity" in " ".join(args) and (
        _base("CSIDriver")["spec"].get("storageCapacity") is True  # type: ignore[attr-defined]
    )
    expected["capacity"] = publishes
    assert caps == expected


@pytest.mark.parametrize("fstype", ["ext4", "ext3", "xfs"])
def test_the_supported_mount_options_pass_the_drivers_allow_list(fstype: str) -> None:
    options = _driver()["DriverInfo"]["SupportedMountOption"]  # type: ignore[index]
    assert options
    assert mount_flags(list(options), fstype) == tuple(options)


def test_the_stress_options_fit_the_disk_slots_of_an_instance() -> None:
    info = _driver()["DriverInfo"]
    stress = info["StressTestOptions"]  # type: ignore[index]
    snapshots = info["VolumeSnapshotStressTestOptions"]  # type: ignore[index]
    # One disk slot is the boot disk's; the suite runs other specs beside these.
    assert 0 < stress["NumPods"] < MAX_DISKS_PER_INSTANCE and stress["NumRestarts"] > 0
    assert 0 < snapshots["NumPods"] < MAX_DISKS_PER_INSTANCE and snapshots["NumSnapshots"] > 0


def test_volume_limits_are_reported_by_node_get_info() -> None:
    text = (ROOT / "csi_oxide" / "server" / "node.py").read_text()
    assert "max_volumes_per_node=" in text


# ---- the suite's images and binaries ---------------------------------------------------------


def _members(archive: Path) -> tuple[list[str], Any, dict[str, bytes | None]]:
    """An image archive's names, config, and its layer's members (file contents, or None)."""
    with tarfile.open(archive) as outer:
        manifest = json.loads(_read(outer, "manifest.json"))
        config = json.loads(_read(outer, manifest[0]["Config"]))
        layer_file = outer.extractfile(manifest[0]["Layers"][0])
        assert layer_file is not None
        with tarfile.open(fileobj=layer_file) as layer:
            members = {
                m.name: (_read(layer, m.name) if m.isfile() else None) for m in layer.getmembers()
            }
    return manifest[0]["RepoTags"], config, members


def _read(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None, name
    return f.read()


def test_the_agnhost_image_is_the_binary_with_a_shell_and_the_dockerfile_users(
    tmp_path: Path,
) -> None:
    if shutil.which("busybox") is None:
        skips.skip("busybox-static not installed (make conformance installs it)")
    fake = tmp_path / "agnhost"
    fake.write_bytes(b"\x7fELF agnhost")
    fake.chmod(0o755)
    tags, config, layer = _members(images.agnhost_image(fake, tmp_path).archive)
    assert tags == ["registry.k8s.io/e2e-test-images/agnhost:2.56"]
    assert config["config"]["Entrypoint"] == ["/agnhost"]
    assert config["config"]["Cmd"] == ["pause"]
    assert {"agnhost", "agnhost-2", "bin/busybox", "bin/sh", "bin/nsenter"} <= set(layer)
    assert layer["agnhost"] == b"\x7fELF agnhost"
    group = (layer["etc/group"] or b"").decode()
    assert "group-defined-in-image:x:50000:user-defined-in-image" in group
    passwd = (layer["etc/passwd"] or b"").decode()
    assert "user-defined-in-image:x:1000:" in passwd


def test_the_pause_image_answers_to_both_names(tmp_path: Path) -> None:
    if shutil.which("busybox") is None:
        skips.skip("busybox-static not installed")
    tags, _, _ = _members(images.pause_image(tmp_path).archive)
    assert tags == ["registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10.1"]


def _suite_image_manifest() -> Path:
    """The suite's image manifest in this user's Go module cache (where the build put it)."""
    if shutil.which("go") is None:
        skips.skip("go is not installed: the k8s.io/kubernetes module cannot be in its cache")
    done = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=False)
    cache = Path(done.stdout.strip())
    manifest = cache / "k8s.io/kubernetes@v1.34.4/test/utils/image/manifest.go"
    try:
        if manifest.is_file():
            return manifest
    except PermissionError:
        pass
    skips.skip(f"the k8s.io/kubernetes v1.34.4 module is not downloaded in {cache}")


def test_the_image_names_are_the_suites_manifest() -> None:
    text = _suite_image_manifest().read_text()
    for image in (
        images.SUITE_BUSYBOX_IMAGE,
        images.SUITE_AGNHOST_IMAGE,
        images.SUITE_NGINX_IMAGE,
        images.SUITE_PAUSE_IMAGE,
        images.SUITE_DNSUTILS_IMAGE,
    ):
        name, tag = image.rsplit("/", 1)[1].split(":")
        assert f'"{name}", "{tag}"}}' in text, image


def test_the_suite_binaries_are_built_only_when_asked_for() -> None:
    script = ROOT / "scripts" / "cluster" / "build_tools.py"
    listed = subprocess.run(
        [sys.executable, script, "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert "e2e.test=" in listed and "agnhost=" in listed
    bt = _build_tools()
    assert {t.name for t in bt.SUITE_TOOLS} == set(conformance.SUITE_TOOLS)
    assert not {t.name for t in bt.TOOLS} & set(conformance.SUITE_TOOLS)
    ginkgo = next(t for t in bt.SUITE_TOOLS if t.name == "ginkgo")
    # The runner's version is the suite's library's (k8s.io/kubernetes' go.mod).
    assert ginkgo.version == "v2.21.0" and ginkgo.plain
    e2e = next(t for t in bt.SUITE_TOOLS if t.name == "e2e.test")
    assert e2e.test and e2e.package == "k8s.io/kubernetes/test/e2e"
    assert e2e.version == bt.KUBE_VERSION


# ---- the run --------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.e2e
@pytest.mark.timeout(5400)  # the cluster, then the suite under its own SUITE_TIMEOUT (50 minutes)
@skips.opt_in("CSI_OXIDE_CONFORMANCE", "make conformance runs the suite")
def test_the_suite_passes_on_the_claimed_patterns() -> None:
    counts, problems = conformance.run()
    assert counts is not None, problems
    assert problems == []
    assert counts.failed == [] and counts.suite_failures == []
    assert counts.passed
