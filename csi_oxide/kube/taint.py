"""Lifting a taint from a Node: the node plugin's startup taint, once it is ready.

The Node is read, every taint with the key is dropped (whatever its effect), and the rest is
written back with a JSON patch whose first operation tests the ``resourceVersion`` that was read:
a concurrent writer (the kubelet updating its Node, another controller adding a taint) makes the
test fail (422) or the write conflict (409), and the read-and-patch is done again, a bounded
number of times. Taints of other keys are kept as they are. A Node without the taint is left
untouched (no write).

Synchronous, like ``KubeClient``: async callers run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

from urllib.parse import quote

import structlog

from csi_oxide.kube.client import JsonObject, KubeClient, KubeError

log = structlog.get_logger(__name__)

# The taint the node plugin's DaemonSet asks the cluster's nodes to start with (any effect), lifted
# by the plugin once it can serve volumes.
AGENT_NOT_READY = "csi.oxide.computer/agent-not-ready"
DEFAULT_ATTEMPTS = 5
# The answers of a patch that lost a race: the test operation failed, or the write conflicted.
_RACE_STATUSES = frozenset({409, 422})


def node_path(name: str) -> str:
    """The Node ``name``."""
    return f"/api/v1/nodes/{quote(name, safe='')}"


def remove_taint(
    client: KubeClient, node_name: str, key: str, *, attempts: int = DEFAULT_ATTEMPTS
) -> bool:
    """Remove every taint with ``key`` from the Node ``node_name``: whether there was any.

    ``KubeError`` when the Node cannot be read or written (``not_found`` for no such Node), or
    when every one of ``attempts`` lost a race with another writer (the last answer's error).
    """
    if not node_name or not key:
        raise ValueError("remove_taint needs a node name and a taint key")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    path = node_path(node_name)
    for attempt in range(1, attempts + 1):
        node = client.get(path)
        version, taints = _version_and_taints(node, node_name)
        kept = [t for t in taints if not (isinstance(t, dict) and t.get("key") == key)]
        if len(kept) == len(taints):
            log.debug("taint absent", node=node_name, key=key)
            return False
        ops: list[JsonObject] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "replace", "path": "/spec/taints", "value": kept}
            if kept
            else {"op": "remove", "path": "/spec/taints"},
        ]
        try:
            client.json_patch(path, ops)
        except KubeError as exc:
            if exc.status not in _RACE_STATUSES or attempt == attempts:
                raise
            log.info("node changed while its taint was removed: again", node=node_name, key=key)
            continue
        log.info("taint removed", node=node_name, key=key, removed=len(taints) - len(kept))
        return True
    raise AssertionError("unreachable: the last attempt returns or raises")


def _version_and_taints(node: JsonObject, name: str) -> tuple[str, list[object]]:
    """The Node's ``resourceVersion`` and its ``spec.taints`` (``KubeError`` when the answer is
    not shaped like a Node)."""
    metadata, spec = node.get("metadata"), node.get("spec")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    taints = spec.get("taints") if isinstance(spec, dict) else None
    if taints is None:
        taints = []
    if not isinstance(version, str) or not version or not isinstance(taints, list):
        raise KubeError(200, "InvalidAnswer", f"the Node {name!r} has no resourceVersion or taints")
    return version, taints
