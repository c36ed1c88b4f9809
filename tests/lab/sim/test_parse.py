"""Request bodies (csi_oxide_lab/sim/parse.py) are parsed whole, as the real server parses them: a
value
that does not fit its published type fails the parsing (400 without an error code) before any rule
of the server is checked (400 InvalidValue or InvalidRequest). Run without the contract check, so
that the simulator's own parser answers."""

from __future__ import annotations

import pytest

from tests.oxide_bodies import disk_create_body
from tests.units import GIB

from .sim_helpers import error_of, serve

PARSE_ERROR = "unable to parse JSON body: "
UUID = "0f1e2d3c-4b5a-4968-8776-655443322110"


def disk(source: dict[str, object] | None = None, **over: object) -> dict[str, object]:
    return {**disk_create_body("vol-a", GIB, source), **over}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (disk(name="vol-ABC"), "name: name contains invalid character"),
        (disk(name="Vol"), "name: name must begin with an ASCII lowercase character"),
        (disk(name="abcdef01-2345-4678-89ab-cdef01234567"), "name: name cannot be a UUID"),
        (disk({"type": "blank", "block_size": 1024}), "disk_backend.disk_source.block_size: "),
        (disk({"type": "blank", "block_size": 0}), "disk_backend.disk_source.block_size: "),
        (
            disk({"type": "importing_blocks", "block_size": 8192}),
            "disk_backend.disk_source.block_size: invalid value 8192",
        ),
        (
            disk({"type": "snapshot", "snapshot_id": "snap-a"}),
            "disk_backend.disk_source.snapshot_id: invalid UUID",
        ),
        (
            disk({"type": "image", "image_id": "img"}),
            "disk_backend.disk_source.image_id: invalid UUID",
        ),
        (disk(size=2**64), "size: invalid type"),
        (disk(size=-1), "size: invalid type"),
    ],
)
async def test_values_outside_their_published_type_fail_the_parsing(
    body: dict[str, object], detail: str
) -> None:
    async with serve(validate=False) as api:
        r = await api.http.post("/v1/disks", params={"project": "csi"}, json=body)
        status, code, message = error_of(r)
        assert (status, code) == (400, None), message
        assert message.startswith(PARSE_ERROR + detail)
        assert api.sim.disk_names() == []


async def test_the_body_is_parsed_whole_before_any_rule_is_checked() -> None:
    # A description over the simulator's limit (a rule) and a bad block size (a parse error): the
    # parse error wins, as the server parses before it validates.
    body = disk({"type": "blank", "block_size": 3}, description="d" * 600, size=GIB + 1)
    async with serve(validate=False) as api:
        r = await api.http.post("/v1/disks", params={"project": "csi"}, json=body)
    status, code, message = error_of(r)
    assert (status, code) == (400, None)
    assert "block_size" in message


async def test_a_bad_name_in_a_snapshot_create_fails_the_parsing() -> None:
    async with serve(validate=False) as api:
        await api.create_disk("vol-a")
        body = {"name": "Snap", "description": "", "disk": "vol-a"}
        r = await api.http.post("/v1/snapshots", params={"project": "csi"}, json=body)
        status, code, message = error_of(r)
        assert (status, code) == (400, None)
        assert message.startswith(PARSE_ERROR + "name: ")
        assert api.sim.snapshot_names() == []


async def test_a_long_description_is_refused_as_a_value_after_parsing() -> None:
    # The 512-character limit is the simulator's assumption (see spec.MAX_DESCRIPTION_LENGTH).
    async with serve(validate=False) as api:
        await api.create_disk("vol-a")
        body = {"name": "snap-a", "description": "d" * 513, "disk": "vol-a"}
        r = await api.http.post("/v1/snapshots", params={"project": "csi"}, json=body)
    assert error_of(r) == (
        400,
        "InvalidValue",
        'unsupported value for "description": description must be at most 512 characters',
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Not found: no image has that ID.
        ({"type": "image", "image_id": UUID}, (404, "ObjectNotFound")),
        # ASSUMPTION, a well-formed request the simulator refuses after parsing:
        ({"type": "importing_blocks", "block_size": 512}, (400, "InvalidRequest")),  # no imports
    ],
)
async def test_sources_the_simulator_does_not_make(
    source: dict[str, object], expected: tuple[int, str]
) -> None:
    async with serve() as api:  # validate mode: these requests match the published document
        r = await api.http.post("/v1/disks", params={"project": "csi"}, json=disk(source))
        assert error_of(r)[:2] == expected
        assert api.sim.disk_names() == []
        assert api.sim.contract_violations == []
