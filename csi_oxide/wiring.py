"""Builds the concrete objects for ``csi-oxide serve`` from flags and the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import structlog

from csi_oxide.controller.ops import ControllerOps
from csi_oxide.health import Health
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
        credentials = load_credentials(env)
        log.info("oxide credentials", oxide=str(credentials))
        client = HttpOxideClient.from_credentials(
            credentials, request_observer=metrics.oxide_request
        )
        closers.append(client.aclose)
        controller = ControllerService(ControllerOps(client, cluster=args.cluster_id))

        async def check() -> None:
            await client.utilization_view()

        watcher = asyncio.get_running_loop().create_task(
            health.watch(check, interval=HEALTH_INTERVAL)
        )

        async def stop_watch() -> None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

        closers.insert(0, stop_watch)
    if args.mode in ("node", "all"):
        node_id = resolve_node_id(args.node_id, env)
        node = NodeService(node_id=node_id)
    services = Services(
        identity=IdentityService(health), controller=controller, node=node, observers=[metrics]
    )
    return CsiServer(args.endpoint, services), closers
