"""What a Kubernetes user reads in ``kubectl describe``: messages that name an instance give its
name and its UUID, and a refusal says what the operator can do. Over real gRPC, against the
simulator (whose instances are named ``sim-node-N``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide.oxide.types import InstanceState
from tests.units import GIB

from .controller_world import World, failure, serve


async def _names(world: World) -> dict[str, str]:
    return {i.id: i.name for i in await world.api.instance_list()}


def _names_instance(message: str, instance_id: str, name: str) -> None:
    assert instance_id in message, message
    assert repr(name) in message or name in message, message


async def test_attached_volume_messages_name_the_instance(tmp_path: Path) -> None:
    async for world in serve(tmp_path, hotplug=True, instances=1):
        ctl = world.clusters["test"]
        names = await _names(world)
        node, other = world.node, world.sim.instance_ids[1]
        vol = (await ctl.create("pvc-1")).volume_id
        await ctl.publish(vol, node)

        delete = await failure(ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=vol)))
        expand = await failure(ctl.expand(vol, 2 * GIB))
        elsewhere = await failure(ctl.publish(vol, other))
        for error in (delete, expand, elsewhere):
            assert error.code().name == "FAILED_PRECONDITION"
            _names_instance(error.details() or "", node, names[node])
        assert "unpublish" in (elsewhere.details() or "")


async def test_attach_limit_message_names_the_instance(tmp_path: Path) -> None:
    async for world in serve(tmp_path, hotplug=True):
        ctl = world.clusters["test"]
        names = await _names(world)
        volumes = [(await ctl.create(f"pvc-{i}")).volume_id for i in range(13)]
        for vol in volumes[:12]:
            await ctl.publish(vol, world.node)
        error = await failure(ctl.publish(volumes[12], world.node))
        assert error.code().name == "RESOURCE_EXHAUSTED"
        _names_instance(error.details() or "", world.node, names[world.node])


@pytest.mark.parametrize("verb", ["attach", "detach"])
async def test_hotplug_refusal_says_what_to_do(tmp_path: Path, verb: str) -> None:
    async for world in serve(tmp_path, hotplug=False):
        ctl = world.clusters["test"]
        names = await _names(world)
        vol = (await ctl.create("pvc-1")).volume_id
        if verb == "detach":
            world.sim.set_run_state(world.node, InstanceState.STOPPED)
            await ctl.publish(vol, world.node)
            world.sim.set_run_state(world.node, InstanceState.RUNNING)
            error = await failure(ctl.unpublish(vol, world.node))
        else:
            error = await failure(ctl.publish(vol, world.node))
        message = error.details() or ""
        assert error.code().name == "FAILED_PRECONDITION"
        _names_instance(message, world.node, names[world.node])
        assert "hot-plug" in message
        assert "stop the instance" in message and "start it again" in message
        if verb == "attach":
            assert "bound" in message and "ContainerCreating" in message
