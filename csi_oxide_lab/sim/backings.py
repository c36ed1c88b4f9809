"""The backing the simulator runs on, by name.

Its own module so that no import runs in a circle: ``guest.backing`` builds on ``sim.backing``,
and this module, not ``sim.backing``, reaches into the guest package (only when asked for).
"""

from __future__ import annotations

from pathlib import Path

from csi_oxide_lab.sim.backing import Backing, LoopBacking, MemoryBacking


def make_backing(kind: str, state_dir: Path | None, local_instances: int = 1) -> Backing:
    """The backing named ``kind`` (``memory``, ``loop`` or ``guest``) for ``local_instances``
    local instances (the guest is one: it takes no more)."""
    if kind == "memory":
        return MemoryBacking()
    if kind == "loop":
        return LoopBacking(state_dir, local_instances)
    if kind == "guest":
        if local_instances != 1:
            raise ValueError("the guest backing has one local instance (the qemu guest)")
        from csi_oxide_lab.sim.guest_backing import (
            GuestBacking,  # qemu's world, only when asked for
        )

        return GuestBacking(state_dir)
    raise ValueError(f"unknown backing {kind!r}: use memory, loop or guest")
