"""The official conformance suite, csi-sanity, against real ``csi-oxide`` processes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from csi_oxide import harness

pytestmark = pytest.mark.sanity


@pytest.fixture
def sanity_binary() -> str:
    binary = os.environ.get("CSI_SANITY") or shutil.which("csi-sanity")
    if binary and Path(binary).exists():
        return binary
    if os.environ.get("CSI_OXIDE_REQUIRE_SANITY") == "1":
        pytest.fail("csi-sanity is required here but not installed (run `make tools`)")
    pytest.skip("csi-sanity is not installed (`make tools` installs it)")


def _check(result: harness.SanityResult, label: str, report: Callable[[str], None]) -> None:
    report(f"{label}: {result.summary()}")
    assert result.failed == 0, f"{label} failures: {result.failures}\n{result.output[-8000:]}"
    assert result.passed > 0, f"{label}: nothing ran\n{result.output[-4000:]}"
    assert result.exit_code == 0, result.output[-8000:]


def test_identity_specs(sanity_binary: str, tmp_path: Path, sanity_report) -> None:
    sim = harness.start_sim(tmp_path, "--hotplug")
    with harness.stopping(sim.proc):
        driver = harness.start_driver(tmp_path, sim.env, mode="all")
        with harness.stopping(driver.proc):
            result = harness.run_csi_sanity(
                sanity_binary, tmp_path, driver.endpoint, args=["--ginkgo.focus=Identity Service"]
            )
    _check(result, "identity (mode all)", sanity_report)
    assert result.passed == 3
