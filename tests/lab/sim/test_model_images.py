"""Images in the simulator: made from snapshots, in the project or the silo, promoted and demoted,
disks made from them (size, block size, project and read-only rules), and read-only disks.

Every request and answer here is checked against the published document (the ``api`` fixture
fails on any contract violation)."""

from __future__ import annotations

from csi_oxide_lab.asgi import Response
from tests.oxide_bodies import disk_create_body, image_create_body, image_source
from tests.units import GIB

from .sim_helpers import Api, error_of, serve

IMAGES = "/v1/images"
PROJECT = {"project": "csi"}


async def _image(api: Api, name: str, snapshot_id: str, *, project: bool = True) -> Response:
    body = image_create_body(name, snapshot_id, description="kept")
    return await api.http.post(IMAGES, params=PROJECT if project else {}, json=body)


async def _snapshot_of(api: Api, disk: str, size: int = GIB, block_size: int = 4096) -> str:
    assert (await api.create_disk(disk, size, block_size=block_size)).status_code == 201
    r = await api.snapshot(f"snap-{disk}", disk)
    assert r.status_code == 201, r.text
    snap_id: str = r.json()["id"]
    return snap_id


async def _disk_from_image(
    api: Api, name: str, image_id: str, size: int, *, read_only: bool | None = None
) -> Response:
    body = disk_create_body(name, size, image_source(image_id, read_only=read_only))
    return await api.http.post("/v1/disks", params=PROJECT, json=body)


async def test_project_image_copies_the_snapshot(api: Api) -> None:
    snap_id = await _snapshot_of(api, "vol-a", 2 * GIB, block_size=512)
    r = await _image(api, "img-a", snap_id)
    assert r.status_code == 201, r.text
    image = r.json()
    assert (image["size"], image["block_size"]) == (2 * GIB, 512)
    assert image["project_id"] == api.sim.project_id
    assert (image["os"], image["version"], image["description"]) == ("debian", "13", "kept")
    by_name = await api.http.get(f"{IMAGES}/img-a", params=PROJECT)
    by_id = await api.http.get(f"{IMAGES}/{image['id']}")
    assert by_name.json() == by_id.json() == image
    listed = (await api.http.get(IMAGES, params=PROJECT)).json()
    assert [i["name"] for i in listed["items"]] == ["img-a"]
    assert (await api.http.get(IMAGES)).json()["items"] == []  # no silo image yet


async def test_silo_image_and_project_image_names_are_separate(api: Api) -> None:
    snap_id = await _snapshot_of(api, "vol-a")
    silo = await _image(api, "img-a", snap_id, project=False)
    assert silo.status_code == 201
    assert silo.json()["project_id"] is None
    assert (await _image(api, "img-a", snap_id)).status_code == 201  # the project's own
    r = await _image(api, "img-a", snap_id, project=False)
    assert error_of(r) == (400, "ObjectAlreadyExists", 'already exists: image "img-a"')
    seen = await api.http.get(f"{IMAGES}/img-a")  # by name without a project: the silo's
    assert seen.json()["id"] == silo.json()["id"]
    assert [i["name"] for i in (await api.http.get(IMAGES)).json()["items"]] == ["img-a"]


async def test_image_from_a_missing_snapshot(api: Api) -> None:
    ghost = "5f0c6f84-7c3a-4d1e-9d2b-1f5a3c6e7b90"
    r = await _image(api, "img-a", ghost)
    assert error_of(r) == (404, "ObjectNotFound", f'not found: snapshot with id "{ghost}"')
    assert api.sim.image_names() == []


async def test_image_selectors_follow_the_name_or_id_rules(api: Api) -> None:
    image = (await _image(api, "img-a", await _snapshot_of(api, "vol-a"))).json()
    r = await api.http.get(f"{IMAGES}/{image['id']}", params=PROJECT)
    assert error_of(r)[:2] == (400, "InvalidRequest")
    r = await api.http.get(f"{IMAGES}/img-a")  # a project image is not the silo's
    assert error_of(r) == (404, "ObjectNotFound", 'not found: image with name "img-a"')


async def test_disk_from_image_inherits_block_size_and_content(api: Api) -> None:
    await api.create_disk("vol-a", GIB, block_size=2048)
    api.sim.write_content("vol-a", b"golden")
    snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
    image = (await _image(api, "img-a", snap_id)).json()
    api.sim.write_content("vol-a", b"changed")
    r = await _disk_from_image(api, "vol-b", image["id"], 3 * GIB)
    assert r.status_code == 201, r.text
    disk = await api.disk("vol-b")
    assert (disk["size"], disk["block_size"], disk["read_only"]) == (3 * GIB, 2048, False)
    assert (disk["image_id"], disk["snapshot_id"]) == (image["id"], None)
    assert api.sim.read_content("vol-b") == b"golden"


async def test_disk_smaller_than_its_image_is_refused(api: Api) -> None:
    image = (await _image(api, "img-a", await _snapshot_of(api, "vol-a", 2 * GIB))).json()
    status, code, message = error_of(await _disk_from_image(api, "vol-b", image["id"], GIB))
    assert (status, code) == (400, "InvalidValue")
    assert message == 'unsupported value for "size": total size must be at least the image\'s size'


async def test_read_only_disk_from_image_is_exactly_its_size(api: Api) -> None:
    image = (await _image(api, "img-a", await _snapshot_of(api, "vol-a", 2 * GIB))).json()
    r = await _disk_from_image(api, "vol-b", image["id"], 3 * GIB, read_only=True)
    status, code, message = error_of(r)
    assert (status, code) == (400, "InvalidValue")
    assert "a read-only disk must be exactly the size of its image" in message
    r = await _disk_from_image(api, "vol-b", image["id"], 2 * GIB, read_only=True)
    assert r.status_code == 201
    assert (await api.disk("vol-b"))["read_only"] is True


async def test_read_only_disk_cannot_be_snapshotted(api: Api) -> None:
    image = (await _image(api, "img-a", await _snapshot_of(api, "vol-a"))).json()
    await _disk_from_image(api, "vol-ro", image["id"], GIB, read_only=True)
    r = await api.snapshot("snap-ro", "vol-ro")
    assert error_of(r) == (400, "InvalidRequest", "can't create a snapshot of a read-only disk")
    assert "snap-ro" not in api.sim.snapshot_names()


async def test_silo_image_serves_the_project(api: Api) -> None:
    silo = (await _image(api, "img-a", await _snapshot_of(api, "vol-a"), project=False)).json()
    assert (await _disk_from_image(api, "vol-b", silo["id"], GIB)).status_code == 201


async def test_image_of_another_project_is_refused(api: Api) -> None:
    foreign = api.sim.add_foreign_image("theirs", GIB)
    r = await api.http.get(f"{IMAGES}/{foreign}")
    assert error_of(r)[:2] == (404, "ObjectNotFound")
    r = await _disk_from_image(api, "vol-b", foreign, GIB)
    assert error_of(r) == (400, "InvalidRequest", "image does not belong to this project")
    assert api.sim.disk_names() == []


async def test_deleting_an_image_leaves_its_disks(api: Api) -> None:
    await api.create_disk("vol-a")
    api.sim.write_content("vol-a", b"golden")
    snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
    image = (await _image(api, "img-a", snap_id)).json()
    await _disk_from_image(api, "vol-b", image["id"], GIB)
    assert (await api.http.delete(f"{IMAGES}/img-a", params=PROJECT)).status_code == 204
    assert api.sim.image_names() == []
    assert api.sim.read_content("vol-b") == b"golden"
    r = await api.http.delete(f"{IMAGES}/{image['id']}")
    assert error_of(r)[:2] == (404, "ObjectNotFound")


async def test_promote_and_demote(api: Api) -> None:
    image = (await _image(api, "img-a", await _snapshot_of(api, "vol-a"))).json()
    r = await api.http.post(f"{IMAGES}/img-a/promote", params=PROJECT)
    assert r.status_code == 202
    assert r.json()["project_id"] is None
    assert (await api.http.get(f"{IMAGES}/img-a")).json()["id"] == image["id"]
    r = await api.http.post(f"{IMAGES}/{image['id']}/promote")
    assert error_of(r)[:2] == (400, "InvalidRequest")
    r = await api.http.post(f"{IMAGES}/img-a/demote", params=PROJECT)
    assert r.status_code == 202
    assert r.json()["project_id"] == api.sim.project_id
    r = await api.http.post(f"{IMAGES}/{image['id']}/demote", params=PROJECT)
    assert error_of(r)[:2] == (400, "InvalidRequest")


async def test_promote_onto_a_taken_silo_name(api: Api) -> None:
    snap_id = await _snapshot_of(api, "vol-a")
    await _image(api, "img-a", snap_id, project=False)
    await _image(api, "img-a", snap_id)
    r = await api.http.post(f"{IMAGES}/img-a/promote", params=PROJECT)
    assert error_of(r) == (400, "ObjectAlreadyExists", 'already exists: image "img-a"')


async def test_images_count_against_the_quota(api: Api) -> None:
    snap_id = await _snapshot_of(api, "vol-a", 2 * GIB)
    before = (await api.http.get("/v1/utilization")).json()["provisioned"]["storage"]
    await _image(api, "img-a", snap_id)
    after = (await api.http.get("/v1/utilization")).json()["provisioned"]["storage"]
    assert after - before == 2 * GIB


async def test_image_create_needs_room_in_the_quota() -> None:
    async with serve(quota_gib=2) as api:
        snap_id = await _snapshot_of(api, "vol-a")
        r = await _image(api, "img-a", snap_id)
        assert error_of(r)[:2] == (507, "InsufficientCapacity")
        assert api.sim.contract_violations == []


async def test_image_list_pages(api: Api) -> None:
    snap_id = await _snapshot_of(api, "vol-a")
    for name in ("img-c", "img-a", "img-b"):
        await _image(api, name, snap_id)
    first = (await api.http.get(IMAGES, params={**PROJECT, "limit": "2"})).json()
    assert [i["name"] for i in first["items"]] == ["img-a", "img-b"]
    rest = await api.http.get(IMAGES, params={"page_token": first["next_page"]})
    assert [i["name"] for i in rest.json()["items"]] == ["img-c"]


async def test_requests_the_document_refuses_do_not_parse() -> None:
    async with serve(validate=False) as api:
        body: dict[str, object] = {"name": "img-a", "description": "", "os": "x", "version": "1"}
        r = await api.http.post(IMAGES, params=PROJECT, json=body)
        assert error_of(r) == (400, None, "unable to parse JSON body: missing field `source`")
        body["source"] = {"type": "url", "id": "5f0c6f84-7c3a-4d1e-9d2b-1f5a3c6e7b90"}
        r = await api.http.post(IMAGES, params=PROJECT, json=body)
        assert error_of(r) == (
            400,
            None,
            "unable to parse JSON body: source.type: unknown variant `url`",
        )
        r = await api.http.post(f"{IMAGES}/img-a/demote")  # the target project is required
        assert error_of(r) == (
            400,
            None,
            "unable to parse query parameters: missing field `project`",
        )
