"""The simulator's own definitions of Oxide (csi_oxide_lab/sim/spec.py) against the published API
document: the states, block sizes, name rules and list limits it states. (The driver's definitions
are checked against the same document in tests/oxide; neither side is checked against the other.)
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest

from csi_oxide_lab.sim import contract, spec

UUID = "0f1e2d3c-4b5a-4968-8776-655443322110"


@cache
def document() -> Any:
    """The published document, as parsed JSON."""
    with contract.spec_path().open("rb") as f:
        return json.load(f)


def schema(name: str) -> Any:
    return document()["components"]["schemas"][name]


def enum_values(name: str) -> list[Any]:
    """The values of a published enum, written either as ``enum`` or as a ``oneOf`` of one-value
    enums."""
    s = schema(name)
    if "enum" in s:
        return list(s["enum"])
    return [v for option in s["oneOf"] for v in option["enum"]]


def test_disk_states_are_the_published_ones() -> None:
    options = schema("DiskState")["oneOf"]
    published = {o["properties"]["state"]["enum"][0]: o["required"] for o in options}
    assert sorted(published) == sorted(s.value for s in spec.DiskState)
    with_instance = {state for state, required in published.items() if "instance" in required}
    assert with_instance == {s.value for s in spec.ATTACHED_STATES}


def test_instance_states_are_the_published_ones() -> None:
    assert sorted(enum_values("InstanceState")) == sorted(s.value for s in spec.InstanceState)


def test_snapshot_states_are_the_published_ones() -> None:
    assert sorted(enum_values("SnapshotState")) == sorted(s.value for s in spec.SnapshotState)


def test_block_sizes_are_the_published_enum() -> None:
    assert set(enum_values("BlockSize")) == spec.BLOCK_SIZES


def test_name_length_is_the_published_limit() -> None:
    name = schema("Name")
    assert (name["minLength"], name["maxLength"]) == (1, spec.MAX_NAME_LENGTH)


def test_list_limit_is_a_uint32_of_at_least_one() -> None:
    paths = document()["paths"]
    for path in ("/v1/disks", "/v1/snapshots", "/v1/instances"):
        (limit,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == "limit"]
        assert limit["schema"]["format"] == "uint32"
        assert limit["schema"]["minimum"] == 1
    assert spec.UINT32_MAX == 4_294_967_295


def test_the_description_limit_is_an_assumption_the_document_does_not_state() -> None:
    # If the document ever states a limit, spec.MAX_DESCRIPTION_LENGTH must follow it.
    create = schema("DiskCreate")["properties"]
    assert create["description"] == {"type": "string"}
    assert spec.MAX_DESCRIPTION_LENGTH == 512


# ---- names and IDs ----


def published_name_pattern() -> re.Pattern[str]:
    return re.compile(schema("Name")["pattern"])


@pytest.mark.parametrize(
    "value", ["a", "vol-1", "csi-0123456789abcdef", "x" * 63, "a-b-c", "disk0", "vol-2a"]
)
def test_names_the_server_accepts_match_the_published_pattern(value: str) -> None:
    assert spec.name_problem(value) is None
    assert published_name_pattern().search(value) is not None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "at least one character"),
        ("x" * 64, "at most 63"),
        ("Vol", "must begin with an ASCII lowercase"),
        ("1vol", "must begin with an ASCII lowercase"),
        ("vol-", 'cannot end with "-"'),
        ("vol_a", "invalid character"),
        ("vol-ABC", "invalid character"),  # the published pattern allows upper case
        ("vol-é", "invalid character"),
        ("abcdef0123456789abcdef0123456789", "cannot be a UUID"),  # 32 hex digits
        ("abcdef01-2345-4678-89ab-cdef01234567", "cannot be a UUID"),
    ],
)
def test_names_the_server_refuses(value: str, why: str) -> None:
    problem = spec.name_problem(value)
    assert problem is not None
    assert why in problem


@pytest.mark.parametrize(
    "value",
    [
        UUID,
        UUID.upper(),
        UUID.replace("-", ""),
        "{" + UUID + "}",
        "urn:uuid:" + UUID,
    ],
)
def test_the_uuid_forms_the_server_parses(value: str) -> None:
    assert spec.is_uuid(value)
    assert spec.canonical_id(value) == UUID


@pytest.mark.parametrize(
    "value",
    [
        "vol-a",
        UUID[:-1],
        UUID + "0",
        "0f1e-2d3c4b5a-4968-8776-655443322110",  # hyphens in the wrong places
        "{" + UUID.replace("-", "") + "}",
        "urn:uuid:" + UUID.replace("-", ""),
        " " + UUID,
        UUID + "\n",
    ],
)
def test_what_the_server_does_not_parse_as_a_uuid(value: str) -> None:
    assert not spec.is_uuid(value)


def test_hyphens_in_the_wrong_places_make_a_name_not_an_id() -> None:
    # Python's uuid.UUID accepts this (it drops every hyphen); the server's parser does not.
    value = "abcd-ef01234567-89abcdef0123456789"
    assert not spec.is_uuid(value)
    assert spec.name_problem(value) is None
