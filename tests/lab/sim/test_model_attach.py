"""Attach, detach and instance start/stop in the simulator, with hot-plug off and on."""

from __future__ import annotations

from .sim_helpers import Api, error_of, serve


async def test_hotplug_off_refuses_attach_to_running_instance(api: Api) -> None:
    await api.create_disk("vol-a")
    r = await api.attach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "cannot attach disk: instance is not fully stopped",
    )
    assert (await api.disk("vol-a"))["state"] == {"state": "detached"}


async def test_hotplug_off_attach_and_detach_while_stopped(api: Api) -> None:
    await api.create_disk("vol-a")
    r = await api.http.post(f"/v1/instances/{api.node}/stop")
    assert r.status_code == 202
    assert r.json()["run_state"] == "stopping"
    assert await api.run_state() == "stopped"
    r = await api.attach("vol-a")
    assert r.status_code == 202
    assert r.json()["state"] == {"state": "attached", "instance": api.node}
    r = await api.http.post(f"/v1/instances/{api.node}/start")
    assert r.status_code == 202
    assert r.json()["run_state"] == "starting"
    assert await api.run_state() == "running"
    r = await api.detach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "cannot detach disk: instance is not fully stopped",
    )
    await api.http.post(f"/v1/instances/{api.node}/stop")
    r = await api.detach("vol-a")
    assert r.status_code == 202
    assert r.json()["state"] == {"state": "detached"}


async def test_stop_and_start_are_idempotent(api: Api) -> None:
    await api.http.post(f"/v1/instances/{api.node}/stop")
    r = await api.http.post(f"/v1/instances/{api.node}/stop")
    assert (r.status_code, r.json()["run_state"]) == (202, "stopped")
    await api.http.post(f"/v1/instances/{api.node}/start")
    r = await api.http.post(f"/v1/instances/{api.node}/start")
    assert (r.status_code, r.json()["run_state"]) == (202, "running")


async def test_instance_in_failed_state(api: Api) -> None:
    await api.create_disk("vol-a")
    api.sim.set_run_state(api.node, "failed")
    r = await api.attach("vol-a")
    assert error_of(r) == (400, "InvalidRequest", "cannot attach disk to instance in failed state")


async def test_hotplug_on_attaches_to_running_instance(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    r = await hot_api.attach("vol-a")
    assert r.status_code == 202
    assert r.json()["state"] == {"state": "attached", "instance": hot_api.node}
    assert await hot_api.run_state() == "running"
    r = await hot_api.detach("vol-a")
    assert r.json()["state"] == {"state": "detached"}


async def test_hotplug_on_still_refuses_a_starting_instance(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    hot_api.sim.set_run_state(hot_api.node, "starting")
    r = await hot_api.attach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "cannot attach disk: instance is not fully stopped",
    )


async def test_attach_is_idempotent_and_exclusive(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    first = await hot_api.attach("vol-a")
    again = await hot_api.attach("vol-a")
    assert again.status_code == 202
    assert again.json()["state"] == first.json()["state"]
    other = hot_api.sim.instance_ids[1]
    r = await hot_api.attach("vol-a", other)
    assert error_of(r) == (
        400,
        "InvalidRequest",
        'cannot attach disk "vol-a": disk is attached to another instance',
    )
    r = await hot_api.detach("vol-a", other)
    assert error_of(r)[:2] == (400, "InvalidRequest")


async def test_detach_is_idempotent(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    r = await hot_api.detach("vol-a")
    assert r.status_code == 202
    assert r.json()["state"] == {"state": "detached"}


async def test_attach_by_disk_id_and_instance_by_name(hot_api: Api) -> None:
    disk_id = (await hot_api.create_disk("vol-a")).json()["id"]
    r = await hot_api.http.post(
        "/v1/instances/sim-node-1/disks/attach", params={"project": "csi"}, json={"disk": disk_id}
    )
    assert r.status_code == 202
    assert r.json()["state"]["instance"] == hot_api.sim.instance_ids[1]


async def test_thirteenth_disk_is_refused(hot_api: Api) -> None:
    for i in range(12):
        await hot_api.create_disk(f"vol-{i}")
        assert (await hot_api.attach(f"vol-{i}")).status_code == 202
    await hot_api.create_disk("vol-12")
    r = await hot_api.attach("vol-12")
    assert error_of(r) == (400, "InvalidRequest", "cannot attach more than 12 disks to instance")
    assert (await hot_api.disk("vol-12"))["state"] == {"state": "detached"}
    r = await hot_api.http.get(f"/v1/instances/{hot_api.node}/disks", params={"limit": 5})
    assert [d["name"] for d in r.json()["items"]] == sorted(f"vol-{i}" for i in range(12))[:5]


async def test_attach_refused_in_a_disk_state_that_forbids_it(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    hot_api.sim.set_disk_state("vol-a", "maintenance")
    r = await hot_api.attach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        'cannot attach disk "vol-a": invalid state maintenance',
    )


async def test_instance_disk_list_pages(hot_api: Api) -> None:
    for i in range(3):
        await hot_api.create_disk(f"vol-{i}")
        await hot_api.attach(f"vol-{i}")
    await hot_api.create_disk("loose")
    names: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        r = await hot_api.http.get(f"/v1/instances/{hot_api.node}/disks", params=params)
        body = r.json()
        names += [d["name"] for d in body["items"]]
        if body["next_page"] is None:
            assert body["items"] == []
            break
        params = {"page_token": body["next_page"]}
    assert names == ["vol-0", "vol-1", "vol-2"]


async def test_instances_list_and_view(api: Api) -> None:
    r = await api.http.get("/v1/instances", params={"project": "csi"})
    items = r.json()["items"]
    assert [i["id"] for i in items] == api.sim.instance_ids
    assert all(i["run_state"] == "running" and i["boot_disk_id"] is None for i in items)
    r = await api.http.get("/v1/instances/sim-node-0", params={"project": "csi"})
    assert r.json()["id"] == api.node


async def test_extra_instances_count() -> None:
    async with serve(instances=3) as api:
        assert len(api.sim.instance_ids) == 4
        assert api.sim.instance_ids[0] == api.sim.local_instance_id
        assert api.sim.contract_violations == []


async def test_attach_to_the_instance_a_disk_is_detaching_from(hot_api: Api) -> None:
    # omicron's instance_attach_disk answers every attaching/attached/detaching disk that is not
    # attached or attaching to THIS instance with "attached to another instance", including a disk
    # detaching from this very instance (the message names the disk's state, not the instance).
    await hot_api.create_disk("vol-a")
    assert (await hot_api.attach("vol-a")).status_code == 202
    hot_api.sim.set_disk_state("vol-a", "detaching")
    r = await hot_api.attach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        'cannot attach disk "vol-a": disk is attached to another instance',
    )
    r = await hot_api.detach("vol-a")  # a detach already under way: nothing to do
    assert r.status_code == 202
    assert r.json()["state"] == {"state": "detaching", "instance": hot_api.node}


async def test_detach_while_attaching_to_the_same_instance(hot_api: Api) -> None:
    await hot_api.create_disk("vol-a")
    assert (await hot_api.attach("vol-a")).status_code == 202
    hot_api.sim.set_disk_state("vol-a", "attaching")
    r = await hot_api.detach("vol-a")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        'cannot detach disk "vol-a": disk is currently being attached',
    )
    r = await hot_api.attach("vol-a")  # an attach already under way: nothing to do
    assert r.status_code == 202
    r = await hot_api.detach("vol-a", hot_api.sim.instance_ids[1])
    assert error_of(r) == (
        400,
        "InvalidRequest",
        'cannot detach disk "vol-a": disk is attached to another instance',
    )


async def test_the_instance_state_is_judged_before_the_boot_disk(api: Api) -> None:
    await api.create_disk("vol-boot")
    api.sim.set_run_state(api.node, "stopped")
    assert (await api.attach("vol-boot")).status_code == 202
    disk_id = (await api.disk("vol-boot"))["id"]
    api.sim._state.instances[api.node].boot_disk_id = str(disk_id)
    api.sim.set_run_state(api.node, "running")
    r = await api.detach("vol-boot")
    assert error_of(r) == (
        400,
        "InvalidRequest",
        "cannot detach disk: instance is not fully stopped",
    )
    api.sim.set_run_state(api.node, "stopped")
    assert error_of(await api.detach("vol-boot")) == (
        409,
        "Conflict",
        "boot disk cannot be detached",
    )
    api.sim.set_run_state(api.node, "failed")
    assert error_of(await api.detach("vol-boot")) == (
        400,
        "InvalidRequest",
        "cannot detach disk from instance in failed state",
    )
    assert (await api.disk("vol-boot"))["state"] == {"state": "attached", "instance": api.node}
