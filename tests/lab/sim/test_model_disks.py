"""Disks in the simulator: create (the stale 201), view, delete, names, sizes, uniqueness."""

from __future__ import annotations

import pytest

from tests.oxide_bodies import blank_source, disk_create_body
from tests.units import GIB

from .sim_helpers import Api, error_of, serve


async def test_create_answers_creating_then_view_says_detached(api: Api) -> None:
    r = await api.create_disk("vol-a", 2 * GIB, description="pvc x")
    assert r.status_code == 201
    created = r.json()
    assert created["state"] == {"state": "creating"}
    view = await api.disk("vol-a")
    assert view["state"] == {"state": "detached"}
    assert view["id"] == created["id"]
    assert view["size"] == 2 * GIB
    assert view["block_size"] == 4096
    assert view["device_path"] == "/mnt/vol-a"
    assert view["disk_type"] == "distributed"
    assert view["read_only"] is False
    assert view["project_id"] == api.sim.project_id
    assert view["description"] == "pvc x"
    assert str(view["time_created"]).endswith("Z")


async def test_view_and_delete_by_id_without_project(api: Api) -> None:
    disk_id = (await api.create_disk("vol-b")).json()["id"]
    r = await api.http.get(f"/v1/disks/{disk_id}")
    assert r.status_code == 200
    assert r.json()["name"] == "vol-b"
    r = await api.http.delete(f"/v1/disks/{disk_id}")
    assert r.status_code == 204
    assert r.content == b""
    r = await api.http.get(f"/v1/disks/{disk_id}")
    assert error_of(r) == (404, "ObjectNotFound", f'not found: disk with id "{disk_id}"')


async def test_missing_disk_by_name(api: Api) -> None:
    r = await api.http.get("/v1/disks/ghost", params={"project": "csi"})
    assert error_of(r) == (404, "ObjectNotFound", 'not found: disk with name "ghost"')


async def test_unknown_project(api: Api) -> None:
    r = await api.http.get("/v1/disks/ghost", params={"project": "other"})
    assert error_of(r) == (404, "ObjectNotFound", 'not found: project with name "other"')


async def test_selector_rules(api: Api) -> None:
    disk_id = (await api.create_disk("vol-c")).json()["id"]
    r = await api.http.get(f"/v1/disks/{disk_id}", params={"project": "csi"})
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "when providing disk as an ID project should not be specified",
    )
    r = await api.http.get("/v1/disks/vol-c")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "disk should either be UUID or project should be specified",
    )
    r = await api.http.get(f"/v1/disks/{disk_id}", params={})
    assert r.status_code == 200


async def test_project_by_id_selects_too(api: Api) -> None:
    await api.create_disk("vol-d")
    r = await api.http.get("/v1/disks/vol-d", params={"project": api.sim.project_id})
    assert r.status_code == 200


async def test_name_already_exists_is_400(api: Api) -> None:
    assert (await api.create_disk("vol-e")).status_code == 201
    r = await api.create_disk("vol-e", 2 * GIB)
    assert error_of(r) == (400, "ObjectAlreadyExists", 'already exists: disk "vol-e"')


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("vol-ABC", "invalid character"),  # the published pattern allows it, the server does not
        ("abcdef0123456789abcdef0123456789", "UUID"),  # 32 hex digits parse as a UUID
    ],
)
async def test_names_the_server_refuses_despite_the_schema(api: Api, name: str, why: str) -> None:
    # A `Name` that does not parse fails the body's parsing: 400 without an error code.
    status, code, message = error_of(await api.create_disk(name))
    assert (status, code) == (400, None)
    assert message.startswith("unable to parse JSON body: name: ")
    assert why in message


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Vol", "must begin with an ASCII lowercase"),
        ("vol-", 'cannot end with "-"'),
        ("v" * 64, "at most 63"),
        ("1vol", "must begin"),
        ("", "at least one character"),
    ],
)
async def test_names_the_schema_refuses(name: str, why: str) -> None:
    async with serve(validate=False) as api:
        status, code, message = error_of(await api.create_disk(name))
    assert (status, code) == (400, None)
    assert message.startswith("unable to parse JSON body: name: ")
    assert why in message


async def test_name_limits_accepted(api: Api) -> None:
    assert (await api.create_disk("v" * 63)).status_code == 201
    assert (await api.create_disk("a")).status_code == 201


@pytest.mark.parametrize(
    ("size", "block_size", "why"),
    [
        (GIB + GIB // 2, 4096, "must be a multiple of 1 GiB"),
        (GIB // 2, 512, "must be at least 1 GiB"),
        (0, 512, "must be at least 1 GiB"),
        (1024 * GIB, 4096, "must be less than 1023 GiB"),
        (GIB + 512, 4096, "multiple of block size 4096"),
    ],
)
async def test_size_rules(api: Api, size: int, block_size: int, why: str) -> None:
    status, code, message = error_of(await api.create_disk("vol-f", size, block_size=block_size))
    assert (status, code) == (400, "InvalidValue")
    assert message.startswith('unsupported value for "size": ')
    assert why in message


@pytest.mark.parametrize("block_size", [512, 2048, 4096])
async def test_block_sizes_and_max_size(api: Api, block_size: int) -> None:
    r = await api.create_disk("vol-g", 1023 * GIB, block_size=block_size)
    assert r.status_code == 201
    assert r.json()["block_size"] == block_size


async def test_bad_block_size_without_the_schema() -> None:
    async with serve(validate=False) as api:
        status, code, message = error_of(await api.create_disk("vol-h", block_size=1000))
    # Outside the `BlockSize` enum: the body does not parse (400 without an error code).
    assert (status, code) == (400, None)
    assert message == (
        "unable to parse JSON body: disk_backend.disk_source.block_size: "
        "invalid value 1000, expected one of 512, 2048, 4096"
    )
    assert api.sim.disk_names() == []


async def test_description_limit_is_512(api: Api) -> None:
    assert (await api.create_disk("vol-i", description="d" * 512)).status_code == 201
    status, code, message = error_of(await api.create_disk("vol-j", description="d" * 513))
    assert (status, code) == (400, "InvalidValue")
    assert "512" in message


async def test_local_backend_is_refused(api: Api) -> None:
    body = disk_create_body("vol-k", GIB, disk_backend={"type": "local"})
    r = await api.http.post("/v1/disks", params={"project": "csi"}, json=body)
    status, code, _ = error_of(r)
    assert (status, code) == (400, "InvalidRequest")
    assert api.sim.disk_names() == []


async def test_delete_only_detached_or_faulted(api: Api) -> None:
    await api.create_disk("vol-l")
    api.sim.set_disk_state("vol-l", "maintenance")
    r = await api.http.delete("/v1/disks/vol-l", params={"project": "csi"})
    assert error_of(r) == (400, "InvalidRequest", 'disk cannot be deleted in state "maintenance"')
    api.sim.set_disk_state("vol-l", "faulted")
    r = await api.http.delete("/v1/disks/vol-l", params={"project": "csi"})
    assert r.status_code == 204
    assert api.sim.disk_names() == []


async def test_delete_attached_disk_is_refused(hot_api: Api) -> None:
    await hot_api.create_disk("vol-m")
    assert (await hot_api.attach("vol-m")).status_code == 202
    r = await hot_api.http.delete("/v1/disks/vol-m", params={"project": "csi"})
    assert error_of(r) == (400, "InvalidRequest", "disk is attached")
    assert hot_api.sim.disk_names() == ["vol-m"]


async def test_missing_project_on_create() -> None:
    async with serve(validate=False) as api:
        body = disk_create_body("vol-n", GIB, blank_source(512))
        r = await api.http.post("/v1/disks", json=body)
    status, code, message = error_of(r)
    assert (status, code) == (400, None)
    assert "project" in message
