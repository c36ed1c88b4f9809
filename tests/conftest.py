"""Shared test set-up: the root marker's skip rule and the csi-sanity figures in the summary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SANITY_RESULTS = pytest.StashKey[list[str]]()


def root_skip_reason() -> str | None:
    """Why root tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mkfs, mount); CI runs as root"
    if not Path("/dev/loop-control").exists():
        return "needs /dev/loop-control (loop devices)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SANITY_RESULTS] = []


def sanity_required() -> bool:
    """True where root tests and csi-sanity must run (CI): their skip becomes a failure."""
    return os.environ.get("CSI_OXIDE_REQUIRE_SANITY") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = root_skip_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("root") and not sanity_required():
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = root_skip_reason()
    if reason is not None and sanity_required() and item.get_closest_marker("root"):
        pytest.fail(f"CSI_OXIDE_REQUIRE_SANITY=1 but this test cannot run: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash[SANITY_RESULTS]
    if lines:
        terminalreporter.section("figures (csi-sanity, hostile input, chaos)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def sanity_report(request: pytest.FixtureRequest):
    """Append a line to the csi-sanity section of the summary."""
    return request.config.stash[SANITY_RESULTS].append
