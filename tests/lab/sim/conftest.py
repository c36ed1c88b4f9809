"""Fixtures for the simulator tests: simulators in validate mode behind in-process clients."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .sim_helpers import Api, serve


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    """Today's platform (hot-plug off) with one extra instance; no contract violations allowed."""
    async with serve(instances=1) as a:
        yield a
        assert a.sim.contract_violations == []


@pytest.fixture
async def hot_api() -> AsyncIterator[Api]:
    """Hot-plug on, one extra instance; no contract violations allowed."""
    async with serve(instances=1, hotplug=True) as a:
        yield a
        assert a.sim.contract_violations == []
