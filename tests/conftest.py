"""Shared test set-up: the ``root`` and ``tools`` marks (under the one skip rule of
``tests/skips.py``), the process's log configuration put back after every test, and the
csi-sanity figures in the summary."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from tests import skips

SANITY_RESULTS = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SANITY_RESULTS] = []


@pytest.fixture(autouse=True)
def _log_configuration() -> Iterator[None]:
    """A test may configure logging (``csi_oxide.daemon.log.configure``, as a daemon does at
    start); the next one must not inherit it: a level left at info would silence the debug lines
    another test reads."""
    before = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**before)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _unmet(item: pytest.Item) -> str | None:
    """What a test marked ``root`` (root, loop devices) or ``tools(...)`` lacks here, if
    anything."""
    if item.get_closest_marker("root") is not None:
        reason = skips.root_reason()
        if reason is not None:
            return reason
    for mark in item.iter_markers("tools"):
        missing = skips.missing_tools(*mark.args)
        if missing:
            return skips.tools_reason(missing)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In development, a marked test that cannot run here is skipped with the reason (reported
    at the test)."""
    if skips.in_ci():
        return
    for item in items:
        reason = _unmet(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """In CI, a marked test that cannot run here fails (``skips.unavailable``). Runs after
    pytest's conditional skip marks (an opt-in module's gate wins), before any fixture."""
    reason = _unmet(item)
    if reason is not None:
        skips.unavailable(reason)


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
