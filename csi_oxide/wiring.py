"""Builds the concrete objects for ``csi-oxide serve`` from flags and the environment.

Each mode imports only its own side: the controller's modules (the Oxide layer, its HTTP client)
are imported when the controller is built, the node's (pyudev, the tools' wrappers) when the node
is, so that a node plugin never loads the Oxide layer and a controller never loads the node's data
path (``tests/test_footprint.py`` checks the running processes). Likewise the metrics
(``csi_oxide.daemon.metrics``) and the kubelet registration API are imported only when their flag
is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from csi_oxide import RECONCILER_LEASE
from csi_oxide.contract.nodeid import resolve_node_id
from csi_oxide.daemon.health import Health
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import ConfigurationError
from csi_oxide.server.app import CsiServer, Services
from csi_oxide.server.identity import IdentityService
from csi_oxide.server.liveness import Check, combine, probe_socket

if TYPE_CHECKING:  # imported where each side is built (see above)
    from csi_oxide.controller.ops import ControllerOps
    from csi_oxide.controller.reconcile import Reconciler
    from csi_oxide.daemon.metrics import Metrics
    from csi_oxide.kube.client import KubeClient
    from csi_oxide.node.ops import NodeOps
    from csi_oxide.oxide.api import OxideApi
    from csi_oxide.server.controller import ControllerService
    from csi_oxide.server.registration import RegistrationServer, RegistrationStatus

Closer = Callable[[], Awaitable[None]]
log = structlog.get_logger("csi_oxide.wiring")

HEALTH_INTERVAL = 30.0
RECONCILE_INTERVAL = 300.0
# Seconds an RPC's work may run past the RPC's deadline (then it is cut; the retry starts afresh).
RPC_GRACE = 5.0
SOCKET_WAIT = 0.05
# The longest path a unix socket can be bound at (sockaddr_un's 108 bytes, less the final NUL).
MAX_SOCKET_PATH = 107


def _in_background(work: Awaitable[None]) -> Closer:
    """Run ``work`` as a task; the returned closer cancels it and waits for it to end."""
    task = asyncio.ensure_future(work)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop


def _controller(
    args: argparse.Namespace, env: Mapping[str, str], health: Health, metrics: Metrics | None
) -> tuple[ControllerService, list[Closer]]:
    from csi_oxide.controller.record import check_cluster_id
    from csi_oxide.oxide.client import DEFAULT_TIMEOUT, HttpOxideClient
    from csi_oxide.oxide.credentials import load_credentials
    from csi_oxide.server.controller import ControllerService

    check_cluster_id(args.cluster_id)  # refused at start, not at every CreateVolume
    credentials = load_credentials(env)
    log.info("oxide credentials", oxide=str(credentials))
    client = HttpOxideClient.from_credentials(
        credentials,
        request_observer=None if metrics is None else metrics.oxide_request,
        timeout=getattr(args, "oxide_timeout", None) or DEFAULT_TIMEOUT,
    )
    # A call's work is cut RPC_GRACE seconds after the call's deadline, freeing the volume.
    inflight = InFlight(grace=RPC_GRACE)
    reconciler = build_reconciler(client, cluster=args.cluster_id, inflight=inflight)

    async def check() -> None:
        await client.utilization_view()

    closers = [
        _in_background(health.watch(check, interval=HEALTH_INTERVAL)),
        _in_background(_reconcile(args, env, reconciler)),
        client.aclose,
    ]
    ops = build_controller_ops(client, cluster=args.cluster_id, inflight=inflight)
    return ControllerService(ops), closers


def _reconcile(
    args: argparse.Namespace, env: Mapping[str, str], reconciler: Reconciler
) -> Awaitable[None]:
    """The reconciler's loop: in every replica, or with ``--leader-election`` only while this
    replica holds the Lease ``RECONCILER_LEASE`` (cancelled the moment it stops holding it)."""

    async def work() -> None:
        await reconciler.run_forever(RECONCILE_INTERVAL)

    if not getattr(args, "leader_election", False):
        return work()
    from csi_oxide.kube.lease import LeaderElector, LeaseTimings

    try:
        timings = LeaseTimings(
            lease_duration=args.leader_election_lease_duration,
            renew_deadline=args.leader_election_renew_deadline,
            retry_period=args.leader_election_retry_period,
        )
    except ValueError as exc:
        raise ConfigurationError(f"--leader-election-*: {exc}") from None
    client = _kube_client(env)
    elector = LeaderElector(
        client,
        namespace=getattr(args, "leader_election_namespace", None) or client.config.namespace,
        name=RECONCILER_LEASE,
        identity=env.get("POD_NAME") or socket.gethostname(),
        timings=timings,
    )
    log.info("reconciler under leader election", lease=RECONCILER_LEASE, identity=elector.identity)
    return elector.run(work)


def _kube_client(env: Mapping[str, str]) -> KubeClient:
    """The Kubernetes API as a pod reaches it: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the
    service-account folder (``CSI_OXIDE_SERVICE_ACCOUNT_DIR``, default the kubelet's mount: a
    process outside a pod may point it at a folder holding ``token``, ``ca.crt``, ``namespace``).
    """
    from csi_oxide.kube.client import SERVICE_ACCOUNT_DIR, KubeClient, KubeConfig

    folder = env.get("CSI_OXIDE_SERVICE_ACCOUNT_DIR") or str(SERVICE_ACCOUNT_DIR)
    return KubeClient(KubeConfig.in_cluster(env=env, directory=Path(folder)))


def build_controller_ops(api: OxideApi, *, cluster: str, inflight: InFlight) -> ControllerOps:
    """The controller's operations over ``api``; ``inflight`` is the per-volume guard, shared
    with the reconciler."""
    from csi_oxide.controller.expand import Expander
    from csi_oxide.controller.ops import ControllerOps

    return ControllerOps(
        api, cluster=cluster, inflight=inflight, expander=Expander(api, cluster=cluster)
    )


def build_reconciler(
    api: OxideApi,
    *,
    cluster: str,
    inflight: InFlight,
    stale_after: timedelta | None = None,
) -> Reconciler:
    """The reconciler of ``cluster``'s leftovers, under the controller's guard ``inflight``;
    ``stale_after`` (default ``reconcile.DEFAULT_STALE_AFTER``): when a leftover is old enough."""
    from csi_oxide.controller.expand import Expander
    from csi_oxide.controller.reconcile import DEFAULT_STALE_AFTER, Reconciler

    return Reconciler(
        api,
        cluster=cluster,
        inflight=inflight,
        expander=Expander(api, cluster=cluster),
        stale_after=DEFAULT_STALE_AFTER if stale_after is None else stale_after,
    )


async def _register_with_kubelet(
    csi_socket: Path, registration: RegistrationServer, wait: float = SOCKET_WAIT
) -> None:
    """Once the CSI socket exists, serve the kubelet's registration API until cancelled.

    Registering before the CSI socket answers would make the kubelet's NodeGetInfo fail and the
    registration be refused, so this waits for the socket first.
    """
    # CsiServer binds the socket in another task of this process and offers no event for it.
    while not await asyncio.to_thread(csi_socket.exists):  # noqa: ASYNC110
        await asyncio.sleep(wait)
    await registration.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(registration.stop())


def _liveness(server: CsiServer, status: RegistrationStatus | None) -> Check:
    """``/healthz``: the CSI socket answers Probe, and the kubelet did not refuse us."""
    checks: list[Check] = [lambda: probe_socket(server.path)]
    if status is not None:
        checks.append(status.problem)
    return combine(*checks)


async def build_server(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[CsiServer, list[Closer]]:
    """The server for ``args.mode`` plus the coroutines that release what it holds. When the
    settings are refused, what was built so far is released before the error goes up."""
    closers: list[Closer] = []
    try:
        return await _assemble(args, env, closers), closers
    except BaseException:
        for close in closers:
            await close()
        raise


def _socket_directory(endpoint: Path) -> None:
    """Make the CSI socket's directory, or refuse to start saying how to fix it."""
    length = len(os.fsencode(endpoint))
    if length > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"the socket path {endpoint} is {length} bytes long, and a unix socket's path holds "
            f"at most {MAX_SOCKET_PATH}: pass a shorter --endpoint"
        )
    folder = endpoint.parent
    remedy = "run as root (as the node plugin must) or pass --endpoint in a folder you can write"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"the socket's folder {folder} cannot be made ({exc.strerror}): {remedy}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigurationError(f"the socket's folder {folder} is not writable: {remedy}")


def _metrics_endpoint(metrics: Metrics, address: str, liveness: Check) -> None:
    """Serve the metrics, or refuse to start when the address cannot be bound."""
    from csi_oxide.daemon.metrics import serve_metrics

    try:
        serve_metrics(metrics, address, liveness=liveness)
    except OSError as exc:
        raise ConfigurationError(
            f"--metrics-address {address}: {exc.strerror or exc}: choose a free port, or stop "
            "what listens there"
        ) from None


async def _assemble(
    args: argparse.Namespace, env: Mapping[str, str], closers: list[Closer]
) -> CsiServer:
    """The server for ``args.mode``; ``closers`` receives what to release, as it is made."""
    health = Health()
    metrics: Metrics | None = None
    if args.metrics_address:  # else nobody could read them: the metrics are not even loaded
        from csi_oxide.daemon.metrics import Metrics

        metrics = Metrics()
    controller = node = None
    if args.mode in ("controller", "all"):
        controller, made = _controller(args, env, health, metrics)
        closers.extend(made)
    if args.mode in ("node", "all"):
        from csi_oxide.server.node import NodeService

        node_id = resolve_node_id(args.node_id, env)
        device_dir = Path(args.sim_device_dir) if args.sim_device_dir else None
        node_inflight = InFlight()  # never cut: a mkfs or mount runs to its end
        ops = build_node_ops(
            sim_device_dir=device_dir, state_dir=Path(args.state_dir), inflight=node_inflight
        )
        node = NodeService(node_id=node_id, ops=ops)
        closers.append(node_inflight.drain)  # at shutdown, let running node work finish
    services = Services(
        identity=IdentityService(health),
        controller=controller,
        node=node,
        observers=[] if metrics is None else [metrics],
    )
    server = CsiServer(args.endpoint, services, max_concurrent_rpcs=args.max_concurrent_rpcs)
    _socket_directory(server.path)
    status: RegistrationStatus | None = None
    if node is not None and getattr(args, "registration_dir", None):
        from csi_oxide.server.registration import RegistrationServer, RegistrationStatus

        status = RegistrationStatus()
        registration = RegistrationServer(
            Path(args.registration_dir), args.kubelet_registration_path, status
        )
        closers.append(_in_background(_register_with_kubelet(server.path, registration)))
    if metrics is not None:
        _metrics_endpoint(metrics, args.metrics_address, _liveness(server, status))
    if node is not None and getattr(args, "startup_taint", False):
        closers.append(_in_background(_lift_startup_taint(env, node_id, server)))
    return server


def _lift_startup_taint(env: Mapping[str, str], node_id: str, server: CsiServer) -> Awaitable[None]:
    """The node's startup taint lifted once the plugin answers and the kubelet registered it
    (``csi_oxide.kube.startup``); the Node is named by ``NODE_NAME`` (the downward API's
    ``spec.nodeName``)."""
    from csi_oxide.kube.startup import lift_when_ready

    node_name = env.get("NODE_NAME", "")
    if not node_name:
        raise ConfigurationError(
            "--startup-taint needs the Node's name in NODE_NAME (fieldRef spec.nodeName)"
        )
    client = _kube_client(env)  # refused at start when not in a pod

    async def lift() -> None:
        await lift_when_ready(
            client, node_name=node_name, node_id=node_id, ready=lambda: probe_socket(server.path)
        )

    return lift()


def build_node_ops(
    *,
    sim_device_dir: Path | None,
    device_timeout: float = 60.0,
    state_dir: Path | None = None,
    inflight: InFlight | None = None,
) -> NodeOps:
    """The node's data path over its real seams: udev device discovery, util-linux mounts, the
    filesystem tools, and the record store and the read-only views' anchors in ``state_dir``
    (None: a fresh temporary directory, for tests and benchmarks only; the daemon always passes
    its ``--state-dir``), under the per-volume guard ``inflight`` (None: a guard of its own that
    never cuts, for tests and benchmarks; the daemon passes the one it drains at shutdown)."""
    from csi_oxide.node.devices import UdevDeviceFinder  # pyudev: only the node needs it
    from csi_oxide.node.fs import LinuxFilesystems
    from csi_oxide.node.mount import LinuxMounter
    from csi_oxide.node.ops import NodeOps
    from csi_oxide.node.state import FileRecordStore
    from csi_oxide.node.views import LoopViews

    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="csi-oxide-node-state-"))
    finder = UdevDeviceFinder(sim_device_dir=sim_device_dir, timeout=device_timeout)
    records = FileRecordStore(state_dir)
    guard = InFlight() if inflight is None else inflight
    views = LoopViews(state_dir / "views")
    return NodeOps(finder, LinuxMounter(), LinuxFilesystems(), records, views=views, inflight=guard)
