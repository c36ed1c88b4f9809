"""What ``csi-oxide serve`` refuses at start, before it serves anything."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from csi_oxide.contract.volumes import CapacityRange
from csi_oxide.controller.ops import ControllerOps, NewVolume
from csi_oxide.controller.reconcile import Reconciler
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import CsiOxideError
from csi_oxide.node.ops import NodeOps
from csi_oxide.wiring import build_controller_ops, build_reconciler
from csi_oxide_lab.testing import controller_env
from tests.units import GIB


@pytest.mark.parametrize("cluster_id", ["c" * 600, "two words", 'q"uote'])
def test_an_unusable_cluster_id_is_refused_at_start(tmp_path: Path, cluster_id: str) -> None:
    """Without the check the controller would start (these credentials are well-formed) and only
    every CreateVolume would fail; the subprocess would then run until the timeout."""
    env = {
        **os.environ,
        "OXIDE_HOST": "http://127.0.0.1:9",
        "OXIDE_TOKEN": "oxide-token-for-a-test",
        "OXIDE_PROJECT": "csi",
        "HOME": str(tmp_path),
    }
    argv = [sys.executable, "-m", "csi_oxide", "serve", "--mode", "controller"]
    argv += ["--endpoint", f"unix://{tmp_path}/c.sock", "--cluster-id", cluster_id]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "--cluster-id" in done.stderr
    assert not (tmp_path / "c.sock").exists()


@pytest.mark.parametrize(
    ("cls", "collaborators"),
    [
        (ControllerOps, ("inflight", "expander")),
        (Reconciler, ("inflight", "expander")),
        (NodeOps, ("inflight",)),
    ],
)
def test_collaborators_come_from_wiring_not_from_defaults(
    cls: type, collaborators: tuple[str, ...]
) -> None:
    """The guard and the expander are built once, in csi_oxide.wiring, and handed in: a default
    made inside a constructor would give a second, unshared guard."""
    parameters = inspect.signature(cls).parameters
    for name in collaborators:
        assert parameters[name].default is inspect.Parameter.empty, f"{cls.__name__}({name}=...)"


async def test_the_controller_and_its_reconciler_share_one_guard() -> None:
    env = controller_env(hotplug=True)
    inflight = InFlight()
    ops = build_controller_ops(env.api, cluster="test", inflight=inflight)
    reconciler = build_reconciler(
        env.api, cluster="test", inflight=inflight, stale_after=timedelta(0)
    )
    volume = await ops.create_volume(NewVolume(name="pvc-1", capacity=CapacityRange(GIB)))
    # An expansion cut after its snapshot: the reconciler repairs it, unless the volume is busy.
    env.sim.faults.inject("disk_delete", status=500)
    with pytest.raises(CsiOxideError):
        await ops.expand_volume(volume.volume_id, CapacityRange(2 * GIB))
    release = asyncio.Event()
    busy = asyncio.ensure_future(inflight.run([volume.volume_id], "a test", release.wait()))
    await asyncio.sleep(0)
    assert (await reconciler.run_once()).skipped != []
    release.set()
    await busy
    assert (await reconciler.run_once()).finished == [volume.volume_id]
    await env.api.aclose()


@pytest.mark.parametrize(
    ("endpoint", "remedy"),
    [
        ("file/csi.sock", "pass --endpoint in a folder you can write"),
        (f"{'x' * 120}/csi.sock", "pass a shorter --endpoint"),
    ],
)
async def test_an_unusable_socket_place_is_refused_and_nothing_is_left_running(
    tmp_path: Path, endpoint: str, remedy: str
) -> None:
    from csi_oxide.cli import build_parser
    from csi_oxide.errors import ConfigurationError
    from csi_oxide.wiring import build_server

    (tmp_path / "file").write_text("")
    argv = ["serve", "--mode", "controller", "--endpoint", f"unix://{tmp_path}/{endpoint}"]
    env = {"OXIDE_HOST": "http://127.0.0.1:9", "OXIDE_TOKEN": "oxide-token-t", "OXIDE_PROJECT": "p"}
    with pytest.raises(ConfigurationError, match=remedy):
        await build_server(build_parser().parse_args(argv), env)
    await asyncio.sleep(0)
    # The controller's health check and reconciler were stopped, its client closed.
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
