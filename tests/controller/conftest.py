"""Fixtures of the controller tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from csi_oxide.controller.ops import ControllerOps

from .controller_helpers import Env, make_env


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim, api = await make_env(hotplug=True, instances=1)
    yield Env(sim, api, ControllerOps(api, cluster="test"), sim.local_instance_id)
    await api.aclose()
    assert sim.contract_violations == []


@pytest.fixture
async def cold_env() -> AsyncIterator[Env]:
    """Today's racks: no hot-plug, so attach and detach need a stopped instance."""
    sim, api = await make_env(hotplug=False)
    yield Env(sim, api, ControllerOps(api, cluster="test"), sim.local_instance_id)
    await api.aclose()
    assert sim.contract_violations == []
