"""Test support shipped with the package (as structlog ships ``structlog.testing``): the driver
against an in-process simulator, for tests, benchmarks and scripts. Nothing in the product
imports this module.

- ``oxide_client``: an ``HttpOxideClient`` with a fixed token and quick retries over a given
  carrier (``csi_oxide_lab.asgi.AsgiCarrier`` to an in-process app: the simulator, or a test's
  scripted server).
- ``sim_client``: such a client for a simulator served in-process: the driver's requests, encoded
  as for the wire, handed to its ASGI app, every request and answer checked against the published
  API document.
- ``controller_env``: the one environment of the controller tests: a simulator, a client of it,
  and ``ControllerOps`` built as the daemon builds it (``csi_oxide.wiring``).

The simulator's own in-process helpers (direct looks at its state) are
``csi_oxide_lab.sim.inprocess.InProcessSimulator``; the processes of a real run (simulator, driver,
csi-sanity) are ``csi_oxide_lab.harness``.
"""

from __future__ import annotations

from dataclasses import dataclass

from csi_oxide.controller.ops import ControllerOps
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.oxide.client import DEFAULT_TIMEOUT, PAGE_LIMIT, HttpOxideClient, RetryPolicy
from csi_oxide.oxide.credentials import StaticToken
from csi_oxide.oxide.transport import Carrier
from csi_oxide.wiring import build_controller_ops
from csi_oxide_lab.asgi import AsgiCarrier
from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.sim.inprocess import InProcessSimulator

QUICK_RETRIES = RetryPolicy(max_elapsed=5.0, base_delay=0.001, max_delay=0.01)


def oxide_client(
    *,
    host: str,
    token: str,
    project: str,
    carrier: Carrier,
    retry: RetryPolicy | None = None,
    page_limit: int = PAGE_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
) -> HttpOxideClient:
    """A client with a fixed token and quick retries (unless ``retry``), over ``carrier``."""
    return HttpOxideClient(
        host,
        StaticToken(token),
        project,
        carrier=carrier,
        retry=retry or QUICK_RETRIES,
        page_limit=page_limit,
        timeout=timeout,
    )


def sim_client(sim: Simulator, *, validate: bool = True) -> HttpOxideClient:
    """A client of ``sim`` served in-process (``validate``: check every request and answer
    against the published API document; violations land in ``sim.contract_violations``)."""
    return oxide_client(
        host="http://sim",
        token=sim.token,
        project=sim.config.project,
        carrier=AsgiCarrier(sim.asgi_app(validate=validate)),
    )


@dataclass
class ControllerEnv:
    """A simulator, a client of it, and the controller's operations over that client."""

    sim: InProcessSimulator
    api: HttpOxideClient
    ops: ControllerOps
    node: str  # the simulator's local instance: the node volumes are published to


def controller_env(
    *, cluster: str = "test", inflight: InFlight | None = None, **config: object
) -> ControllerEnv:
    """A fresh simulator (``config``: ``SimConfig`` fields) and a controller of ``cluster`` over
    it (``inflight``: its guard; default, one that never cuts). Close ``env.api`` afterwards."""
    sim = InProcessSimulator(SimConfig(**config))  # type: ignore[arg-type]
    api = sim_client(sim)
    ops = build_controller_ops(api, cluster=cluster, inflight=inflight or InFlight())
    return ControllerEnv(sim, api, ops, sim.local_instance_id)
