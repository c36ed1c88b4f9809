"""Several local instances (``--local-instances N``): one machine standing in for N nodes, each
instance seeing only the disks attached to it, in a device folder of its own.

The loop-device tests need root and /dev/loop-control (skipped with that reason otherwise); the
rest runs anywhere."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

import pytest

from csi_oxide.node.devices import UdevDeviceFinder
from csi_oxide_lab.sim import SimConfig
from csi_oxide_lab.sim.backing import LoopBacking
from csi_oxide_lab.sim.backings import make_backing
from csi_oxide_lab.sim.cli import _config, add_arguments, env_lines
from csi_oxide_lab.sim.simulator import Simulator
from tests.units import GIB

from .sim_helpers import serve


def _parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = shlex.split(value)[0]
    return values


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_one_local_instance_is_the_default(tmp_path: Path) -> None:
    assert _config(_args()).local_instances == 1
    sim = Simulator(SimConfig(backing="loop", state_dir=tmp_path))
    try:
        values = _parse_env(env_lines(sim, "http://127.0.0.1:1"))
    finally:
        sim.close()
    assert sim.local_instance_ids == [sim.local_instance_id]
    assert values["CSI_OXIDE_SIM_DEVICE_DIR"] == str(tmp_path / "devices")
    assert not any(key.endswith("_0") for key in values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices", "snapshots"]


def test_env_file_names_each_local_instance_and_its_folder(tmp_path: Path) -> None:
    argv = ("--backing", "loop", "--local-instances", "2", "--instances", "1")
    config = _config(_args(*argv, "--state-dir", str(tmp_path)))
    sim = Simulator(config)
    try:
        values = _parse_env(env_lines(sim, "http://127.0.0.1:1"))
    finally:
        sim.close()
    first, second = sim.local_instance_ids
    assert len(sim.instance_ids) == 3  # two local, one more
    assert values["CSI_OXIDE_NODE_ID"] == values["CSI_OXIDE_NODE_ID_0"] == first
    assert values["CSI_OXIDE_NODE_ID_1"] == second
    assert values["CSI_OXIDE_SIM_DEVICE_DIR"] == values["CSI_OXIDE_SIM_DEVICE_DIR_0"]
    assert values["CSI_OXIDE_SIM_DEVICE_DIR_0"] == str(tmp_path / "local-0")
    assert values["CSI_OXIDE_SIM_DEVICE_DIR_1"] == str(tmp_path / "local-1")
    assert (tmp_path / "local-1").is_dir()


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_local_instances_refuses_less_than_one(value: str) -> None:
    with pytest.raises(SystemExit):
        _args("--local-instances", value)
    with pytest.raises(ValueError, match="at least 1"):
        Simulator(SimConfig(local_instances=0))


def test_the_guest_is_the_only_local_instance() -> None:
    with pytest.raises(ValueError, match="one local instance"):
        make_backing("guest", None, local_instances=2)


async def test_each_local_instance_takes_disks_in_memory() -> None:
    async with serve(local_instances=2, hotplug=True) as api:
        first, second = api.sim.local_instance_ids
        for name, instance in (("vol-a", first), ("vol-b", second)):
            assert (await api.create_disk(name)).status_code == 201
            assert (await api.attach(name, instance)).status_code == 202
            assert (await api.disk(name))["state"] == {"state": "attached", "instance": instance}
        assert (await api.detach("vol-a", first)).status_code == 202
        assert (await api.attach("vol-a", second)).status_code == 202
        assert api.sim.contract_violations == []


def _backing_of(device: str) -> str:
    return Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()


def _loops_in(folder: Path) -> list[str]:
    """The devices a node plugin given ``folder`` as its device folder takes for disks."""
    return [device.path for device in UdevDeviceFinder(sim_device_dir=folder).scan()]


@pytest.mark.root
async def test_a_disk_moves_between_local_instances_with_its_data(tmp_path: Path) -> None:
    async with serve(backing="loop", state_dir=tmp_path, hotplug=True, local_instances=2) as api:
        backing = api.sim.backing
        assert isinstance(backing, LoopBacking)
        folder_a, folder_b = backing.local_dirs
        first, second = api.sim.local_instance_ids
        assert (await api.create_disk("vol-a", GIB, block_size=512)).status_code == 201
        assert (await api.attach("vol-a", first)).status_code == 202
        device = api.sim.device_path("vol-a")
        assert device is not None
        assert _backing_of(device) == str(folder_a / "vol-a")
        assert _loops_in(folder_b) == []
        with open(device, "r+b") as f:
            f.write(b"written on A".ljust(512, b"\0"))
        assert (await api.detach("vol-a", first)).status_code == 202
        assert _loops_in(folder_a) == [] and not (folder_a / "vol-a").exists()
        assert (await api.attach("vol-a", second)).status_code == 202
        moved = api.sim.device_path("vol-a")
        assert moved is not None
        assert _backing_of(moved) == str(folder_b / "vol-a")
        with open(moved, "rb") as f:
            assert f.read(12) == b"written on A"
        assert _loops_in(folder_a) == []
        assert api.sim.contract_violations == []
    assert _loops_in(folder_b) == [] and not (folder_b / "vol-a").exists()


@pytest.mark.root
async def test_a_busy_device_loses_its_identity_at_detach(tmp_path: Path) -> None:
    """Detached while the guest holds it open: the device no longer names the disk (as an
    unplugged NVMe namespace has no serial any more) and the kernel frees it on the last close."""
    async with serve(backing="loop", state_dir=tmp_path, hotplug=True, local_instances=2) as api:
        first = api.sim.local_instance_ids[0]
        assert (await api.create_disk("vol-a", GIB)).status_code == 201
        assert (await api.attach("vol-a", first)).status_code == 202
        device = api.sim.device_path("vol-a")
        assert device is not None
        held = os.open(device, os.O_RDONLY)
        try:
            assert (await api.detach("vol-a", first)).status_code == 202
            assert _backing_of(device).endswith(" (deleted)")
            assert _loops_in(tmp_path / "local-0") == []
        finally:
            os.close(held)
