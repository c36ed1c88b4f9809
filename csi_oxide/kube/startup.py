"""The node plugin's startup taint: lifted from its own Node once the scheduler can count on it.

A node may join the cluster with the taint ``csi.oxide.computer/agent-not-ready`` (put there by
whoever makes the node: its kubelet's ``--register-with-taints``, or the node pool's settings).
Until the taint goes, the scheduler places no pod that does not tolerate it on the node, so no
pod with a volume lands there before the kubelet knows this driver's attach limit. The plugin
lifts it when both hold:

- its own CSI socket answers Probe (``ready``), and
- the Node's CSINode lists ``csi.oxide.computer`` with this plugin's node ID: the kubelet
  registered the driver (through the plugin's own registration API or node-driver-registrar), so
  the scheduler sees the node's volume limit.

Until then it looks again every ``interval`` seconds; a failure to reach the API is logged once
per streak and retried, never fatal (the plugin serves volumes either way). A Node without the
taint costs one read of the CSINode and one of the Node, and no write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import quote

import structlog

from csi_oxide import DRIVER_NAME
from csi_oxide.kube.client import KubeClient, KubeError
from csi_oxide.kube.taint import AGENT_NOT_READY, remove_taint

log = structlog.get_logger(__name__)

DEFAULT_INTERVAL = 2.0


def csinode_path(node_name: str) -> str:
    """The CSINode of the Node ``node_name`` (the kubelet names it after its Node)."""
    return f"/apis/storage.k8s.io/v1/csinodes/{quote(node_name, safe='')}"


def registered(client: KubeClient, node_name: str, node_id: str) -> bool:
    """Whether the CSINode of ``node_name`` lists this driver with ``node_id`` (False while the
    kubelet has not made the CSINode yet)."""
    try:
        csinode = client.get(csinode_path(node_name))
    except KubeError as exc:
        if exc.not_found:
            return False
        raise
    spec = csinode.get("spec")
    drivers = spec.get("drivers") if isinstance(spec, dict) else None
    return any(
        isinstance(d, dict) and d.get("name") == DRIVER_NAME and d.get("nodeID") == node_id
        for d in drivers or []
    )


async def lift_when_ready(
    client: KubeClient,
    *,
    node_name: str,
    node_id: str,
    ready: Callable[[], str | None],
    interval: float = DEFAULT_INTERVAL,
) -> bool:
    """Wait until the plugin is ``ready`` (None: no problem) and registered on ``node_name``,
    then lift the startup taint; whether there was one. Runs until done or cancelled."""
    failing: str | None = None
    while True:
        try:
            problem = await asyncio.to_thread(ready)
            if problem is None and await asyncio.to_thread(registered, client, node_name, node_id):
                removed = await asyncio.to_thread(remove_taint, client, node_name, AGENT_NOT_READY)
                log.info("startup taint checked", node=node_name, removed=removed)
                return removed
        except KubeError as exc:
            if failing != exc.reason:
                log.warning("startup taint: the API refused", node=node_name, error=str(exc))
                failing = exc.reason
        await asyncio.sleep(interval)
