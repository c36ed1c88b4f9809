"""The simulated Oxide API (``csi-oxide sim``): part of the product, not a test fake.

It serves the published paths, bodies, states, errors, pagination and headers of the Oxide API for
everything the driver uses, with the real server's rules; ``openapi/`` holds the published API
document it is checked against. It models Oxide on its own: ``spec`` holds its definitions (taken
from that document), and no module here imports the driver's (``csi_oxide.oxide`` and the rest).
Test support (direct looks into the state) is in ``inprocess``.
"""

from __future__ import annotations

from csi_oxide_lab.sim.backing import Backing, LoopBacking, MemoryBacking
from csi_oxide_lab.sim.config import SimConfig
from csi_oxide_lab.sim.faults import Fault, Faults
from csi_oxide_lab.sim.simulator import Simulator, new_token
from csi_oxide_lab.sim.versions import API_VERSION

__all__ = [
    "API_VERSION",
    "Backing",
    "Fault",
    "Faults",
    "LoopBacking",
    "MemoryBacking",
    "SimConfig",
    "Simulator",
    "new_token",
]
