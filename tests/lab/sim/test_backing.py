"""The loop backing: sparse files, snapshots as sparse copies, loop devices for the local instance.

Needs root and /dev/loop-control (marked ``root``; skipped with the reason otherwise)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.oxide_bodies import (
    disk_create_body,
    image_create_body,
    image_source,
    snapshot_source,
)
from tests.units import GIB

from .sim_helpers import serve

pytestmark = [
    pytest.mark.root,
]


def _loop_attr(device: str, attr: str) -> str:
    name = Path(device).name
    return (Path("/sys/block") / name / attr).read_text().strip()


def _exists(path: str | Path) -> bool:
    return Path(path).exists()


def _unbound(device: str) -> bool:
    """True once the loop device has no backing file any more."""
    return not _exists(f"/sys/block/{Path(device).name}/loop/backing_file")


def _write_device(device: str, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        os.write(fd, data.ljust(4096, b"\0"))
        os.fsync(fd)
    finally:
        os.close(fd)


async def test_loop_backing_lifecycle(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with serve(backing="loop", state_dir=state, hotplug=True, instances=1) as api:
        assert (await api.create_disk("vol-a", GIB, block_size=512)).status_code == 201
        backing_file = state / "devices" / "vol-a"
        assert backing_file.stat().st_size == GIB
        assert backing_file.stat().st_blocks == 0  # sparse
        assert (await api.attach("vol-a")).status_code == 202
        device = api.sim.device_path("vol-a")
        assert device is not None
        assert _exists(device)
        assert _loop_attr(device, "loop/backing_file") == str(backing_file)
        assert _loop_attr(device, "queue/logical_block_size") == "512"
        assert _loop_attr(device, "loop/dio") == "1"  # no host page cache, as on a rack
        _write_device(device, b"written by the guest")
        assert (await api.snapshot("snap-a", "vol-a")).status_code == 201
        assert (await api.detach("vol-a")).status_code == 202
        assert api.sim.device_path("vol-a") is None
        assert _unbound(device)
        snap_id = (await api.http.get("/v1/snapshots/snap-a", params={"project": "csi"})).json()[
            "id"
        ]
        assert (await api.create_disk("vol-b", 3 * GIB, snapshot_id=snap_id)).status_code == 201
        assert (state / "devices" / "vol-b").stat().st_size == 3 * GIB
        assert api.sim.read_content("vol-b") == b"written by the guest"
        other = api.sim.instance_ids[1]
        assert (await api.attach("vol-b", other)).status_code == 202
        assert api.sim.device_path("vol-b") is None  # only the local instance gets devices
        assert (
            await api.http.delete("/v1/disks/vol-a", params={"project": "csi"})
        ).status_code == 204
        assert not _exists(backing_file)
        assert api.sim.contract_violations == []
    assert _exists(state)  # the caller's state dir is kept


async def test_busy_device_is_released_and_temp_dir_removed() -> None:
    async with serve(backing="loop", hotplug=True) as api:
        await api.create_disk("vol-a", GIB, block_size=4096)
        await api.attach("vol-a")
        device = api.sim.device_path("vol-a")
        assert device is not None
        assert _loop_attr(device, "queue/logical_block_size") == "4096"
        holder = os.open(device, os.O_RDONLY)
        try:
            assert (await api.detach("vol-a")).status_code == 202  # busy: autoclear is set
            assert _loop_attr(device, "loop/autoclear") == "1"
        finally:
            os.close(holder)
        assert (await api.attach("vol-a")).status_code == 202
        state_dir = api.sim.backing.state_dir  # type: ignore[attr-defined]
        again = api.sim.device_path("vol-a")
    assert again is not None
    assert _unbound(again)
    assert not _exists(state_dir)


async def test_a_read_runs_on_the_event_loop_but_never_blocks_it_on_the_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a backing that does I/O, a GET skips the worker thread when the simulator's lock is
    free; when the lock is held (as during a slow losetup) it waits for it in a thread, so the
    event loop keeps serving, and answers once the lock is released."""
    async with serve(backing="loop", hotplug=True) as api:
        assert (await api.create_disk("vol-a", GIB)).status_code == 201
        hops: list[object] = []
        hopped = asyncio.Event()
        original = asyncio.to_thread

        async def counting(fn: object, /, *args: object) -> object:
            hops.append(fn)
            hopped.set()
            return await original(fn, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(asyncio, "to_thread", counting)
        assert (await api.disk("vol-a"))["name"] == "vol-a"
        assert hops == []  # the lock was free: no thread
        lock = api.sim._lock
        lock.acquire()
        try:
            view = asyncio.ensure_future(api.disk("vol-a"))
            # The read went to a thread to wait for the lock, and the event loop still runs
            # other work (this test) meanwhile.
            await asyncio.wait_for(hopped.wait(), 30)
            assert not view.done()
        finally:
            lock.release()
        assert (await asyncio.wait_for(view, 30))["name"] == "vol-a"
        assert len(hops) == 1  # it waited for the lock in a worker thread
        assert (await api.create_disk("vol-b", GIB)).status_code == 201
        assert len(hops) == 2  # a mutation always goes through a thread (it does I/O)


async def test_read_only_disk_is_a_read_only_loop_device(tmp_path: Path) -> None:
    async with serve(backing="loop", state_dir=tmp_path / "state", hotplug=True) as api:
        await api.create_disk("vol-a", GIB)
        api.sim.write_content("vol-a", b"golden")
        snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
        body = disk_create_body("vol-ro", GIB, snapshot_source(snap_id, read_only=True))
        assert (await api.http.post("/v1/disks", params={"project": "csi"}, json=body)).is_success
        assert (await api.attach("vol-ro")).status_code == 202
        device = api.sim.device_path("vol-ro")
        assert device is not None
        try:
            assert _loop_attr(device, "ro") == "1"
            with pytest.raises(PermissionError):  # EPERM: the kernel refuses the write
                _write_device(device, b"overwritten")
            assert api.sim.read_content("vol-ro") == b"golden"
        finally:
            assert (await api.detach("vol-ro")).status_code == 202
        assert api.sim.contract_violations == []


async def test_image_is_a_sparse_copy_that_outlives_its_snapshot(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with serve(backing="loop", state_dir=state) as api:
        await api.create_disk("vol-a", GIB)
        api.sim.write_content("vol-a", b"golden")
        snap_id = (await api.snapshot("snap-a", "vol-a")).json()["id"]
        body = image_create_body("img-a", snap_id, os="linux", version="1")
        image = (await api.http.post("/v1/images", params={"project": "csi"}, json=body)).json()
        assert (state / "images" / image["id"]).stat().st_blocks < GIB // 512  # sparse
        assert (await api.http.delete(f"/v1/snapshots/{snap_id}")).status_code == 204
        body = disk_create_body("vol-b", 2 * GIB, image_source(image["id"]))
        assert (await api.http.post("/v1/disks", params={"project": "csi"}, json=body)).is_success
        assert api.sim.read_content("vol-b") == b"golden"
        assert (state / "devices" / "vol-b").stat().st_size == 2 * GIB
        assert (await api.http.delete(f"/v1/images/{image['id']}")).status_code == 204
        assert not (state / "images" / image["id"]).exists()
        assert api.sim.contract_violations == []
