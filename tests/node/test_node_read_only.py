"""NodeOps with a read-only disk (``publish_context`` says ``read-only``), against fakes of its
seams: mounted read-only without a journal replay, never formatted, never grown; its stats are
healthy; CSI's own readonly publish is honoured as for any volume."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from csi_oxide.errors import FailedPreconditionError
from csi_oxide.node.fs import Signature
from csi_oxide.node.ops import NodeOps
from csi_oxide.node.state import FileRecordStore
from csi_oxide.publish_context import Birth, Origin
from tests.node.fakes import Disk, FakeDevices, FakeFilesystems, FakeMounter, fake_node_ops

VOLUME = "csi-0123456789abcdef"
DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"
READ_ONLY = Birth(Origin.SNAPSHOT, DISK, read_only=True)


@dataclass
class World:
    root: Path
    devices: FakeDevices
    mounter: FakeMounter
    fs: FakeFilesystems
    ops: NodeOps

    def path(self, *parts: str) -> str:
        path = self.root.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def holding(self, fstype: str) -> str:
        """Attach the volume's device, holding a ``fstype`` filesystem (or nothing); its path."""
        device = self.devices.attach(VOLUME)
        sig = Signature(fstype=fstype) if fstype else Signature()
        self.fs.disks[device.path] = Disk(signature=sig, zeros=not fstype)
        return device.path

    async def stage(self, fstype: str = "ext4", *, block: bool = False) -> str:
        staging = self.path("pv", "globalmount")
        await self.ops.stage(
            VOLUME, staging, fstype=fstype, mount_flags=[], block=block, birth=READ_ONLY
        )
        return staging

    def top(self, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The per-mount and the superblock options of the top mount at ``path``."""
        real = os.path.realpath(path)
        found = [m for m in self.mounter.table if m.mount_point == real][-1]
        return found.options, found.super_options


@pytest.fixture
def world(tmp_path: Path) -> World:
    devices = FakeDevices()
    mounter = FakeMounter(devices)
    filesystems = FakeFilesystems()
    store = FileRecordStore(tmp_path / "state", boot="boot-1")
    ops = fake_node_ops(devices, filesystems, store, mounter=mounter)
    return World(tmp_path, devices, mounter, filesystems, ops)


@pytest.mark.parametrize(
    ("fstype", "options"),
    [
        ("ext4", ("ro", "noload")),
        ("ext3", ("ro", "noload")),
        ("xfs", ("nouuid", "ro", "norecovery")),
    ],
)
async def test_mounted_read_only_without_recovery(
    world: World, fstype: str, options: tuple[str, ...]
) -> None:
    world.holding(fstype)
    staging = await world.stage(fstype)
    assert world.mounter.mount_options[os.path.realpath(staging)] == options
    assert world.fs.formatted == []
    assert "ro" in world.top(staging)[0]
    await world.stage(fstype)  # a retry finds it mounted
    assert [c for c in world.mounter.calls if c[0] == "mount"] == [("mount", staging)]


@pytest.mark.parametrize(
    ("holds", "shown"), [("", "no filesystem"), ("xfs", "xfs"), ("ext3", "ext3")]
)
async def test_a_read_only_disk_is_never_formatted(world: World, holds: str, shown: str) -> None:
    world.holding(holds)
    with pytest.raises(FailedPreconditionError, match=f"read-only disk holding '{shown}'"):
        await world.stage("ext4")
    assert world.fs.formatted == []
    assert world.mounter.mount_options == {}


async def test_stats_are_healthy_and_growth_is_refused(world: World) -> None:
    world.holding("ext4")
    staging = await world.stage()
    stats = await world.ops.stats(VOLUME, staging)
    assert (stats.abnormal, stats.block) == (None, False)
    with pytest.raises(FailedPreconditionError, match="mounted read-only"):
        await world.ops.expand(VOLUME, staging)


async def test_publish_honours_the_csi_readonly_flag(world: World) -> None:
    world.holding("ext4")
    staging = await world.stage()
    target = world.path("pods", "a", "mount")
    await world.ops.publish(
        VOLUME, staging, target, block=False, read_only=True, single_writer=False, mount_flags=[]
    )
    assert "ro" in world.top(target)[0]
    assert (await world.ops.stats(VOLUME, target)).abnormal is None


async def test_raw_block_read_only_disk_is_staged_untouched(world: World) -> None:
    world.holding("")
    await world.stage("", block=True)
    assert world.fs.formatted == []
    assert world.mounter.mount_options == {}
