"""NodeStage overlaps what only reads (the claim, the device, the record, the zero check, blkid)
and writes its records in as few durable steps as the proof allows (issue: NodeStage against a
careful admin by hand). Whatever runs at once, the refusals stay the ones of the rules, nothing
that was started for a stage keeps reading after it, and every record is on disk before the step
it stands for (docs/node-safety.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from csi_oxide.errors import FailedPreconditionError
from csi_oxide.node.devices import BlockDevice
from csi_oxide.node.fs import Signature
from csi_oxide.node.history import MKFS_DONE, MKFS_STARTED
from csi_oxide.node.state import VolumeRecord
from tests.node.world import TWIN, VOLUME, FakeWorld

GUARD = 10.0  # ends a test that would hang; never reached when it passes


@pytest.fixture
def world(fake_world: FakeWorld) -> FakeWorld:
    return fake_world


async def _until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - the condition has no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), GUARD)


def _saves(world: FakeWorld, monkeypatch: pytest.MonkeyPatch) -> list[VolumeRecord]:
    """Every record the node saves from now on, in order (the store still saves them)."""
    saved: list[VolumeRecord] = []
    save = world.store.save

    async def recorded(record: VolumeRecord) -> None:
        await save(record)
        saved.append(record)

    monkeypatch.setattr(world.store, "save", recorded)
    return saved


# ---- a concurrent start still refuses what the rules refuse ----


async def test_a_device_with_a_filesystem_is_refused_while_its_zero_check_runs(
    world: FakeWorld,
) -> None:
    """The zero check starts with the device found, before anything is decided: a foreign
    filesystem is still refused, without waiting for the zero check (it never answers here),
    which is stopped; nothing is formatted or mounted, and no history is written."""
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).signature = Signature(fstype="xfs")
    world.fs.zero_check_gate = asyncio.Event()  # never set
    with pytest.raises(FailedPreconditionError, match="holds 'xfs'"):
        await asyncio.wait_for(world.stage(), GUARD)
    assert world.fs.zero_checks_running == 0 and world.fs.zero_checks_answered == 0
    assert world.fs.formatted == [] and not world.mounted(world.staging())
    assert (await world.store.load(VOLUME)).history == ""


async def test_a_held_device_is_refused_while_its_zero_check_runs(world: FakeWorld) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.disk(dev.path).held = True  # a mount elsewhere, a mkfs still running
    world.fs.zero_check_gate = asyncio.Event()  # never set
    with pytest.raises(FailedPreconditionError, match="held by something else"):
        await asyncio.wait_for(world.stage(), GUARD)
    assert world.fs.zero_checks_running == 0 and world.fs.formatted == []


async def test_a_refused_claim_stops_the_zero_check_it_overlapped(world: FakeWorld) -> None:
    """The device (TWIN's serial is VOLUME's device, staged) is found before the claim is
    decided, and its zero check starts: the claim's refusal stops it, and nothing is touched."""
    world.devices.attach(VOLUME)
    await world.stage(VOLUME, "a")
    world.fs.zero_check_gate = asyncio.Event()  # never set
    with pytest.raises(FailedPreconditionError, match=f"volume {VOLUME} already uses"):
        await asyncio.wait_for(world.stage(TWIN, "b"), GUARD)
    assert world.fs.zero_checks_running == 0
    assert world.fs.formatted == [("/dev/nvme1n1", "ext4")]  # VOLUME's own mkfs, once
    assert not world.mounted(world.staging("b"))


async def test_a_refused_claim_does_not_wait_for_the_device(
    world: FakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim and the device are looked up at once: a claim refused is reported at once,
    as when the claim came first, and the wait for a device that is not there is cancelled."""
    world.devices.attach(VOLUME)
    await world.stage(VOLUME, "a")
    waiting, cancelled = asyncio.Event(), asyncio.Event()

    async def never_there(volume_id: str) -> BlockDevice:
        waiting.set()
        try:
            await asyncio.Event().wait()  # the device never appears
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    monkeypatch.setattr(world.devices, "find", never_there)
    with pytest.raises(FailedPreconditionError, match=f"volume {VOLUME} already uses"):
        await asyncio.wait_for(world.stage(TWIN, "b"), GUARD)
    assert waiting.is_set() and cancelled.is_set()


async def test_a_volume_already_staged_stops_the_zero_check_at_once(world: FakeWorld) -> None:
    """A retried NodeStage of a volume staged already: the zero check started with the device
    is not needed (nothing is formatted) and is stopped before the stage answers."""
    world.devices.attach(VOLUME)
    await world.stage()
    world.fs.zero_check_gate = asyncio.Event()  # never set
    await asyncio.wait_for(world.stage(), GUARD)
    assert world.fs.zero_checks_running == 0
    assert world.mounted(world.staging()) and len(world.fs.formatted) == 1


async def test_a_blank_disk_is_still_formatted_only_after_its_zero_check(
    world: FakeWorld,
) -> None:
    dev = world.devices.attach(VOLUME)
    world.fs.zero_check_gate = gate = asyncio.Event()
    staging = asyncio.ensure_future(world.stage())
    await _until(lambda: world.fs.zero_checks_running == 1)
    for _ in range(20):  # everything else the stage can do without the answer
        await asyncio.sleep(0)
    assert not staging.done() and world.fs.formatted == []
    assert (await world.store.load(VOLUME)).history == ""  # no history before the proof
    gate.set()
    await asyncio.wait_for(staging, GUARD)
    assert world.fs.formatted == [(dev.path, "ext4")]


# ---- the records: mkfs-started before mkfs, mkfs-done with the stage before the mount ----


async def test_a_fresh_stage_writes_two_records_each_before_its_step(
    world: FakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mkfs-started`` is on disk before mkfs; ``mkfs-done`` and the staging mount's record
    are one write, on disk before the mount (nothing can be written into the filesystem
    before the disk is recorded as holding it)."""
    dev = world.devices.attach(VOLUME)
    saved = _saves(world, monkeypatch)
    at_mkfs: list[VolumeRecord] = []
    at_mount: list[VolumeRecord] = []
    mkfs = world.fs.mkfs

    async def watched_mkfs(device: str, fstype: str) -> None:
        at_mkfs.append(world.store.load_sync(VOLUME))
        await mkfs(device, fstype)

    monkeypatch.setattr(world.fs, "mkfs", watched_mkfs)
    world.mounter.before_mount = lambda target: at_mount.append(world.store.load_sync(VOLUME))
    staging = await world.stage()
    assert [(r.history, r.stage is not None) for r in saved] == [
        (MKFS_STARTED, False),
        (MKFS_DONE, True),
    ]
    assert [r.history for r in at_mkfs] == [MKFS_STARTED]
    assert len(at_mount) == 1 and at_mount[0].history == MKFS_DONE
    assert at_mount[0].stage is not None and at_mount[0].stage.path == staging
    assert world.fs.formatted == [(dev.path, "ext4")] and world.mounted(staging)


async def test_a_failure_between_mkfs_and_the_mount_record_is_completed_by_the_retry(
    world: FakeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write after mkfs fails (a full state directory; a crash there leaves the same):
    the record still says ``mkfs-started``, nothing is mounted; the retry finds the filesystem,
    completes the history and mounts it, without formatting again."""
    dev = world.devices.attach(VOLUME)
    save = world.store.save
    failures = iter([False, True])  # the second write of the stage fails once

    async def full_once(record: VolumeRecord) -> None:
        if next(failures, False):
            raise FailedPreconditionError("the node record could not be written (disk full)")
        await save(record)

    monkeypatch.setattr(world.store, "save", full_once)
    with pytest.raises(FailedPreconditionError, match="disk full"):
        await world.stage()
    record = await world.store.load(VOLUME)
    assert record.history == MKFS_STARTED and record.stage is None
    assert not world.mounted(world.staging())
    staging = await world.stage()
    assert world.mounted(staging) and world.fs.formatted == [(dev.path, "ext4")]
    assert (await world.store.load(VOLUME)).history == MKFS_DONE
