"""The node's record store: durable, atomic, one process per directory, unreadable = refuse."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide.errors import ConfigurationError, FailedPreconditionError
from csi_oxide.node.history import MKFS_DONE, MKFS_STARTED, RAW, interrupted_mkfs
from csi_oxide.node.mountinfo import parse_line
from csi_oxide.node.state import (
    FileRecordStore,
    Made,
    MountIdentity,
    MountRecord,
    VolumeRecord,
    from_json,
    read_boot_id,
    to_json,
)

VOLUME = "csi-0123456789abcdef"
DISK = "0d3f6a2b-9c4e-4f1a-8b7d-5e2c1a9f3b60"
NEW_DISK = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
PAGE = 4096


def _record() -> VolumeRecord:
    ident = MountIdentity("259:3", "/", "ext4")
    stage = MountRecord("/var/lib/kubelet/pv/x/globalmount", "boot", False, ident)
    publish = MountRecord("/pods/p/mount", "boot", False, ident, True, Made("dir", 2049, 77))
    return VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4", stage, {publish.path: publish})


def test_a_record_survives_the_round_trip() -> None:
    record = _record()
    assert from_json(to_json(record)) == record


async def test_records_persist_and_an_empty_record_removes_its_file(tmp_path: Path) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    assert (await store.load(VOLUME)).empty
    await store.save(_record())
    store.close()
    again = FileRecordStore(tmp_path, boot="b1")
    assert await again.load(VOLUME) == _record()
    assert [r.volume_id for r in await again.all()] == [VOLUME]
    await again.save(VolumeRecord(VOLUME, VOLUME))
    assert list(tmp_path.glob("*.json")) == []


def test_one_process_per_state_directory(tmp_path: Path) -> None:
    first = FileRecordStore(tmp_path, boot="b1")
    with pytest.raises(ConfigurationError, match="in use"):
        FileRecordStore(tmp_path, boot="b1")
    first.close()
    FileRecordStore(tmp_path, boot="b1").close()


async def test_an_unreadable_record_refuses_rather_than_guesses(tmp_path: Path) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    (tmp_path / f"{VOLUME}.json").write_text('{"version": 1, "volume_id": ')
    with pytest.raises(FailedPreconditionError, match="unreadable"):
        await store.load(VOLUME)


def test_identity_matches_only_the_same_mount() -> None:
    ident = MountIdentity("0:6", "/loop3", "devtmpfs")
    line = "42 27 0:6 {root} /t rw,relatime - devtmpfs devtmpfs rw"
    assert ident.matches(parse_line(line.format(root="/loop3")))
    assert ident.matches(parse_line(line.format(root="/loop3//deleted")))
    assert not ident.matches(parse_line(line.format(root="/loop4")))
    assert not ident.matches(parse_line(line.format(root="/")))


def test_the_boot_id_is_read_from_the_kernel() -> None:
    assert len(read_boot_id()) == 36


async def test_records_sharing_a_serial_are_found_by_prefix(tmp_path: Path) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    for volume in (VOLUME, VOLUME + "-twin", "csi-fedcba9876543210"):
        await store.save(VolumeRecord(volume, volume[:20], MKFS_DONE, "ext4"))
    found = await store.sharing_serial(VOLUME)
    assert sorted(r.volume_id for r in found) == [VOLUME, VOLUME + "-twin"]


# ---- issue 24, finding 1: the history is the disk's ----


def test_the_disk_id_survives_the_round_trip_and_old_records_have_none() -> None:
    record = VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4", disk_id=DISK)
    assert from_json(to_json(record)) == record
    old = to_json(VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4")).replace('"disk_id": null,', "")
    assert "disk_id" not in old and from_json(old).disk_id is None


def _vouches_for(record: VolumeRecord, disk_id: str | None) -> bool:
    """Whether the record's history says this plugin's mkfs on ``disk_id`` was interrupted."""
    return interrupted_mkfs(record.history, record.disk_id, disk_id)


@pytest.mark.parametrize("history", [MKFS_STARTED, MKFS_DONE, RAW])
def test_a_history_speaks_only_for_its_own_disk(history: str) -> None:
    record = VolumeRecord(VOLUME, VOLUME, history, "ext4", disk_id=DISK)
    assert record.for_disk(DISK) == record
    assert record.for_disk(None) == record  # an unknown disk: nothing to drop it for
    new = record.for_disk(NEW_DISK)
    assert (new.history, new.history_fstype, new.disk_id) == ("", "", NEW_DISK)
    assert _vouches_for(record, DISK) == (history == MKFS_STARTED)
    assert not _vouches_for(record, NEW_DISK) and not _vouches_for(record, None)


def test_a_history_of_an_unknown_disk_is_kept_but_vouches_for_none() -> None:
    legacy = VolumeRecord(VOLUME, VOLUME, MKFS_STARTED, "ext4")
    assert legacy.for_disk(NEW_DISK) == legacy
    assert not _vouches_for(legacy, NEW_DISK) and not _vouches_for(legacy, None)
    assert VolumeRecord(VOLUME, VOLUME).for_disk(DISK).disk_id == DISK


async def test_histories_of_old_disks_are_bounded_and_mounts_are_kept(tmp_path: Path) -> None:
    store = FileRecordStore(tmp_path, boot="b1", max_records=3)
    ids = [f"csi-{n:016x}" for n in range(6)]
    in_use = replace_stage(VolumeRecord(ids[0], ids[0], MKFS_DONE, "ext4"), "b1")
    await store.save(in_use)
    for n, volume_id in enumerate(ids[1:], start=1):
        await store.save(VolumeRecord(volume_id, volume_id, MKFS_DONE, "ext4", disk_id=DISK))
        os.utime(tmp_path / f"{volume_id}.json", (n, n))  # written in this order
    os.utime(tmp_path / f"{ids[0]}.json", (0, 0))  # the oldest write of all, but mounted
    kept = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert kept == [ids[0], ids[4], ids[5]]
    store.close()


def replace_stage(record: VolumeRecord, boot: str) -> VolumeRecord:
    ident = MountIdentity("259:3", "/", "ext4")
    return VolumeRecord(
        record.volume_id,
        record.serial,
        record.history,
        record.history_fstype,
        MountRecord("/staging", boot, False, ident),
    )


# ---- issue 24, finding 2: a record never tears, a hostile one is refused ----


def _big_record() -> VolumeRecord:
    """A record over one page long (5 KiB and more): a publish per pod of a busy volume."""
    ident = MountIdentity("259:3", "/", "ext4")
    publish = {
        f"/var/lib/kubelet/pods/{n:032x}/volumes/kubernetes.io~csi/pv/mount": MountRecord(
            f"/var/lib/kubelet/pods/{n:032x}/volumes/kubernetes.io~csi/pv/mount",
            "b1",
            False,
            ident,
        )
        for n in range(20)
    }
    record = VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4", publish=publish, disk_id=DISK)
    assert len(to_json(record)) > PAGE + 1000
    return record


def _no_temporary_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def short_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``os.write`` in the store as a nearly full disk does it: at most a page per call, then
    ENOSPC once the budget (the list's one item, in bytes) is spent."""
    budget = [1 << 30]
    real = os.write

    def write(fd: int, data: bytes | memoryview) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: min(PAGE, budget[0])]))
        budget[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)
    return budget


async def test_short_writes_are_completed(tmp_path: Path, short_writes: list[int]) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    await store.save(_big_record())
    assert await store.load(VOLUME) == _big_record()


async def test_a_full_disk_leaves_the_old_record_whole(
    tmp_path: Path, short_writes: list[int]
) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    old = VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4", disk_id=DISK)
    await store.save(old)
    short_writes[0] = PAGE  # one page left: the write of a 5 KiB record comes back short
    with pytest.raises(FailedPreconditionError, match=r"could not be written.*free space"):
        await store.save(_big_record())
    assert await store.load(VOLUME) == old
    assert _no_temporary_left(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"version": 1, "x": ' + "[" * 50_000,
        to_json(VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4")) + " " * (2 << 20),
    ],
    ids=["nested-list", "nested-in-a-record", "larger-than-a-record"],
)
async def test_a_hostile_record_is_unreadable_not_a_crash(tmp_path: Path, text: str) -> None:
    store = FileRecordStore(tmp_path, boot="b1")
    (tmp_path / f"{VOLUME}.json").write_text(text)
    with pytest.raises(FailedPreconditionError, match="unreadable"):
        await store.load(VOLUME)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_to_the_byte(filler: Path) -> None:
    """Write until the filesystem refuses a single byte more."""
    with filler.open("ab", buffering=0) as f:
        for chunk in (64 * 1024, PAGE, 1):
            while _wrote(f.fileno(), b"x" * chunk):
                pass


def _wrote(fd: int, data: bytes) -> bool:
    """Whether ``data`` (or a part of it) was written; False on ENOSPC."""
    try:
        return os.write(fd, data) > 0
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False


@pytest.mark.root
async def test_a_full_filesystem_never_tears_a_record(small_tmpfs: Path) -> None:
    store = FileRecordStore(small_tmpfs / "state", boot="b1")
    old = VolumeRecord(VOLUME, VOLUME, MKFS_DONE, "ext4", disk_id=DISK)
    await store.save(old)
    filler = small_tmpfs / "filler"
    _fill_to_the_byte(filler)
    for free in (0, PAGE):  # full to the byte; then one page free, less than the record needs
        os.truncate(filler, filler.stat().st_size - free)
        with pytest.raises(FailedPreconditionError, match="could not be written"):
            await store.save(_big_record())
        assert await store.load(VOLUME) == old
        assert _no_temporary_left(small_tmpfs / "state")
    filler.unlink()
    await store.save(_big_record())
    assert await store.load(VOLUME) == _big_record()
    store.close()
