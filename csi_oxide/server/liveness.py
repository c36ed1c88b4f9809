"""The liveness answer served on ``/healthz`` (beside ``/metrics``), in place of livenessprobe.

Alive means: the CSI socket accepts a connection and answers Identity.Probe within the timeout
(the event loop is not stuck, the socket file was not lost), and, when the plugin registers itself
with the kubelet, the kubelet did not refuse it. Probe's ``ready`` flag is deliberately ignored:
a slow or unreachable Oxide API must not restart a healthy controller (csi_oxide.daemon.health).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc

Check = Callable[[], "str | None"]

PROBE_TIMEOUT = 5.0


def probe_socket(path: Path, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the CSI server on ``path`` answers Probe in time, else what went wrong."""
    if not path.exists():
        return f"CSI socket {path} does not exist"
    with grpc.insecure_channel(f"unix://{path}") as channel:
        try:
            csi_grpc.IdentityStub(channel).Probe(csi.ProbeRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "error"
            return f"Probe on {path} failed: {name}"
    return None


def combine(*checks: Check) -> Check:
    """A check that reports the first problem of ``checks`` (run in order)."""

    def check() -> str | None:
        for one in checks:
            problem = one()
            if problem is not None:
                return problem
        return None

    return check
