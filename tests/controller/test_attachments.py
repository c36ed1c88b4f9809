"""Where the controller last attached a disk (``controller.attachments``): a repeated publish reads
instead of attaching, and the hint is never an answer on its own.

The first part is pure (``Attachments`` alone); the rest runs ``ControllerOps`` against the
simulator, with the disk changed behind the driver's back between two calls.
"""

from __future__ import annotations

import pytest

from csi_oxide.controller.attachments import Attachments
from csi_oxide.errors import FailedPreconditionError, NotFoundError
from csi_oxide.oxide.types import DiskSpec
from tests.units import GIB

from .controller_helpers import Env, new

DISK_A = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e51"
DISK_B = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e52"
NODE_A = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e61"
NODE_B = "6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e62"


# ---- Attachments alone --------------------------------------------------------------------------


def test_a_hint_names_one_disk_and_one_node() -> None:
    hints = Attachments()
    assert not hints.likely(DISK_A, NODE_A)
    hints.attached(DISK_A, NODE_A)
    assert hints.likely(DISK_A, NODE_A)
    assert not hints.likely(DISK_A, NODE_B)
    assert not hints.likely(DISK_B, NODE_A)
    hints.attached(DISK_A, NODE_B)  # moved: only the last attach counts
    assert (hints.likely(DISK_A, NODE_A), hints.likely(DISK_A, NODE_B)) == (False, True)
    hints.gone(DISK_A)
    hints.gone(DISK_B)  # never kept: nothing happens
    assert not hints.likely(DISK_A, NODE_B)
    assert len(hints) == 0


def test_the_bound_holds_and_the_least_recently_attached_goes_first() -> None:
    hints = Attachments(limit=2)
    hints.attached(DISK_A, NODE_A)
    hints.attached(DISK_B, NODE_A)
    hints.attached(DISK_A, NODE_A)  # refreshed: DISK_B is now the oldest
    hints.attached("6f0c7d8e-1a2b-4c3d-8e9f-0a1b2c3d4e53", NODE_A)
    assert len(hints) == 2
    assert hints.likely(DISK_A, NODE_A)
    assert not hints.likely(DISK_B, NODE_A)
    with pytest.raises(ValueError, match="at least 1"):
        Attachments(limit=0)


# ---- ControllerOps ------------------------------------------------------------------------------


def _counts(env: Env) -> dict[str, int]:
    return {op: n for op, n in env.sim.request_counts.items() if n}


async def test_a_repeated_publish_reads_instead_of_attaching(env: Env) -> None:
    vol = (await env.ops.create_volume(new())).volume_id
    first = await env.ops.publish(vol, env.node)
    env.sim.request_counts.clear()
    assert await env.ops.publish(vol, env.node) == first
    assert _counts(env) == {"disk_view": 1}
    assert (await env.api.disk_view(vol)).instance_id == env.node


async def test_a_publish_after_an_unpublish_attaches_without_a_read(env: Env) -> None:
    vol = (await env.ops.create_volume(new())).volume_id
    await env.ops.publish(vol, env.node)
    await env.ops.unpublish(vol, env.node)
    env.sim.request_counts.clear()
    await env.ops.publish(vol, env.node)
    assert _counts(env) == {"instance_disk_attach": 1}


async def test_a_disk_detached_behind_the_drivers_back_is_attached_again(env: Env) -> None:
    """The hint says attached; Oxide says detached: the read is followed by the attach."""
    vol = (await env.ops.create_volume(new())).volume_id
    await env.ops.publish(vol, env.node)
    await env.api.instance_disk_detach(env.node, vol)
    env.sim.request_counts.clear()
    await env.ops.publish(vol, env.node)
    assert _counts(env) == {"disk_view": 1, "instance_disk_attach": 1}
    assert (await env.api.disk_view(vol)).instance_id == env.node
    env.sim.request_counts.clear()
    await env.ops.publish(vol, env.node)  # attached by this call: a repeat reads again
    assert _counts(env) == {"disk_view": 1}


async def test_a_disk_moved_behind_the_drivers_back_is_not_published_here(env: Env) -> None:
    """Attached to another node in the meantime: the read does not count as an answer, the
    attach is refused, and the answer says where the volume is."""
    vol = (await env.ops.create_volume(new())).volume_id
    other = next(i.id for i in await env.api.instance_list() if i.id != env.node)
    await env.ops.publish(vol, env.node)
    await env.api.instance_disk_detach(env.node, vol)
    await env.api.instance_disk_attach(other, vol)
    with pytest.raises(FailedPreconditionError, match="attached to node"):
        await env.ops.publish(vol, env.node)
    assert (await env.api.disk_view(vol)).instance_id == other


async def test_a_disk_replaced_under_its_name_is_never_reported_attached(env: Env) -> None:
    """The hint is by UUID: another disk under the volume's name, attached to the same node,
    is not the volume, and the publish says so."""
    vol = (await env.ops.create_volume(new())).volume_id
    await env.ops.publish(vol, env.node)
    await env.api.instance_disk_detach(env.node, vol)
    await env.api.disk_delete(vol)
    spec = DiskSpec(name=vol, description="made by hand", size=GIB, block_size=4096)
    newcomer = (await env.api.disk_create(spec)).id
    await env.api.instance_disk_attach(env.node, vol)
    with pytest.raises(NotFoundError, match="does not exist any more"):
        await env.ops.publish(vol, env.node)
    disk = await env.api.disk_view(vol)
    assert (disk.id, disk.description) == (newcomer, "made by hand")
