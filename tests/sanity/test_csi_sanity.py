"""The official conformance suite, csi-sanity, against real ``csi-oxide`` processes.

The simulated rack runs with hot-plug on and loop backing, so attached disks are real block devices
on this machine: the node specs format, mount, bind and grow for real. Each run: the whole suite,
with expansion and the attach-limit specs switched on; in mount mode and raw block mode, with the
controller and node in one process and in two.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from csi_oxide_lab import harness
from tests import skips
from tests.units import GIB

# A csi-sanity run may take up to harness.run_csi_sanity's own limit (25 minutes), plus the
# simulator's and the drivers' start and stop.
pytestmark = [pytest.mark.sanity, pytest.mark.root, pytest.mark.timeout(2400)]

FULL_SUITE = [
    f"--csi.testvolumesize={GIB}",
    f"--csi.testvolumeexpandsize={2 * GIB}",
    "--csi.testnodevolumeattachlimit",
]


@pytest.fixture
def sanity_binary() -> str:
    binary = os.environ.get("CSI_SANITY") or shutil.which("csi-sanity")
    if binary and Path(binary).exists():
        return binary
    skips.unavailable("csi-sanity is not installed (`make tools` installs it; CSI_SANITY names it)")


def test_only_known_skips_are_accepted() -> None:
    assert harness.unexplained_skips(["[It] ModifyVolume [Controller Server] should fail"]) == []
    node_spec = "[It] Node Service should work"
    assert harness.unexplained_skips([node_spec]) == [node_spec]


def _check(result: harness.SanityResult, label: str, report: Callable[[str], None]) -> None:
    report(f"{label}: {result.summary()}")
    assert result.failed == 0, f"{label} failures: {result.failures}\n{result.output[-8000:]}"
    assert result.passed > 0, f"{label}: nothing ran\n{result.output[-4000:]}"
    assert result.exit_code == 0, result.output[-8000:]
    assert harness.unexplained_skips(result.skips) == [], f"{label}: skips nobody explained"


def _run(binary: str, workdir: Path, *, processes: int, args: list[str]) -> harness.SanityResult:
    sim = harness.start_sim(
        workdir, "--hotplug", "--backing", "loop", "--state-dir", str(workdir / "rack")
    )
    with harness.stopping(sim.proc):
        if processes == 1:
            driver = harness.start_driver(workdir, sim.env, mode="all")
            with harness.stopping(driver.proc):
                return harness.run_csi_sanity(binary, workdir, driver.endpoint, args=args)
        controller = harness.start_driver(workdir, sim.env, mode="controller", name="controller")
        with harness.stopping(controller.proc):
            node = harness.start_driver(workdir, sim.env, mode="node", name="node")
            with harness.stopping(node.proc):
                return harness.run_csi_sanity(
                    binary,
                    workdir,
                    node.endpoint,
                    controller_endpoint=controller.endpoint,
                    args=args,
                )


@pytest.mark.parametrize(
    ("access", "processes"),
    [("mount", 1), ("mount", 2), ("block", 1), ("block", 2)],
    ids=["mount-one-process", "mount-two-processes", "block-one-process", "block-two-processes"],
)
def test_full_suite(
    sanity_binary: str, tmp_path: Path, sanity_report, access: str, processes: int
) -> None:
    args = [*FULL_SUITE, f"--csi.testvolumeaccesstype={access}"]
    result = _run(sanity_binary, tmp_path, processes=processes, args=args)
    label = f"full suite, {access} mode, {processes} process{'es' if processes > 1 else ''}"
    _check(result, label, sanity_report)
    assert harness.leftovers(tmp_path) == []
