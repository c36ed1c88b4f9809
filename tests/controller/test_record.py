from __future__ import annotations

import json

import pytest

from csi_oxide.contract.oxide_rules import is_valid_name
from csi_oxide.contract.volumes import is_volume_name
from csi_oxide.controller import record
from csi_oxide.errors import ConfigurationError


@pytest.mark.parametrize(
    "name",
    ["pvc-1", "sanity", "x" * 128, "Ünïcødé-ñame-" * 9, "UPPER-CASE-1A2B3C4D-5E6F7A8B"],
)
def test_volume_and_snapshot_names(name: str) -> None:
    vol = record.volume_name(name)
    snap = record.snapshot_name(name)
    assert len(vol) == 20  # the NVMe serial is the first 20 bytes of the name: all of it
    assert is_valid_name(vol) and is_valid_name(snap)
    assert is_volume_name(vol) and record.is_driver_snapshot_name(snap)
    assert record.volume_name(name) == vol  # deterministic
    assert record.volume_name(name + "x") != vol


def test_temporary_names_are_distinct_and_recognised() -> None:
    clone = record.clone_snapshot_name("csi-0123456789abcdef")
    grow = record.grow_snapshot_name("csi-0123456789abcdef")
    assert clone != grow
    for name in (clone, grow):
        assert is_valid_name(name)
        assert record.is_temporary_snapshot_name(name)
        assert not record.is_driver_snapshot_name(name)


def test_round_trip() -> None:
    rec = record.Record(
        cluster="prod",
        name="pvc-1",
        size=5,
        source=record.Source(record.SourceKind.SNAPSHOT, "snap-1"),
        pvc="ns/claim",
        pv="pv-1",
    )
    text = rec.encode()
    assert text.startswith(record.PREFIX)
    assert record.decode(text) == rec
    assert record.owned_by(text, "prod") == rec
    assert record.owned_by(text, "other-cluster") is None
    assert rec.matches_name("pvc-1") and not rec.matches_name("pvc-2")


def test_long_record_falls_back_to_a_hash_within_512() -> None:
    name = "é" * 64  # 128 bytes, 6 characters each once escaped
    rec = record.Record(cluster="c" * 60, name=name, size=1, pvc="n" * 200, pv="p" * 200)
    text = rec.encode()
    assert len(text) <= 512
    decoded = record.decode(text)
    assert decoded is not None
    assert decoded.name == "" and decoded.matches_name(name)
    assert not decoded.matches_name(name + "x")


@pytest.mark.parametrize(
    "description",
    [
        "",
        "a disk made by hand",
        record.PREFIX + "{not json",
        record.PREFIX + "[1]",
        record.PREFIX + '{"n":"x"}',
    ],
)
def test_foreign_descriptions_are_not_ours(description: str) -> None:
    assert record.decode(description) is None


@pytest.mark.parametrize("name", ["pvc-1", "é" * 200])
def test_disk_name_survives_the_hash_fallback(name: str) -> None:
    rec = record.Record(cluster="c" * 100, name=name, size=1, pvc="n" * 150, pv="p" * 150)
    decoded = record.decode(rec.encode())
    assert decoded is not None
    assert decoded.disk_name() == record.volume_name(name)


def test_grow_sizes_round_trip() -> None:
    rec = record.Record(cluster="prod", name="pvc-1", size=5, grow_from=1 << 30, grow_to=2 << 30)
    assert record.decode(rec.encode()) == rec


@pytest.mark.parametrize("name", ["pvc-1", "é" * 200])
def test_snapshot_and_clone_names_survive_the_hash_fallback(name: str) -> None:
    rec = record.Record(
        cluster="c" * 63,
        name=name,
        source=record.Source(record.SourceKind.VOLUME, "v" * 63),
        pv="p" * 400,
    )
    decoded = record.decode(rec.encode())
    assert decoded is not None
    assert decoded.snapshot_name() == record.snapshot_name(name)
    assert decoded.clone_snapshot_name() == record.clone_snapshot_name(name)


def test_block_size_round_trips() -> None:
    rec = record.Record(
        cluster="prod",
        name="s",
        source=record.Source(record.SourceKind.VOLUME, "csi-1"),
        block_size=512,
    )
    assert record.decode(rec.encode()) == rec


@pytest.mark.parametrize("cluster", ["default", "prod-eu-1", "a", "A.b_c-9", "x" * 63])
def test_usable_cluster_ids(cluster: str) -> None:
    record.check_cluster_id(cluster)
    # The longest record the driver writes still fits with this cluster ID.
    longest = record.Record(
        cluster=cluster,
        name="é" * 300,
        size=1023 << 30,
        source=record.Source(record.SourceKind.SNAPSHOT, "s" * 63),
        pvc="n" * 300,
        pv="p" * 300,
        grow_from=1023 << 30,
        grow_to=1023 << 30,
        block_size=4096,
    )
    assert len(longest.encode()) <= 512


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ("x" * 64, "at most 63"),
        ("x" * 600, "at most 63"),
        ("", "not usable"),
        ("has space", "not usable"),
        ('quo"te', "not usable"),
        ("ünïcode", "not usable"),
        ("-leading", "not usable"),
        ("trailing.", "not usable"),
        ("new\nline", "not usable"),
        ("prod\n", "not usable"),  # a regex ``$`` would let a final newline through
    ],
)
def test_unusable_cluster_ids_are_refused(cluster: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        record.check_cluster_id(cluster)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " "])
def test_a_driver_name_with_anything_after_it_is_none_of_ours(suffix: str) -> None:
    vol, snap = record.volume_name("pvc-1"), record.snapshot_name("s")
    assert not is_volume_name(vol + suffix)
    assert not record.is_driver_snapshot_name(snap + suffix)
    assert not is_valid_name(vol + suffix)


@pytest.mark.parametrize(
    ("source", "written"),
    [
        (None, None),
        (record.Source(record.SourceKind.SNAPSHOT, "snap-1"), "snapshot:snap-1"),
        (
            record.Source(record.SourceKind.VOLUME, "csi-0123456789abcdef"),
            "volume:csi-0123456789abcdef",
        ),
    ],
)
def test_a_content_source_is_written_as_kind_and_id(
    source: record.Source | None, written: str | None
) -> None:
    text = record.Record(cluster="prod", name="pvc-1", source=source).encode()
    assert json.loads(text[len(record.PREFIX) :]).get("src") == written
    decoded = record.decode(text)
    assert decoded is not None and decoded.source == source


@pytest.mark.parametrize("src", ["image:x", "snapshot", "snapshot:", ":x", "Snapshot:x"])
def test_a_record_with_an_unknown_content_source_is_damaged(src: str) -> None:
    text = record.PREFIX + json.dumps({"c": "prod", "n": "pvc-1", "src": src})
    assert record.decode(text) is None
    assert record.decode(record.PREFIX + json.dumps({"c": "prod", "n": "pvc-1"})) is not None


def test_a_source_of_another_kind_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="image"):
        record.Source("image", "x")  # type: ignore[arg-type]


def test_a_clone_snapshot_record_names_its_target_disk() -> None:
    target = record.volume_name("pvc-clone")
    source = record.Source(record.SourceKind.VOLUME, record.volume_name("pvc-src"))
    rec = record.Record.of_clone_snapshot("prod", target, source)
    assert rec.clone_target == target
    assert rec.clone_snapshot_name() == record.clone_snapshot_name(target)
    # The description format is the one clone snapshots were always written in.
    assert rec.encode() == record.Record(cluster="prod", name=target, source=source).encode()
    assert record.decode(rec.encode()) == rec


def test_the_description_format_is_fixed() -> None:
    """Descriptions already written in Oxide are read back by every later version: the marker and
    the keys never change."""
    source = record.Source(record.SourceKind.SNAPSHOT, "snap-0123456789abcdef")
    rec = record.Record(cluster="prod", name="pvc-1", size=5, source=source, pvc="ns/claim")
    assert rec.encode() == (
        'csi.oxide.computer/v1 {"c":"prod","n":"pvc-1","s":5,'
        '"src":"snapshot:snap-0123456789abcdef","pvc":"ns/claim"}'
    )


@pytest.mark.parametrize("name", ["vs-1", "é" * 300])
def test_image_names_are_snapshot_ids_of_their_own_kind(name: str) -> None:
    image = record.image_name(name)
    assert is_valid_name(image) and record.is_driver_image_name(image)
    assert record.is_image_id(image) and not record.is_image_id(record.snapshot_name(name))
    temporary = record.image_snapshot_name(image)
    assert is_valid_name(temporary) and record.is_temporary_snapshot_name(temporary)
    rec = record.Record(cluster="c", name=name)
    decoded = record.decode(rec.encode())
    assert decoded is not None and decoded.image_name() == image
    kept = record.Record.of_image_snapshot("c", image, record.Source(record.SourceKind.VOLUME, "v"))
    assert kept.image_snapshot_name() == temporary


def test_read_only_round_trips_and_is_absent_when_false() -> None:
    ro = record.Record(cluster="c", name="pvc", read_only=True)
    assert '"ro":1' in ro.encode()
    assert record.decode(ro.encode()) == ro
    assert '"ro"' not in record.Record(cluster="c", name="pvc").encode()
    assert record.decode(ro.encode().replace('"ro":1', '"ro":true')) is None
