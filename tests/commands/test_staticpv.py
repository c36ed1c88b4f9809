"""``csi-oxide static-pv``: the PV for a disk an operator attached to a node, and its refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from csi_oxide import cli
from csi_oxide.commands import staticpv
from csi_oxide.controller.record import PREFIX
from csi_oxide.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.credentials import StaticToken
from csi_oxide.oxide.types import Disk, DiskSpec, DiskState, Instance, InstanceState
from csi_oxide_lab import harness
from csi_oxide_lab.testing import ControllerEnv, controller_env, sim_client
from tests.units import GIB

NODE_DISK = "kept-data"


@pytest.fixture
async def rack() -> AsyncIterator[ControllerEnv]:
    """Today's rack: no hot-plug; ``kept-data`` attached to the local instance while it was
    stopped, and the instance running again."""
    env = controller_env(hotplug=False)
    await env.api.disk_create(
        DiskSpec(name=NODE_DISK, description="made by hand", size=3 * GIB, block_size=4096)
    )
    await env.api.instance_stop(env.node)
    await env.api.instance_disk_attach(env.node, NODE_DISK)
    await env.api.instance_start(env.node)
    yield env
    await env.api.aclose()
    assert env.sim.contract_violations == []


async def test_the_pv_names_the_disk_and_pins_it_to_its_node(rack: ControllerEnv) -> None:
    attached = await staticpv.describe(rack.api, NODE_DISK)
    assert attached.instance.id == rack.node
    text = staticpv.manifest(attached, node_name="worker-1", fs_type="xfs")
    pv: dict[str, Any] = yaml.safe_load(text)
    kubernetes_validate.validate(pv, "1.34.0", strict=True)
    spec = pv["spec"]
    assert spec["csi"] == {
        "driver": "csi.oxide.computer",
        "volumeHandle": NODE_DISK,
        "fsType": "xfs",
        "readOnly": False,
    }
    assert spec["capacity"] == {"storage": "3Gi"}
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"  # never deletes the disk
    term = spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "kubernetes.io/hostname", "operator": "In", "values": ["worker-1"]}
    assert pv["metadata"]["name"] == f"oxide-{NODE_DISK}"


async def test_the_command_prints_the_pv(
    rack: ControllerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OXIDE_HOST", "http://sim")
    monkeypatch.setenv("OXIDE_TOKEN", rack.sim.token)
    monkeypatch.setenv("OXIDE_PROJECT", rack.sim.config.project)
    monkeypatch.setattr(
        "csi_oxide.commands.doctor.first_contact_client", lambda _creds: sim_client(rack.sim)
    )
    instance = await rack.api.instance_view(rack.node)
    args = cli.build_parser().parse_args(["static-pv", NODE_DISK, "--pv-name", "data"])
    pv = yaml.safe_load(await cli._static_pv(args))
    assert pv["metadata"]["name"] == "data"
    values = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    assert values["matchExpressions"][0]["values"] == [instance.name]


async def _give_the_node_a_disk(env: dict[str, str]) -> None:
    """As an operator of today's rack: the disk made, attached while the instance is stopped."""
    api = HttpOxideClient(env["OXIDE_HOST"], StaticToken(env["OXIDE_TOKEN"]), env["OXIDE_PROJECT"])
    node = env["CSI_OXIDE_NODE_ID"]
    try:
        await api.disk_create(
            DiskSpec(name=NODE_DISK, description="by hand", size=GIB, block_size=4096)
        )
        await api.instance_stop(node)
        await api.instance_disk_attach(node, NODE_DISK)
        await api.instance_start(node)
    finally:
        await api.aclose()


def test_the_real_command_prints_only_the_manifest(tmp_path: Path) -> None:
    """``csi-oxide static-pv`` against a served simulator, as an operator pipes it to kubectl:
    standard output is the manifest alone; a refusal is one line on standard error, exit 2."""
    sim = harness.start_sim(tmp_path)
    with harness.stopping(sim.proc):
        asyncio.run(_give_the_node_a_disk(sim.env))
        env = {**os.environ, **sim.env}
        argv = harness.csi_oxide_argv("static-pv", NODE_DISK, "--node-name", "worker-1")
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        pv = yaml.safe_load(done.stdout)
        assert pv["spec"]["csi"]["volumeHandle"] == NODE_DISK
        refused = harness.csi_oxide_argv("static-pv", "nowhere")
        done = subprocess.run(refused, env=env, capture_output=True, text=True, check=False)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.startswith("csi-oxide static-pv: no disk 'nowhere'"), done.stderr


async def test_a_disk_not_attached_or_not_there_is_refused(rack: ControllerEnv) -> None:
    await rack.api.disk_create(
        DiskSpec(name="loose", description="made by hand", size=GIB, block_size=4096)
    )
    with pytest.raises(FailedPreconditionError, match="not attached"):
        await staticpv.describe(rack.api, "loose")
    with pytest.raises(NotFoundError):
        await staticpv.describe(rack.api, "nowhere")
    with pytest.raises(InvalidArgumentError):
        await staticpv.describe(rack.api, "../etc")


def _disk(name: str, **kw: Any) -> Disk:
    base = Disk(
        id=f"00000000-0000-4000-8000-{len(name):012d}",
        name=name,
        description="made by hand",
        project_id="11111111-1111-4111-8111-111111111111",
        size=GIB,
        block_size=4096,
        state=DiskState.ATTACHED,
        instance_id=INSTANCE.id,
        snapshot_id=None,
        image_id=None,
        read_only=False,
        disk_type="distributed",
        time_created=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return dataclasses.replace(base, **kw)


INSTANCE = Instance(
    id="22222222-2222-4222-8222-222222222222",
    name="worker-1",
    project_id="11111111-1111-4111-8111-111111111111",
    run_state=InstanceState.RUNNING,
    boot_disk_id="00000000-0000-4000-8000-000000000004",
)


def test_the_boot_disk_is_never_a_volume() -> None:
    boot = _disk("boot")  # its ID is the instance's boot disk ID
    with pytest.raises(FailedPreconditionError, match="boot disk"):
        staticpv._refuse_unsafe(boot, INSTANCE, [boot])


def test_a_disk_of_this_driver_is_refused() -> None:
    ours = _disk("csi-0123456789abcdef", description=PREFIX + '{"c":"default","n":"pvc"}')
    with pytest.raises(FailedPreconditionError, match="made by csi-oxide"):
        staticpv._refuse_unsafe(ours, INSTANCE, [ours])


def test_two_disks_one_serial_are_refused() -> None:
    first = _disk("database-volume-2026-a")
    twin = _disk("database-volume-2026-b", id="00000000-0000-4000-8000-999999999999")
    elsewhere = dataclasses.replace(twin, instance_id="33333333-3333-4333-8333-333333333333")
    staticpv._refuse_unsafe(first, INSTANCE, [first, elsewhere])  # another instance's: fine
    with pytest.raises(FailedPreconditionError, match="first 20 characters"):
        staticpv._refuse_unsafe(first, INSTANCE, [first, twin])


def test_an_unknown_filesystem_is_refused() -> None:
    attached = staticpv.AttachedDisk(_disk("data"), INSTANCE)
    with pytest.raises(InvalidArgumentError, match="btrfs"):
        staticpv.manifest(attached, node_name="worker-1", fs_type="btrfs")
    read_only = staticpv.AttachedDisk(_disk("data", read_only=True), INSTANCE)
    text = staticpv.manifest(read_only, node_name="worker-1", fs_type="ext4")
    assert yaml.safe_load(text)["spec"]["csi"]["readOnly"] is True
