"""Loop-device teardown never touches a device it did not make (csi_oxide.host.loops,
tests/loops.py).

A device detached meanwhile gives its number to the next ``losetup --find``: a teardown by the
remembered name would detach that other device. Here the other device is this test's own (over
file B), so the old name-only teardown, which fails these tests, harms nothing else.

Needs root and /dev/loop-control (marked ``root``; skipped with the reason otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_oxide.node.views import LoopViews
from csi_oxide_lab.sim.backing import LoopBacking
from tests.loops import DELETED, Loops, attach, backing_of, detach_if_ours
from tests.polling import wait_until
from tests.units import MIB

pytestmark = [
    pytest.mark.root,
]


def _file(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(MIB)
    return path


def _unbound(dev: str) -> bool:
    """The device lost its backing file (at once, or at the last close of a brief opener such
    as udev's probe)."""
    return wait_until(lambda: backing_of(dev) is None, 5)


@pytest.fixture
def cleanup() -> Iterator[Loops]:
    """What a test made, detached at its end (each only while it still is the one made)."""
    made = Loops()
    yield made
    made.detach()


def test_a_teardown_leaves_the_device_that_took_the_number(tmp_path: Path, cleanup: Loops) -> None:
    a, b = _file(tmp_path / "a"), _file(tmp_path / "b")
    record = Loops()  # a fixture's record: A's device
    dev_a = record.attach(a)
    assert detach_if_ours(dev_a, a)  # detached meanwhile (by the test, the code under test)
    assert _unbound(dev_a)
    dev_b = cleanup.attach(b)  # the next device: most often A's number again
    if dev_b != dev_a:  # someone else took A's number in between: A's record, B's device
        record.made = [(dev_b, str(a), record.made[0][2])]
    assert not detach_if_ours(dev_b, a)  # by A's path alone (the simulator's, the scripts')
    record.detach()  # by A's attachment (the tests' fixtures)
    assert backing_of(dev_b) == str(b)  # B's device is still attached


def test_a_record_names_its_attachment_not_a_later_one_over_the_same_path(
    tmp_path: Path, cleanup: Loops
) -> None:
    a = _file(tmp_path / "a")
    record = Loops()
    dev = record.attach(a)
    assert detach_if_ours(dev, a)
    assert _unbound(dev)
    again = cleanup.attach(a)  # another attachment over the same path (most often the number)
    if again != dev:
        record.made = [(again, str(a), record.made[0][2])]
    record.detach()
    assert backing_of(again) == str(a)  # the later attachment is still there


def test_a_record_detaches_its_device_whose_file_was_renamed(tmp_path: Path) -> None:
    a = _file(tmp_path / "a")
    record = Loops()
    dev = record.attach(a)
    try:
        a.rename(tmp_path / "renamed")  # as a test does to hide a disk from the finder
        assert backing_of(dev) == str(tmp_path / "renamed")
        assert not detach_if_ours(dev, a)  # by the path alone: not recognised, left alone
    finally:
        record.detach()
    assert _unbound(dev)


def test_a_device_over_its_file_since_deleted_is_detached(tmp_path: Path) -> None:
    a = _file(tmp_path / "a")
    dev = attach(a)
    try:
        a.unlink()
        assert backing_of(dev) == f"{a}{DELETED}"
    finally:
        detached = detach_if_ours(dev, a)
    assert detached
    assert _unbound(dev)
    assert not detach_if_ours(dev, a)  # gone: nothing to do, no error


def test_a_device_is_known_by_the_real_path_of_its_file(tmp_path: Path) -> None:
    real = _file(tmp_path / "a")
    (tmp_path / "link").symlink_to(tmp_path)
    via_link = tmp_path / "link" / "a"
    dev = attach(via_link)
    try:
        assert not detach_if_ours(dev, tmp_path / "b")  # another file: left alone
        assert backing_of(dev) == str(real)
    finally:
        assert detach_if_ours(dev, via_link)
    assert _unbound(dev)


def test_the_simulators_detach_leaves_the_device_that_took_the_number(
    tmp_path: Path, cleanup: Loops
) -> None:
    sim = LoopBacking(tmp_path / "state")
    try:
        sim.create_disk("disk-a", MIB, 512)
        sim.attach_local("disk-a", 512)
        dev_a = sim.device("disk-a")
        assert dev_a is not None
        # The device goes behind the simulator's back (freed at its last close, say) and the
        # next device, over B, is most often given its number.
        assert detach_if_ours(dev_a, sim.device_dir / "disk-a")
        assert _unbound(dev_a)
        dev_b = cleanup.attach(_file(tmp_path / "b"))
        if dev_b != dev_a:  # someone else took A's number in between: the sim's record of A
            sim._loops["disk-a"] = dev_b  # ... naming B's device
        sim.detach_local("disk-a")
        assert backing_of(dev_b) == str(tmp_path / "b")  # B's device is still attached
        assert sim.device("disk-a") is None
    finally:
        sim.close()
    assert backing_of(dev_b) == str(tmp_path / "b")  # and after the simulator's close


def test_the_simulators_detach_detaches_its_own_device(tmp_path: Path) -> None:
    sim = LoopBacking(tmp_path / "state", local_instances=2)
    try:
        sim.create_disk("disk-a", MIB, 512)
        sim.attach_local("disk-a", 512, local=1)
        dev = sim.device("disk-a")
        assert dev is not None
        assert backing_of(dev) == str(tmp_path / "state" / "local-1" / "disk-a")
        sim.detach_local("disk-a")
        assert _unbound(dev)
    finally:
        sim.close()


async def test_closing_a_view_leaves_the_device_that_took_the_number(
    tmp_path: Path, cleanup: Loops
) -> None:
    """A read-only view's loop device, listed as over its anchor, is freed before the detach
    and its number goes to a device over B: closing the view leaves B's device attached."""
    dev_b = cleanup.attach(_file(tmp_path / "b"))
    sys_block = tmp_path / "sys"  # /sys/block as it was listed: the number still the view's
    views = LoopViews(tmp_path / "views", sys_block=sys_block)
    anchor = views.anchor("csi-0123456789abcdef", "/pods/a/dev")
    (sys_block / Path(dev_b).name / "loop").mkdir(parents=True)
    (sys_block / Path(dev_b).name / "loop" / "backing_file").write_text(anchor + "\n")
    assert await views.loops(anchor) == [dev_b]
    await views.close(anchor)
    assert backing_of(dev_b) == str(tmp_path / "b")  # B's device is still attached
