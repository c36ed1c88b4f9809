"""NodeOps with a read-only disk (``publish_context`` says ``read-only``), against fakes of its
seams: mounted read-only without a journal replay, never formatted, never grown; its stats are
healthy; CSI's own readonly publish is honoured as for any volume."""

from __future__ import annotations

import os

import pytest

from csi_oxide.contract.publish_context import Origin
from csi_oxide.errors import FailedPreconditionError
from tests.node.world import VOLUME, FakeWorld, PublishContext

# What ``publish_context`` says of the volume: a read-only disk, made from a snapshot.
READ_ONLY = PublishContext(origin=Origin.SNAPSHOT, read_only_disk=True)


@pytest.fixture
def world(fake_world: FakeWorld) -> FakeWorld:
    return fake_world


@pytest.mark.parametrize(
    ("fstype", "options"),
    [
        ("ext4", ("ro", "noload")),
        ("ext3", ("ro", "noload")),
        ("xfs", ("nouuid", "ro", "norecovery")),
    ],
)
async def test_mounted_read_only_without_recovery(
    world: FakeWorld, fstype: str, options: tuple[str, ...]
) -> None:
    world.holding(fstype)
    staging = await world.stage(fstype=fstype, **READ_ONLY)
    assert world.mounter.mount_options[os.path.realpath(staging)] == options
    assert world.fs.formatted == []
    assert "ro" in world.top(staging)[0]
    await world.stage(fstype=fstype, **READ_ONLY)  # a retry finds it mounted
    assert [c for c in world.mounter.calls if c[0] == "mount"] == [("mount", staging)]


@pytest.mark.parametrize(
    ("holds", "shown"), [("", "no filesystem"), ("xfs", "xfs"), ("ext3", "ext3")]
)
async def test_a_read_only_disk_is_never_formatted(
    world: FakeWorld, holds: str, shown: str
) -> None:
    world.holding(holds)
    with pytest.raises(FailedPreconditionError, match=f"read-only disk holding '{shown}'"):
        await world.stage(fstype="ext4", **READ_ONLY)
    assert world.fs.formatted == []
    assert world.mounter.mount_options == {}


async def test_stats_are_healthy_and_growth_is_refused(world: FakeWorld) -> None:
    world.holding("ext4")
    staging = await world.stage(**READ_ONLY)
    stats = await world.ops.stats(VOLUME, staging)
    assert (stats.abnormal, stats.block) == (None, False)
    with pytest.raises(FailedPreconditionError, match="mounted read-only"):
        await world.ops.expand(VOLUME, staging)


async def test_publish_honours_the_csi_readonly_flag(world: FakeWorld) -> None:
    world.holding("ext4")
    await world.stage(**READ_ONLY)
    target = await world.publish(read_only=True)
    assert "ro" in world.top(target)[0]
    assert (await world.ops.stats(VOLUME, target)).abnormal is None


async def test_raw_block_read_only_disk_is_staged_untouched(world: FakeWorld) -> None:
    world.holding("")
    await world.stage(fstype="", block=True, **READ_ONLY)
    assert world.fs.formatted == []
    assert world.mounter.mount_options == {}
