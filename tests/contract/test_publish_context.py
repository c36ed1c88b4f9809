"""The publish_context contract between controller and node."""

from __future__ import annotations

import pytest

from csi_oxide.contract.publish_context import (
    DISK_ID_KEY,
    ORIGIN_KEY,
    READ_ONLY_KEY,
    Birth,
    Origin,
    decode,
    encode,
)

DISK = "7c5b9a4e-3f0d-4c52-9d1e-0a6b2f8e41c3"


@pytest.mark.parametrize("origin", [*list(Origin), None])
@pytest.mark.parametrize("disk_id", [DISK, None])
def test_every_birth_survives_the_trip(origin: Origin | None, disk_id: str | None) -> None:
    assert decode(encode(Birth(origin, disk_id))) == Birth(origin, disk_id)


@pytest.mark.parametrize("context", [{}, {ORIGIN_KEY: ""}, {ORIGIN_KEY: "Blank"}, {"x": "blank"}])
def test_missing_or_unknown_origin_proves_nothing(context: dict[str, str]) -> None:
    assert decode(context).origin is None


@pytest.mark.parametrize(
    "disk_id", ["", "csi-0123456789abcdef", DISK.upper(), DISK.replace("-", ""), DISK + "\n"]
)
def test_a_disk_id_that_is_not_a_canonical_uuid_names_no_disk(disk_id: str) -> None:
    assert decode({ORIGIN_KEY: "blank", DISK_ID_KEY: disk_id}) == Birth(Origin.BLANK, None)


def test_read_only_travels_only_when_set() -> None:
    ro = Birth(Origin.SNAPSHOT, DISK, read_only=True)
    assert encode(ro)[READ_ONLY_KEY] == "true"
    assert decode(encode(ro)) == ro
    assert READ_ONLY_KEY not in encode(Birth(Origin.SNAPSHOT, DISK))


@pytest.mark.parametrize("value", ["", "True", "1", "yes", "false"])
def test_anything_but_true_is_not_read_only(value: str) -> None:
    assert decode({READ_ONLY_KEY: value}).read_only is False
