"""The tests' loop devices: made with ``attach`` (or a ``Loops`` that records them), torn down
with ``detach_if_ours``, which detaches a device only while it is still over the file it was
made over, or, given the number of its attachment (as ``Loops`` records it), while it still is
that very attachment (``csi_oxide.host.loops``). A device detached meanwhile (by the test, by the
code under test, by an autoclear) may already be another process's under the same number: a
test run beside this one, a cluster's simulator, a developer's own. Never ``losetup -d`` a
remembered name."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from csi_oxide.host.loops import DELETED, attachment, backing_of, detach_if_ours

__all__ = [
    "DELETED",
    "Loops",
    "attach",
    "attachment",
    "backing_of",
    "detach_if_ours",
]


def attach(backing: str | os.PathLike[str], *options: str) -> str:
    """A new loop device over ``backing`` (``losetup --find --show``, with ``options``): its
    /dev path."""
    argv = ["losetup", "--find", "--show", *options, os.fspath(backing)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Loops:
    """The loop devices a test made, each with its file and the number of its attachment (kept
    even if the test renames the file); iterating gives their /dev paths."""

    made: list[tuple[str, str, int | None]] = field(default_factory=list)

    def attach(self, backing: str | os.PathLike[str], *options: str) -> str:
        dev = attach(backing, *options)
        self.made.append((dev, os.path.abspath(backing), attachment(dev, backing)))
        return dev

    def __iter__(self) -> Iterator[str]:
        return iter([dev for dev, _, _ in self.made])

    def __contains__(self, device: object) -> bool:
        return any(dev == device for dev, _, _ in self.made)

    def detach(self) -> None:
        """Detach those that still are the attachments made, the newest first (best effort, as
        a teardown: a refused detach is passed over); forget them all."""
        for dev, backing, attached in reversed(self.made):
            with contextlib.suppress(OSError):
                detach_if_ours(dev, backing, attached)
        self.made.clear()
