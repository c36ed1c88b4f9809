"""Issue 24's findings 4 and 5 on real loop devices, through the Node service over gRPC (root).

4. Mount options that put a new loop device over the volume (``offset=0``, a ``loop`` hidden
   behind a comma) are INVALID_ARGUMENT, and no loop device is made; ordinary options still work.
5. A read-only raw block publish cannot be written through its target: the volume keeps its
   data, a read-write publish of it elsewhere stays writable, and unpublish leaves no loop device
   behind, also after a crash between making the read-only view and recording it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.contract.mount_options import (
    EXT3,
    EXT3_VALUES,
    EXT4,
    EXT4_VALUES,
    GENERIC,
    XFS,
    XFS_VALUES,
)
from csi_oxide.daemon.health import Health
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import InvalidArgumentError
from csi_oxide.node import fs, mountinfo
from csi_oxide.node.devices import BlockDevice, UdevDeviceFinder
from csi_oxide.node.exec import CommandFailedError
from csi_oxide.node.fs import LinuxFilesystems
from csi_oxide.node.mount import LinuxMounter
from csi_oxide.node.ops import NodeOps
from csi_oxide.node.state import FileRecordStore
from csi_oxide.node.views import LoopViews
from csi_oxide.server import parse
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.node import NodeService
from csi_oxide.wiring import build_node_ops
from csi_oxide_lab.harness import unmount_below
from tests import skips
from tests.loops import DELETED, attach, detach_if_ours
from tests.node.world import VOLUME, Rack, digest
from tests.units import MIB

pytestmark = pytest.mark.root

NODE_ID = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
SIZE = 64 * MIB
Mode = csi.VolumeCapability.AccessMode
OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Node:
    """The node plugin's gRPC service over a rack of loop devices in ``rack.root``."""

    rack: Rack
    stub: csi_grpc.NodeAsyncStub

    def loops(self) -> set[str]:
        """Loop devices over anything of this test: its backing files, the loop devices that
        stand in for its disks, files below its directory (the node's own, included)."""
        return set(self.loop_backings())

    def loop_backings(self) -> dict[str, str]:
        """``loops`` with the backing path of each, as the kernel shows it."""
        root = f"{self.rack.root}/"
        return {
            loop: back
            for loop, back in _loop_backings().items()
            if back.startswith(root) or back in self.rack.loops
        }

    async def stage(self, staging: str, *flags: str, block: bool = False) -> grpc.StatusCode:
        request = csi.NodeStageVolumeRequest(
            volume_id=VOLUME, staging_target_path=staging, volume_capability=_cap(flags, block)
        )
        return await _code(self.stub.NodeStageVolume(request))

    async def unstage(self, staging: str) -> grpc.StatusCode:
        request = csi.NodeUnstageVolumeRequest(volume_id=VOLUME, staging_target_path=staging)
        return await _code(self.stub.NodeUnstageVolume(request))

    async def publish(
        self, staging: str, target: str, *flags: str, block: bool = False, readonly: bool = False
    ) -> grpc.StatusCode:
        request = csi.NodePublishVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=staging,
            target_path=target,
            volume_capability=_cap(flags, block),
            readonly=readonly,
        )
        return await _code(self.stub.NodePublishVolume(request))

    async def unpublish(self, target: str) -> grpc.StatusCode:
        request = csi.NodeUnpublishVolumeRequest(volume_id=VOLUME, target_path=target)
        return await _code(self.stub.NodeUnpublishVolume(request))


def _cap(flags: tuple[str, ...], block: bool, fstype: str = "ext4") -> csi.VolumeCapability:
    mode = Mode(mode=Mode.SINGLE_NODE_WRITER)
    if block:
        return csi.VolumeCapability(block=csi.VolumeCapability.BlockVolume(), access_mode=mode)
    mount = csi.VolumeCapability.MountVolume(fs_type=fstype, mount_flags=list(flags))
    return csi.VolumeCapability(mount=mount, access_mode=mode)


async def _code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


def _loop_backings() -> dict[str, str]:
    """Every attached loop device and its backing path, as the kernel shows them."""
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found["/dev/" + backing.parent.parent.name] = backing.read_text().strip()
        except OSError:
            continue
    return found


def _mounts_at(path: str) -> list[mountinfo.Mount]:
    real = os.path.realpath(path)
    return [m for m in mountinfo.read() if m.mount_point == real]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    devices = tmp_path / "devices"
    devices.mkdir()
    rack = Rack(tmp_path, devices)
    ops = build_node_ops(sim_device_dir=devices, device_timeout=3.0, state_dir=tmp_path / "state")
    sockets = tempfile.mkdtemp(prefix="csi-oxide-")  # a unix socket path must stay short
    endpoint = f"unix://{sockets}/csi.sock"
    server = CsiServer(
        endpoint,
        Services(identity=IdentityService(Health()), node=NodeService(node_id=NODE_ID, ops=ops)),
    )
    await server.start()
    channel = grpc.aio.insecure_channel(endpoint)
    node = Node(rack, csi_grpc.NodeStub(channel))
    try:
        yield node
    finally:
        await channel.close()
        await server.stop(grace=1)
        _release(node)
        shutil.rmtree(sockets, ignore_errors=True)


def _release(node: Node) -> None:
    """Unmount what a failed test left below its directory and detach its loop devices."""
    unmount_below(node.rack.root)
    for dev, back in sorted(node.loop_backings().items()):  # each only while over what it was
        with contextlib.suppress(OSError):
            detach_if_ours(dev, back.removesuffix(DELETED))
    node.rack.loops.detach()


# ---- finding 4 ----

ESCAPES = [
    ["offset=0"],
    ["noatime,loop"],
    ["noatime, loop"],
    ["sizelimit=1073741824"],
    ["loop=/dev/loop0"],
    ["noatime", "X-mount.subdir=lost+found"],
]


@pytest.mark.parametrize("flags", ESCAPES, ids=lambda flags: "|".join(flags))
async def test_stage_with_an_option_that_changes_the_source_is_refused(
    node: Node, flags: list[str]
) -> None:
    dev = node.rack.attach(node.rack.disk(VOLUME, SIZE))
    staging, _ = node.rack.paths()
    before = node.loops()
    assert await node.stage(staging, *flags) == INVALID
    assert node.loops() == before and not _mounts_at(staging)
    # Ordinary options, one to a flag or several behind commas, still stage the volume itself.
    assert await node.stage(staging, "noatime,nodiscard", "data=ordered") == OK
    (top,) = _mounts_at(staging)
    assert top.source == dev and "noatime" in top.options
    assert node.loops() == before
    assert await node.unstage(staging) == OK
    assert not _mounts_at(staging) and node.loops() == before


@pytest.mark.parametrize("flags", ESCAPES, ids=lambda flags: "|".join(flags))
async def test_publish_with_an_option_that_changes_the_source_is_refused(
    node: Node, flags: list[str]
) -> None:
    node.rack.attach(node.rack.disk(VOLUME, SIZE))
    staging, target = node.rack.paths()
    assert await node.stage(staging) == OK
    before = node.loops()
    assert await node.publish(staging, target, *flags) == INVALID
    assert node.loops() == before and not _mounts_at(target)
    assert await node.publish(staging, target, "noatime", "nosuid,nodev") == OK
    (top,) = _mounts_at(target)
    assert {"noatime", "nosuid", "nodev"} <= set(top.options)
    assert await node.unpublish(target) == OK
    assert await node.unstage(staging) == OK


# ---- finding 5 ----


def _write(path: str, offset: int, data: bytes, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | flags)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def test_a_read_only_block_publish_cannot_be_written_through(node: Node) -> None:
    dev = node.rack.attach(node.rack.disk(VOLUME, SIZE))
    with open(dev, "r+b") as f:
        f.write(os.urandom(SIZE))
    before = digest(dev)
    staging, ro_target = node.rack.paths("ro")
    _, rw_target = node.rack.paths("rw")
    loops = node.loops()
    assert await node.stage(staging, block=True) == OK
    assert await node.publish(staging, ro_target, block=True, readonly=True) == OK
    assert await node.publish(staging, rw_target, block=True) == OK
    assert await node.publish(staging, ro_target, block=True, readonly=True) == OK  # idempotent
    page = os.urandom(4096)
    for flags in (0, os.O_DIRECT):
        with pytest.raises(OSError, match=r"not permitted|Read-only|denied") as refused:
            _write(ro_target, 0, page, flags)
        assert refused.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    assert digest(dev) == before
    assert _read(ro_target, 0, SIZE) == _read(dev, 0, SIZE)
    # The kubelet holds a block target with a loop device of its own, attached read-write: the
    # view under it still refuses every write (the kubelet's loop device reports EIO).
    held = attach(ro_target)
    try:
        with pytest.raises(OSError, match=r"not permitted|Read-only|denied|Input/output"):
            _write(held, 0, page)
    finally:
        assert detach_if_ours(held, ro_target)
    assert digest(dev) == before
    stats = await node.stub.NodeGetVolumeStats(
        csi.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path=ro_target)
    )
    assert stats.usage[0].total == SIZE and not stats.volume_condition.abnormal
    _write(rw_target, 8192, page)  # the read-write publish of the same volume still writes
    assert _read(dev, 8192, 4096) == page
    assert await node.unpublish(ro_target) == OK
    assert not Path(ro_target).exists()
    assert node.loops() == loops  # the read-only view is gone with its publish
    assert await node.unpublish(rw_target) == OK
    assert await node.unstage(staging) == OK
    assert node.loops() == loops


class DiesOnceTheViewExists(LoopViews):
    """The real view, then what a kill -9 of the plugin at that moment leaves: a loop device
    that no record names yet (only its anchor is recorded)."""

    async def open(self, anchor: str, device: BlockDevice) -> str:
        await super().open(anchor, device)
        raise OSError("killed once the view existed")


def _ops(rack: Rack, store: FileRecordStore, views: LoopViews) -> NodeOps:
    devices = UdevDeviceFinder(sim_device_dir=rack.devices, timeout=3.0)
    return NodeOps(
        devices, LinuxMounter(), LinuxFilesystems(), store, views=views, inflight=InFlight()
    )


async def _publish_read_only(ops: NodeOps, staging: str, target: str) -> None:
    await ops.publish(
        VOLUME, staging, target, block=True, read_only=True, mount_flags=[], single_writer=False
    )


@pytest.mark.parametrize("then", ["unpublish", "publish again"])
async def test_a_crash_between_making_the_view_and_recording_it_leaks_nothing(
    node: Node, then: str
) -> None:
    node.rack.attach(node.rack.disk(VOLUME, SIZE))
    staging, target = node.rack.paths()
    state = node.rack.root / "crash-state"
    loops = node.loops()
    store = FileRecordStore(state)
    dying = _ops(node.rack, store, DiesOnceTheViewExists(state / "views"))
    await dying.stage(VOLUME, staging, fstype="", mount_flags=[], block=True)
    with pytest.raises(OSError, match="killed"):
        await _publish_read_only(dying, staging, target)
    assert len(node.loops() - loops) == 1  # the view the plugin died holding
    store.close()
    store = FileRecordStore(state)  # the plugin restarted: a new process, the same records
    ops = _ops(node.rack, store, LoopViews(state / "views"))
    try:
        if then == "publish again":
            await _publish_read_only(ops, staging, target)
            assert len(node.loops() - loops) == 1  # the same view, not a second one
            with pytest.raises(OSError, match=r"not permitted|Read-only|denied"):
                _write(target, 0, bytes(4096))
        await ops.unpublish(VOLUME, target)
        assert node.loops() == loops
        assert not Path(target).exists() and not list((state / "views").iterdir())
        await ops.unstage(VOLUME, staging)
    finally:
        store.close()


# ---- every option the allow-list accepts mounts the volume itself ----

VALUE_EXAMPLES = {
    "data": "ordered",
    "data_err": "abort",
    "errors": "remount-ro",
    "barrier": "1",
    "commit": "30",
    "stripe": "16",
    "min_batch_time": "0",
    "max_batch_time": "15000",
    "journal_ioprio": "3",
    "inode_readahead_blks": "32",
    "init_itable": "10",
    "max_dir_size_kb": "1024",
    "resuid": "0",
    "resgid": "0",
    "allocsize": "64k",
    "logbufs": "8",
    "logbsize": "256k",
    "sunit": "8",
    "swidth": "16",
}


def _accepted(fstype: str) -> list[str]:
    words, values = {
        "ext4": (EXT4, EXT4_VALUES),
        "ext3": (EXT3, EXT3_VALUES),
        "xfs": (XFS, XFS_VALUES),
    }[fstype]
    return sorted(GENERIC | words) + [f"{key}={VALUE_EXAMPLES[key]}" for key in sorted(values)]


@pytest.fixture(scope="module")
def formatted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An ext4, an ext3 and an xfs loop device, formatted, with a mount point below their
    directory."""
    skips.need_tools("mkfs.ext4", "mkfs.ext3", "mkfs.xfs")
    root = tmp_path_factory.mktemp("options")
    rack = Rack(root, root)
    devices = {
        "ext4": rack.attach(rack.disk("ext4", SIZE)),
        "ext3": rack.attach(rack.disk("ext3", SIZE)),
        "xfs": rack.attach(rack.disk("xfs")),
    }
    for fstype, dev in devices.items():
        subprocess.run([f"mkfs.{fstype}", "-q", dev], check=True)
    (root / "mnt").mkdir()
    try:
        yield devices
    finally:
        unmount_below(root)
        rack.loops.detach()


@pytest.mark.parametrize(
    ("fstype", "option"), [(fs, o) for fs in ("ext4", "ext3", "xfs") for o in _accepted(fs)]
)
async def test_every_accepted_option_mounts_the_volume_itself(
    formatted: dict[str, str], fstype: str, option: str
) -> None:
    """Stage's own mount call with the option: the kernel may refuse an option this kernel or
    filesystem lacks (quotas, say), but a mount that happens is of the volume's device, and no
    loop device appears."""
    dev = formatted[fstype]
    mnt = os.path.join(os.path.dirname(_loop_backings()[dev]), "mnt")
    flags = parse.capability(_cap((option,), False, fstype)).mount_flags
    try:
        await LinuxMounter().mount(dev, mnt, fstype, [*fs.MOUNT_OPTIONS[fstype], *flags])
    except CommandFailedError:
        assert not _mounts_at(mnt)
    else:
        (top,) = _mounts_at(mnt)
        assert top.source == dev and not _loops_over(dev)
        await LinuxMounter().unmount(mnt)
    assert not _loops_over(dev)


def _loops_over(dev: str) -> list[str]:
    return [loop for loop, backing in _loop_backings().items() if backing == dev]


async def _mounts(dev: str, fstype: str, option: str) -> bool:
    """Whether the kernel mounts ``dev`` as ``fstype`` with ``option`` (unmounted again)."""
    mnt = os.path.join(os.path.dirname(_loop_backings()[dev]), "mnt")
    try:
        await LinuxMounter().mount(dev, mnt, fstype, [option])
    except CommandFailedError:
        return False
    await LinuxMounter().unmount(mnt)
    return True


@pytest.mark.parametrize("option", _accepted("ext4"))
async def test_ext3_takes_no_option_the_kernel_keeps_for_ext4(
    formatted: dict[str, str], option: str
) -> None:
    """Every option of ext4's list, mounted on an ext4 and on an ext3 (both by the kernel's ext4
    driver): one on ext3's list mounts an ext3 exactly when it mounts an ext4, so none of them
    is one the driver refuses for ext3 only (delalloc, dioread_nolock, journal_checksum,
    prjquota... are not on it)."""
    on_ext4 = await _mounts(formatted["ext4"], "ext4", option)
    on_ext3 = await _mounts(formatted["ext3"], "ext3", option)
    if option in _accepted("ext3"):
        assert on_ext3 == on_ext4
    else:  # ext4's own: refused for an ext3 volume before any mount
        with pytest.raises(InvalidArgumentError, match="not allowed for ext3"):
            parse.capability(_cap((option,), False, "ext3"))
