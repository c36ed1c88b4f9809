"""Snapshots, disks made from them, the storage quota and utilization in the simulator."""

from __future__ import annotations

from tests.units import GIB

from .sim_helpers import Api, error_of, serve


async def test_snapshot_is_ready_at_once_with_the_disk_size(api: Api) -> None:
    disk = (await api.create_disk("vol-a", 3 * GIB, block_size=512)).json()
    r = await api.snapshot("snap-a", "vol-a")
    assert r.status_code == 201
    snap = r.json()
    assert (snap["state"], snap["size"], snap["disk_id"]) == ("ready", 3 * GIB, disk["id"])
    r = await api.http.get(f"/v1/snapshots/{snap['id']}")
    assert r.json()["name"] == "snap-a"
    r = await api.http.get("/v1/snapshots/snap-a", params={"project": "csi"})
    assert r.json()["id"] == snap["id"]


async def test_restore_larger_inherits_block_size_and_content(api: Api) -> None:
    await api.create_disk("vol-a", 2 * GIB, block_size=2048)
    api.sim.write_content("vol-a", b"precious")
    snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
    api.sim.write_content("vol-a", b"changed")
    r = await api.create_disk("vol-b", 5 * GIB, snapshot_id=snap_id)
    assert r.status_code == 201
    restored = await api.disk("vol-b")
    assert (restored["block_size"], restored["size"]) == (2048, 5 * GIB)
    assert restored["snapshot_id"] == snap_id
    assert api.sim.read_content("vol-b") == b"precious"
    assert api.sim.read_content("vol-a") == b"changed"


async def test_restore_smaller_than_snapshot_is_refused(api: Api) -> None:
    await api.create_disk("vol-a", 2 * GIB)
    snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
    status, code, message = error_of(await api.create_disk("vol-b", GIB, snapshot_id=snap_id))
    assert (status, code) == (400, "InvalidValue")
    assert message.startswith('unsupported value for "size"')


async def test_restore_from_missing_snapshot(api: Api) -> None:
    ghost = "5f0c6f84-7c3a-4d1e-9d2b-1f5a3c6e7b90"
    r = await api.create_disk("vol-b", GIB, snapshot_id=ghost)
    assert error_of(r) == (404, "ObjectNotFound", f'not found: snapshot with id "{ghost}"')


async def test_snapshot_name_conflict_and_missing_disk(api: Api) -> None:
    await api.create_disk("vol-a")
    await api.snapshot("snap-a", "vol-a")
    r = await api.snapshot("snap-a", "vol-a")
    assert error_of(r) == (400, "ObjectAlreadyExists", 'already exists: snapshot "snap-a"')
    r = await api.snapshot("snap-b", "ghost")
    assert error_of(r) == (404, "ObjectNotFound", 'not found: disk with name "ghost"')


async def test_snapshot_of_attached_disk_on_running_instance(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    await hot_api.attach("vol-a")
    assert (await hot_api.snapshot("snap-a", "vol-a")).status_code == 201


async def test_snapshot_in_other_disk_states_is_503(api: Api) -> None:
    await api.create_disk("vol-a")
    for state in ("maintenance", "faulted", "import_ready"):
        api.sim.set_disk_state("vol-a", state)
        r = await api.snapshot("snap-a", "vol-a")
        assert error_of(r) == (503, "ServiceNotAvailable", "Service Unavailable")
    api.sim.set_disk_state("vol-a", "finalizing")
    assert (await api.snapshot("snap-a", "vol-a")).status_code == 201


async def test_snapshot_delete_and_independence(api: Api) -> None:
    await api.create_disk("vol-a")
    snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
    await api.create_disk("vol-b", GIB, snapshot_id=snap_id)
    assert (await api.http.delete("/v1/disks/vol-a", params={"project": "csi"})).status_code == 204
    r = await api.http.delete(f"/v1/snapshots/{snap_id}")
    assert r.status_code == 204
    assert api.sim.snapshot_names() == []
    assert api.sim.disk_names() == ["vol-b"]
    r = await api.http.delete(f"/v1/snapshots/{snap_id}")
    assert error_of(r)[:2] == (404, "ObjectNotFound")


async def test_quota_counts_disks_and_snapshots() -> None:
    async with serve(quota_gib=4) as api:
        assert (await api.create_disk("vol-a", 2 * GIB)).status_code == 201
        assert (await api.snapshot("snap-a", "vol-a")).status_code == 201
        status, code, message = error_of(await api.create_disk("vol-b", GIB))
        assert (status, code) == (507, "InsufficientCapacity")
        assert message.startswith("Insufficient capacity: Storage Limit Exceeded: ")
        status, code, _ = error_of(await api.snapshot("snap-b", "vol-a"))
        assert (status, code) == (507, "InsufficientCapacity")
        r = await api.http.get("/v1/utilization")
        assert r.json()["capacity"]["storage"] == 4 * GIB
        assert r.json()["provisioned"]["storage"] == 4 * GIB
        await api.http.delete("/v1/snapshots/snap-a", params={"project": "csi"})
        assert (await api.create_disk("vol-b", 2 * GIB)).status_code == 201
        assert api.sim.contract_violations == []


async def test_utilization_counts_running_instances(api: Api) -> None:
    body = (await api.http.get("/v1/utilization")).json()
    assert body["provisioned"]["cpus"] == 8  # two running instances of 4 vCPUs
    assert body["capacity"]["storage"] == 10240 * GIB
    await api.http.post(f"/v1/instances/{api.node}/stop")
    body = (await api.http.get("/v1/utilization")).json()
    assert body["provisioned"]["cpus"] == 4
    assert body["provisioned"]["memory"] == 16 * GIB


async def test_snapshot_list_pages_by_name(api: Api) -> None:
    await api.create_disk("vol-a")
    for name in ("snap-c", "snap-a", "snap-b"):
        await api.snapshot(name, "vol-a")
    r = await api.http.get(
        "/v1/snapshots", params={"project": "csi", "sort_by": "name_descending", "limit": 2}
    )
    body = r.json()
    assert [s["name"] for s in body["items"]] == ["snap-c", "snap-b"]
    r = await api.http.get("/v1/snapshots", params={"page_token": body["next_page"]})
    assert [s["name"] for s in r.json()["items"]] == ["snap-a"]
