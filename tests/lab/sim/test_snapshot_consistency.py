"""A snapshot of an attached, busy disk is one instant of its block device (crash-consistent).

On the loop backing, a writer process keeps writing to the attached disk while the simulator
snapshots it again and again; every snapshot must then hold a state the disk passed through:

- through ext4: the writer appends fsync'd lines ``0, 1, 2, ...`` to a counter file. Each
  snapshot is restored into a new disk and attached, its filesystem mounted (the journal replays,
  as after any crash) and unmounted: the counter file must hold whole lines ``0..n`` and nothing
  else (no NUL bytes, no gap), and ``e2fsck -fn`` must find nothing. A copy of the disk's file
  taken while the device writes (``cp``, as before) fails this: a file size from a later journal
  commit than the data, say.
- raw block: the writer writes a number ``n`` to the device's first block and then to a block
  64 MiB further (a filler between them), each write fdatasync'd, then ``n + 1``: in each
  snapshot the first block must hold the second's number or one more.

The root tests need loop devices, mkfs.ext4, e2fsck and mount (marked ``root``: skipped with the
reason elsewhere, a failure where root tests must run, as in CI). The guest backing pauses the
guest around the copy; that is checked without a guest.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from csi_oxide_lab.guest.vm import GuestVM, _Plugged
from csi_oxide_lab.sim.backing import LoopBacking
from csi_oxide_lab.sim.freeze import WriteHold
from csi_oxide_lab.sim.guest_backing import GuestBacking
from tests import skips
from tests.polling import wait_until
from tests.units import GIB

from .sim_helpers import Api, serve

SNAPSHOTS = 20
TOOLS = ("mkfs.ext4", "e2fsck", "mount", "umount")
BLOCK = 4096
RAW_SECOND = 64 << 20  # where the raw writer's second copy of its number goes

# Appends "<n>\n" (padded to 100 bytes, so that the file takes a new block every few dozen lines)
# to the file named by argv[1], fsync after each line, until killed; says "ready" once the first
# line is on the disk.
FS_WRITER = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
while True:
    os.write(fd, b"%099d\n" % n)
    os.fsync(fd)
    if n == 0:
        print("ready", flush=True)
    n += 1
"""

# Fills the first 64 MiB of the device named by argv[1] with 0xff bytes, then writes "<n>" (a
# block) at offset 0, fdatasync, the same at 64 MiB, fdatasync, n + 1, ..., until killed, with
# O_DIRECT; "ready" once n = 0 is in both places. The first place always holds the second's
# number or one more; a copy that reads the first place before the filler and the second after
# it, while the writer goes on, can find the second ahead.
RAW_WRITER = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
fill = mmap.mmap(-1, 1 << 20)
fill[:] = b"\xff" * (1 << 20)
for offset in range(0, 64 << 20, 1 << 20):
    os.pwrite(fd, fill, offset)
buf = mmap.mmap(-1, 4096)
n = 0
while True:
    buf[:] = (b"%d" % n).ljust(4096, b"\0")
    os.pwrite(fd, buf, 0)
    os.fdatasync(fd)
    os.pwrite(fd, buf, 64 << 20)
    os.fdatasync(fd)
    if n == 0:
        print("ready", flush=True)
    n += 1
"""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)


def _must(*argv: str) -> None:
    done = _run(*argv)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"


def _need_tools() -> None:
    skips.need_tools(*TOOLS, install="Debian e2fsprogs, mount")


def _start_writer(program: str, target: str) -> subprocess.Popen[str]:
    """A writer running ``program`` on ``target``, once its first write is on the disk."""
    writer = subprocess.Popen(
        [sys.executable, "-c", program, target], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    return writer


def _stop(writer: subprocess.Popen[str]) -> None:
    writer.kill()
    writer.wait()
    if writer.stdout is not None:
        writer.stdout.close()


async def _snapshot_while_written(api: Api, disk: str, writer: subprocess.Popen[str]) -> None:
    """Take ``SNAPSHOTS`` snapshots ``snap-<i>`` of ``disk`` while ``writer`` writes it."""
    for i in range(SNAPSHOTS):
        await asyncio.sleep(0.05 + 0.01 * (i % 5))
        r = await api.snapshot(f"snap-{i}", disk)
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "ready"
    assert writer.poll() is None, "the writer stopped while the snapshots were taken"


def _counter_fault(data: bytes) -> str | None:
    """Why ``data`` is not lines ``0, 1, ..., n`` as the writer wrote them (None: it is)."""
    if not data:
        return "the counter file is empty"
    nul = data.find(b"\0")
    if nul >= 0:
        return f"NUL bytes from offset {nul} of {len(data)}"
    if not data.endswith(b"\n"):
        return f"a partial last line ({len(data)} bytes)"
    for i, line in enumerate(data.split(b"\n")[:-1]):
        if line != b"%099d" % i:
            return f"line {i} is {line[:40]!r}..."
    return None


def _counter_block(image: Path, offset: int) -> int | None:
    """The number the raw writer left in the block at ``offset`` (None: not one of its)."""
    with image.open("rb") as f:
        f.seek(offset)
        number, _, padding = f.read(BLOCK).partition(b"\0")
    return int(number) if number.isdigit() and not padding.strip(b"\0") else None


def _pair_fault(image: Path) -> str | None:
    """Why ``image`` is not a state the raw writer passed through (None: it is)."""
    first, second = _counter_block(image, 0), _counter_block(image, RAW_SECOND)
    if first is None or second is None:
        return f"not the writer's blocks: {first!r}, {second!r}"
    if not 0 <= first - second <= 1:
        return f"the first place holds {first}, the second {second}"
    with image.open("rb") as f:
        f.seek(BLOCK)
        if f.read(RAW_SECOND - BLOCK) != b"\xff" * (RAW_SECOND - BLOCK):
            return "the filler is not all there"
    return None


async def _check_restore(api: Api, snapshot: str, restored: str, mnt: Path) -> str | None:
    """Restore ``snapshot`` into the disk ``restored``, mount, read, unmount, fsck, clean up;
    what is wrong with it (None: a clean prefix of the writer's lines)."""
    snap = await api.http.get(f"/v1/snapshots/{snapshot}", params={"project": "csi"})
    assert snap.status_code == 200, snap.text
    r = await api.create_disk(restored, GIB, snapshot_id=snap.json()["id"])
    assert r.status_code == 201, r.text
    assert (await api.attach(restored)).status_code == 202
    device = api.sim.device_path(restored)
    assert device is not None
    try:
        mnt.mkdir()
        _must("mount", "-t", "ext4", device, str(mnt))  # replays the journal, as after a crash
        try:
            fault = _counter_fault((mnt / "counter").read_bytes())
        finally:
            _must("umount", str(mnt))
        fsck = _run("e2fsck", "-fn", device)
        if fsck.returncode != 0:
            fault = (fault or "") + f" e2fsck -fn: {fsck.returncode}: {fsck.stdout.strip()[-300:]}"
        return fault
    finally:
        assert (await api.detach(restored)).status_code == 202
        r = await api.http.delete(f"/v1/disks/{restored}", params={"project": "csi"})
        assert r.status_code == 204, r.text


@pytest.mark.root
@pytest.mark.timeout(600)
async def test_snapshots_of_a_busy_filesystem_restore_a_clean_prefix(
    tmp_path: Path, sanity_report: Callable[[str], None]
) -> None:
    _need_tools()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    async with serve(backing="loop", state_dir=tmp_path / "state", hotplug=True) as api:
        assert (await api.create_disk("busy", GIB, block_size=4096)).status_code == 201
        assert (await api.attach("busy")).status_code == 202
        device = api.sim.device_path("busy")
        assert device is not None
        _must("mkfs.ext4", "-q", "-F", device)
        _must("mount", "-t", "ext4", device, str(mnt))
        try:
            writer = _start_writer(FS_WRITER, str(mnt / "counter"))
            try:
                await _snapshot_while_written(api, "busy", writer)
            finally:
                _stop(writer)
        finally:
            _must("umount", str(mnt))
        assert (await api.detach("busy")).status_code == 202
        faults = {}
        for i in range(SNAPSHOTS):
            fault = await _check_restore(api, f"snap-{i}", f"restored-{i}", tmp_path / f"r{i}")
            if fault is not None:
                faults[f"snap-{i}"] = fault
        sanity_report(
            f"snapshots of a busy ext4 volume (loop backing): {SNAPSHOTS - len(faults)} of "
            f"{SNAPSHOTS} restored clean"
        )
        assert faults == {}, f"{len(faults)} of {SNAPSHOTS} snapshots restored torn: {faults}"
        assert api.sim.contract_violations == []


@pytest.mark.root
@pytest.mark.timeout(300)
async def test_snapshots_of_a_busy_raw_device_hold_a_state_it_passed_through(
    tmp_path: Path, sanity_report: Callable[[str], None]
) -> None:
    state = tmp_path / "state"
    async with serve(backing="loop", state_dir=state, hotplug=True) as api:
        assert (await api.create_disk("raw", GIB, block_size=4096)).status_code == 201
        assert (await api.attach("raw")).status_code == 202
        device = api.sim.device_path("raw")
        assert device is not None
        writer = _start_writer(RAW_WRITER, device)
        try:
            await _snapshot_while_written(api, "raw", writer)
        finally:
            _stop(writer)
        faults = {}
        for i in range(SNAPSHOTS):
            fault = _pair_fault(state / "snapshots" / f"snap-{i}")
            if fault is not None:
                faults[f"snap-{i}"] = fault
        sanity_report(
            f"snapshots of a busy raw block volume (loop backing): {SNAPSHOTS - len(faults)} of "
            f"{SNAPSHOTS} a state it passed through"
        )
        assert faults == {}, f"{len(faults)} of {SNAPSHOTS} snapshots torn: {faults}"
        assert (await api.detach("raw")).status_code == 202


@pytest.mark.root
def test_a_write_hold_stops_every_write_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"Z" * (2 * BLOCK))
    done = threading.Event()

    def write() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"Q", 100)
        finally:
            os.close(fd)
        done.set()

    with WriteHold(path):
        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.3), "a write went through while the file was held"
        assert path.read_bytes()[:2] == b"ZZ"  # reads go on
    assert done.wait(10)
    writer.join()
    data = path.read_bytes()
    assert data[:100] == b"Z" * 100  # the hold's own write never landed
    assert data[100:101] == b"Q"


@pytest.mark.root
async def test_a_device_detached_while_open_is_still_one_the_snapshot_watches(
    tmp_path: Path,
) -> None:
    async with serve(backing="loop", state_dir=tmp_path / "state", hotplug=True) as api:
        await api.create_disk("vol-a", GIB)
        await api.attach("vol-a")
        device = api.sim.device_path("vol-a")
        assert device is not None
        backing = api.sim.backing
        assert isinstance(backing, LoopBacking)
        assert backing._loop_devices("vol-a") == [Path(device).name]
        holder = os.open(device, os.O_RDONLY)
        try:
            assert (await api.detach("vol-a")).status_code == 202  # lingers until closed
            assert backing._loop_devices("vol-a") == [Path(device).name]
            assert (await api.snapshot("snap-a", "vol-a")).status_code == 201
        finally:
            os.close(holder)
        # freed on its last close
        assert wait_until(lambda: backing._loop_devices("vol-a") == [], 10)


class _FakeQmp:
    """Records each command, and whether the snapshot's file existed when it came."""

    def __init__(self, log: list[str], snapshot_file: Path) -> None:
        self._log = log
        self._snapshot_file = snapshot_file

    def execute(self, command: str, arguments: object = None) -> None:
        self._log.append(f"{command} (snapshot there: {self._snapshot_file.exists()})")


def _vm_with(plugged: str, qmp: _FakeQmp, tmp_path: Path) -> GuestVM:
    """A guest never booted, whose QMP session is ``qmp`` and which has ``plugged``."""
    vm = GuestVM(workdir=tmp_path, instance_id="i", boot_disk=tmp_path / "b", boot_serial="b")
    vm._qmp = qmp  # type: ignore[assignment]
    vm._plugged[plugged] = _Plugged("nvme-1", "blk-1", "hp1")
    return vm


def test_the_guest_is_paused_around_the_copy_of_a_disk_it_has(tmp_path: Path) -> None:
    backing = GuestBacking(tmp_path / "rack")
    try:
        for disk in ("plugged", "boot", "detached"):
            backing.create_disk(disk, 1024 * 1024, 512)
        backing._boot_disk = "boot"
        log: list[str] = []
        for disk in ("plugged", "boot", "detached"):
            qmp = _FakeQmp(log, backing.snapshot_dir / f"snap-{disk}")
            backing.vm = _vm_with("plugged", qmp, tmp_path)
            backing.snapshot(disk, f"snap-{disk}")
            assert (backing.snapshot_dir / f"snap-{disk}").exists()
        assert log == [
            "stop (snapshot there: False)",
            "cont (snapshot there: True)",
            "stop (snapshot there: False)",
            "cont (snapshot there: True)",
        ]  # nothing for the disk the guest does not have
    finally:
        backing.vm = None
        backing.close()
