"""The ownership rule, case by case (pure: descriptions and names, no Oxide)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from csi_oxide.controller import owner, record
from csi_oxide.controller.owner import Owner
from csi_oxide.oxide.types import Image

from .controller_helpers import a_disk, a_snapshot

CLUSTER = "prod"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PROJECT = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e60"


snapshot = a_snapshot


VOLUME = record.Record(cluster=CLUSTER, name="pvc-1", size=1 << 30)
VOLUME_NAME = record.volume_name("pvc-1")


def test_our_volume() -> None:
    claim = owner.of_disk(a_disk(VOLUME_NAME, VOLUME.encode()), CLUSTER)
    assert claim == owner.Claim(Owner.OURS, VOLUME)
    assert claim.usable


def test_our_volume_with_a_hashed_name() -> None:
    long = record.Record(cluster=CLUSTER, name="é" * 300, pvc="x" * 300)
    text = long.encode()
    assert '"h":' in text  # the record carries a hash of the name, not the name
    assert owner.of_disk(a_disk(record.volume_name("é" * 300), text), CLUSTER).owner is Owner.OURS


@pytest.mark.parametrize("description", ["", "made by hand", "csi.oxide.computer is great"])
def test_no_record_is_static(description: str) -> None:
    claim = owner.of_disk(a_disk("legacy", description), CLUSTER)
    assert claim == owner.STATIC
    assert claim.usable and claim.record is None


@pytest.mark.parametrize(
    ("name", "description"),
    [
        (VOLUME_NAME, replace(VOLUME, cluster="other").encode()),  # another cluster's
        ("copied-by-hand", VOLUME.encode()),  # a copied record on another name
        (record.volume_name("pvc-2"), VOLUME.encode()),  # ... on another driver-like name
        (VOLUME_NAME, record.PREFIX + "{damaged"),  # a damaged record is not "no record"
        (VOLUME_NAME, replace(VOLUME, grow_from=1, grow_to=2).encode()),  # a snapshot's record
        # Odd JSON: whatever a parser could read differently, or only by guessing, is nobody's.
        (VOLUME_NAME, record.PREFIX + '{"c":"other","n":"pvc-1","c":"prod"}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","n":"pvc-2"}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":{"pvc-1":1},"h":"' + "0" * 64 + '"}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","s":-1073741824}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","s":true}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","s":1e999}'),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","s":' + str(2**64) + "}"),
        (VOLUME_NAME, record.PREFIX + '{"c":"prod","n":"pvc-1","x":' + "[" * 50_000),
    ],
    ids=[
        "other-cluster",
        "copied",
        "copied-csi-name",
        "damaged",
        "expansion-record",
        "duplicate-cluster",
        "duplicate-name",
        "nested-name",
        "negative-size",
        "boolean-size",
        "infinite-size",
        "size-beyond-int64",
        "nested-too-deep",
    ],
)
def test_everything_else_is_foreign(name: str, description: str) -> None:
    claim = owner.of_disk(a_disk(name, description), CLUSTER)
    assert claim == owner.FOREIGN
    assert not claim.usable


def test_snapshots() -> None:
    csi = record.Record(
        cluster=CLUSTER, name="snap-a", source=record.Source(record.SourceKind.VOLUME, VOLUME_NAME)
    )
    ours = snapshot(record.snapshot_name("snap-a"), csi.encode())
    assert owner.of_snapshot(ours, CLUSTER).owner is Owner.OURS
    assert owner.of_snapshot(replace(ours, name=record.snapshot_name("b")), CLUSTER) == (
        owner.FOREIGN
    )
    assert owner.of_snapshot(ours, "other") == owner.FOREIGN
    assert owner.of_snapshot(snapshot("by-hand", "mine"), CLUSTER) == owner.STATIC


def test_temporary_snapshots_are_ours_or_nothing() -> None:
    clone = record.Record(
        cluster=CLUSTER, name=VOLUME_NAME, source=record.Source(record.SourceKind.VOLUME, "csi-src")
    )
    clone_name = record.clone_snapshot_name(VOLUME_NAME)
    assert owner.of_snapshot(snapshot(clone_name, clone.encode()), CLUSTER).owner is Owner.OURS
    grow = replace(VOLUME, grow_from=1 << 30, grow_to=2 << 30)
    grow_name = record.grow_snapshot_name(VOLUME_NAME)
    assert owner.of_snapshot(snapshot(grow_name, grow.encode()), CLUSTER).owner is Owner.OURS
    # No record: a temporary name is never a static snapshot.
    assert owner.of_snapshot(snapshot(grow_name, "by hand"), CLUSTER) == owner.FOREIGN
    # A volume's record without the expansion sizes does not describe an expansion snapshot.
    assert owner.of_snapshot(snapshot(grow_name, VOLUME.encode()), CLUSTER) == owner.FOREIGN
    # The expansion record of another volume, copied onto this name.
    other = replace(grow, name="pvc-2")
    assert owner.of_snapshot(snapshot(grow_name, other.encode()), CLUSTER) == owner.FOREIGN
    assert owner.of_snapshot(snapshot(clone_name, grow.encode()), CLUSTER) == owner.FOREIGN


def test_unknown_keys_of_a_later_version_are_ignored() -> None:
    text = VOLUME.encode()[:-1] + ',"future":{"a":[1,2]}}'
    assert owner.of_disk(a_disk(VOLUME_NAME, text), CLUSTER) == owner.Claim(Owner.OURS, VOLUME)


def image(name: str, description: str, project_id: str | None = PROJECT) -> Image:
    return Image(
        id="6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e62",
        name=name,
        description=description,
        project_id=project_id,
        size=1 << 30,
        block_size=4096,
        time_created=NOW,
    )


KEPT = record.Record(cluster=CLUSTER, name="vs-1")


def test_our_image() -> None:
    claim = owner.of_image(image(KEPT.image_name(), KEPT.encode()), CLUSTER)
    assert claim == owner.Claim(Owner.OURS, KEPT)


@pytest.mark.parametrize(
    ("name", "description", "verdict"),
    [
        ("img-golden", "a golden image", Owner.STATIC),  # pre-provisioned: used, never deleted
        (KEPT.image_name(), replace(KEPT, cluster="other").encode(), Owner.FOREIGN),
        ("img-copied", KEPT.encode(), Owner.FOREIGN),  # a record copied onto another image
        (KEPT.snapshot_name(), KEPT.encode(), Owner.FOREIGN),  # a snapshot's name is not it
    ],
)
def test_images_that_are_not_ours(name: str, description: str, verdict: Owner) -> None:
    assert owner.of_image(image(name, description), CLUSTER).owner is verdict


def test_an_image_snapshot_is_ours_only_under_its_derived_name() -> None:
    target = KEPT.image_name()
    rec = record.Record.of_image_snapshot(
        CLUSTER, target, record.Source(record.SourceKind.VOLUME, VOLUME_NAME)
    )
    name = record.image_snapshot_name(target)
    assert owner.of_snapshot(snapshot(name, rec.encode()), CLUSTER).owner is Owner.OURS
    assert owner.of_snapshot(snapshot(name + "0", rec.encode()), CLUSTER).owner is Owner.FOREIGN
    assert owner.of_snapshot(snapshot(name, "by hand"), CLUSTER).owner is Owner.FOREIGN
