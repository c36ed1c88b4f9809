"""The node's test world (``tests/node/world.py``): ``fake_world`` over fakes, ``loop_world``
over a ``rack`` of loop devices (root: its tests carry the ``root`` mark)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide_lab.harness import unmount_below
from tests.node.world import FakeWorld, LoopWorld, Rack


@pytest.fixture
def fake_world(tmp_path: Path) -> Iterator[FakeWorld]:
    world = FakeWorld(tmp_path)
    try:
        yield world
    finally:
        world.store.close()


@pytest.fixture
def rack(tmp_path: Path) -> Iterator[Rack]:
    """Backing files in ``tmp_path/devices``; at the end, whatever is mounted below
    ``tmp_path`` is unmounted and the rack's own loop devices detached."""
    devices = tmp_path / "devices"
    devices.mkdir()
    made = Rack(tmp_path, devices)
    try:
        yield made
    finally:
        unmount_below(tmp_path)
        made.loops.detach()


@pytest.fixture
def loop_world(rack: Rack) -> Iterator[LoopWorld]:
    world = LoopWorld(rack)
    try:
        yield world
    finally:
        world.store.close()
