"""Fixtures of the controller tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from csi_oxide_lab.testing import ControllerEnv, controller_env


@pytest.fixture
async def env() -> AsyncIterator[ControllerEnv]:
    made = controller_env(hotplug=True, instances=1)
    yield made
    await made.api.aclose()
    assert made.sim.contract_violations == []


@pytest.fixture
async def cold_env() -> AsyncIterator[ControllerEnv]:
    """Today's racks: no hot-plug, so attach and detach need a stopped instance."""
    made = controller_env(hotplug=False)
    yield made
    await made.api.aclose()
    assert made.sim.contract_violations == []
