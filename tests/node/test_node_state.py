"""The node's record store: durable, atomic, one process per directory, unreadable = refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_oxide.errors import ConfigurationError, FailedPreconditionError
from csi_oxide.node.mountinfo import parse_line
from csi_oxide.node.state import (
    MKFS_DONE,
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
