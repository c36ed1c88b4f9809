"""Builds the concrete objects for ``csi-oxide serve`` from flags and the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import structlog

from csi_oxide.controller.ops import ControllerOps
from csi_oxide.controller.reconcile import Reconciler
from csi_oxide.health import Health
from csi_oxide.inflight import InFlight
from csi_oxide.metrics import Metrics, serve_metrics
from csi_oxide.nodeid import resolve_node_id
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.credentials import load_credentials
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.controller import ControllerService
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.node import NodeService

Closer = Callable[[], Awaitable[None]]
log = structlog.get_logger("csi_oxide.wiring")

HEALTH_INTERVAL = 30.0
RECONCILE_INTERVAL = 300.0


def _in_background(work: Awaitable[None]) -> Closer:
    """Run ``work`` as a task; the returned closer cancels it and waits for it to end."""
    task = asyncio.ensure_future(work)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


def _controller(
    args: argparse.Namespace, env: Mapping[str, str], health: Health, metrics: Metrics
) -> tuple[ControllerService, list[Closer]]:
    credentials = load_credentials(env)
    log.info("oxide credentials", oxide=str(credentials))
    client = HttpOxideClient.from_credentials(credentials, request_observer=metrics.oxide_request)
    inflight = InFlight()
    reconciler = Reconciler(client, cluster=args.cluster_id, inflight=inflight)

    async def check() -> None:
        await client.utilization_view()

    closers = [
        _in_background(health.watch(check, interval=HEALTH_INTERVAL)),
        _in_background(reconciler.run_forever(RECONCILE_INTERVAL)),
        client.aclose,
    ]
    ops = ControllerOps(client, cluster=args.cluster_id, inflight=inflight)
    return ControllerService(ops), closers


async def build_server(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[CsiServer, list[Closer]]:
    """The server for ``args.mode`` plus the coroutines that release what it holds."""
    health = Health()
    metrics = Metrics()
    if args.metrics_address:
        serve_metrics(metrics, args.metrics_address)
    closers: list[Closer] = []
    controller = node = None
    if args.mode in ("controller", "all"):
        controller, closers = _controller(args, env, health, metrics)
    if args.mode in ("node", "all"):
        from csi_oxide.node.ops import build_node_ops  # pyudev: only the node needs it

        node_id = resolve_node_id(args.node_id, env)
        device_dir = Path(args.sim_device_dir) if args.sim_device_dir else None
        node = NodeService(node_id=node_id, ops=build_node_ops(sim_device_dir=device_dir))
    services = Services(
        identity=IdentityService(health), controller=controller, node=node, observers=[metrics]
    )
    return CsiServer(args.endpoint, services), closers
