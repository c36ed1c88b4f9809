"""The simulator's only way to start a subprocess (losetup, cp for the loop backing)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class CommandError(Exception):
    """A command exited non-zero or could not start; the message names it and its stderr."""


def run_command(argv: Sequence[str], *, timeout: float = 60.0) -> str:
    """Run ``argv`` (no shell), return its stdout stripped; raise CommandError on failure."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CommandError(f"{argv[0]} could not run: {exc}") from exc
    if done.returncode != 0:
        raise CommandError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()
