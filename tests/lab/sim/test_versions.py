"""Older API versions (csi_oxide_lab/sim/versions.py): a request made at an older `api-version` is
served as the real server serves it, translated into the current form first. Before
LOCAL_STORAGE (2025120300.0.0) a `DiskCreate` has ``disk_source`` at the top level and no
``disk_backend``; before READ_ONLY_DISKS (2026013001.0.0) a snapshot source has no ``read_only``.
"""

from __future__ import annotations

import json

import pytest

from csi_oxide_lab.sim.errors import ApiError
from csi_oxide_lab.sim.versions import (
    API_VERSION,
    LOCAL_STORAGE,
    READ_ONLY_DISKS,
    check_api_version,
    parse_version,
    upgrade_body,
)
from tests.oxide_bodies import blank_source, disk_create_body, snapshot_source
from tests.units import GIB

from .sim_helpers import Api, error_of, serve

OLD = "2025112000.0.0"  # before LOCAL_STORAGE
BLANK = blank_source(2048)


def old_body(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "description": "old client", "size": GIB, "disk_source": BLANK, **extra}


def test_no_header_means_the_latest_version() -> None:
    assert check_api_version(None) == parse_version(API_VERSION)
    assert check_api_version(" 2025112000.0.0 ") == (2025112000, 0, 0)


def test_the_body_changes_are_ordered() -> None:
    assert LOCAL_STORAGE < READ_ONLY_DISKS <= parse_version("2026060800.0.0")


async def test_an_old_version_with_the_old_body_creates_the_disk(api: Api) -> None:
    # validate mode: the translated request and the answer both match the published document
    r = await api.http.post(
        "/v1/disks",
        params={"project": "csi"},
        json=old_body("vol-old"),
        headers={"api-version": OLD},
    )
    assert r.status_code == 201, r.text
    view = await api.disk("vol-old")
    assert (view["size"], view["block_size"], view["disk_type"]) == (GIB, 2048, "distributed")
    assert view["description"] == "old client"


async def test_an_old_version_without_disk_source_does_not_parse(api: Api) -> None:
    body = disk_create_body("vol-new-form", GIB, BLANK)
    r = await api.http.post(
        "/v1/disks", params={"project": "csi"}, json=body, headers={"api-version": OLD}
    )
    assert error_of(r) == (400, None, "unable to parse JSON body: missing field `disk_source`")
    assert api.sim.disk_names() == []


@pytest.mark.parametrize("version", [None, API_VERSION, "2025120300.0.0"])
async def test_the_old_body_at_a_current_version_does_not_parse(version: str | None) -> None:
    headers = {} if version is None else {"api-version": version}
    async with serve(validate=False) as api:
        r = await api.http.post(
            "/v1/disks", params={"project": "csi"}, json=old_body("vol-x"), headers=headers
        )
        assert error_of(r) == (400, None, "unable to parse JSON body: missing field `disk_backend`")
        assert api.sim.disk_names() == []


async def test_an_old_body_keeps_the_rules_of_today(api: Api) -> None:
    body = old_body("vol-big", size=GIB + 1)
    r = await api.http.post(
        "/v1/disks", params={"project": "csi"}, json=body, headers={"api-version": OLD}
    )
    status, code, message = error_of(r)
    assert (status, code) == (400, "InvalidValue")
    assert message.startswith('unsupported value for "size": ')


@pytest.mark.parametrize(("version", "read_only"), [("2026013000.0.0", False), (API_VERSION, True)])
async def test_read_only_counts_only_from_the_version_that_has_it(
    api: Api, version: str, read_only: bool
) -> None:
    await api.create_disk("vol-src")
    snap = (await api.snapshot("snap-a", "vol-src")).json()
    body = disk_create_body("vol-ro", GIB, snapshot_source(snap["id"], read_only=True))
    r = await api.http.post(
        "/v1/disks", params={"project": "csi"}, json=body, headers={"api-version": version}
    )
    assert r.status_code == 201, r.text
    assert (await api.disk("vol-ro"))["read_only"] is read_only


def test_upgrade_moves_disk_source_under_disk_backend() -> None:
    body = json.dumps(old_body("vol-a", disk_backend={"type": "local"})).encode()
    upgraded = json.loads(upgrade_body("disk_create", parse_version(OLD), body))
    assert upgraded == disk_create_body("vol-a", GIB, BLANK, description="old client")


@pytest.mark.parametrize(
    ("operation", "version", "body"),
    [
        ("disk_create", API_VERSION, json.dumps(old_body("vol-a")).encode()),  # current: as is
        ("snapshot_create", OLD, b'{"name": "s", "description": "", "disk": "d"}'),
        ("disk_create", OLD, b"not json"),  # the parser says what is wrong
        ("disk_create", OLD, b"[1, 2]"),
    ],
)
def test_upgrade_leaves_other_bodies_alone(operation: str, version: str, body: bytes) -> None:
    assert upgrade_body(operation, parse_version(version), body) == body


def test_upgrade_refuses_an_old_body_without_disk_source() -> None:
    with pytest.raises(ApiError) as caught:
        upgrade_body("disk_create", parse_version(OLD), b'{"name": "vol-a"}')
    assert (caught.value.status, caught.value.error_code) == (400, None)
