"""The simulator's slow-answer knob: the operation is carried out, its answer trickles out."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from csi_oxide.oxide import errors as oxerr
from csi_oxide.oxide.client import HttpOxideClient, RetryPolicy
from csi_oxide.oxide.credentials import StaticToken
from csi_oxide.oxide.types import DiskSpec
from csi_oxide_lab.asgi import AsgiCarrier
from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.sim.cli import _config, add_arguments
from csi_oxide_lab.sim.inprocess import InProcessSimulator
from tests.units import GIB


def _client(sim: Simulator, timeout: float) -> HttpOxideClient:
    return HttpOxideClient(
        "http://sim",
        StaticToken(sim.token),
        "csi",
        carrier=AsgiCarrier(sim.asgi_app(validate=True)),
        retry=RetryPolicy(max_elapsed=0.0),
        timeout=timeout,
    )


async def test_a_slow_answer_is_applied_but_not_heard_within_the_deadline() -> None:
    sim = InProcessSimulator(SimConfig(slow_rate=1.0, slow_byte_ms=100))
    api = _client(sim, timeout=0.3)
    spec = DiskSpec(name="d1", description="x", size=GIB, block_size=4096)
    with pytest.raises(oxerr.OxideUnavailableError, match="request deadline"):
        await api.disk_create(spec)
    assert sim.disk_names() == ["d1"]  # carried out all the same
    sim.config = dataclasses.replace(sim.config, slow_rate=0.0)
    assert (await api.disk_view("d1")).size == GIB
    await api.aclose()
    assert sim.contract_violations == []


def test_the_knob_is_on_the_command_line_and_checked() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = _config(parser.parse_args(["--slow-rate", "0.25", "--slow-byte-ms", "50"]))
    assert (config.slow_rate, config.slow_byte_ms) == (0.25, 50.0)
    assert _config(parser.parse_args([])).slow_rate == 0.0
    with pytest.raises(ValueError, match="slow_rate"):
        Simulator(SimConfig(slow_rate=1.5))
