"""The one place the node runs external tools (mkfs, blkid, mount, resize): asyncio subprocesses.

Every tool runs under ``setpriv --pdeathsig KILL`` when util-linux's setpriv is there: if the
plugin dies (kill -9, OOM), the kernel kills its running tool too, so no orphaned mkfs keeps
writing to a device while a restarted plugin looks at it. (mkfs also opens the device O_EXCL, and
the node checks for that before it decides anything, which covers a host without setpriv.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import structlog

from csi_oxide.errors import FailedPreconditionError, InternalError
from csi_oxide.host import tools

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailedError(InternalError):
    """A tool exited with a code the caller did not accept."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{' '.join(argv)} failed with exit code {returncode}: {detail}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


async def run(
    argv: Sequence[str], *, accept: Collection[int] = (0,), limit: float = DEFAULT_TIMEOUT
) -> Completed:
    """Run ``argv`` (no shell); CommandFailedError unless its exit code is in ``accept``."""
    program = tools.find(argv[0])  # also in /usr/sbin and /sbin when they are not on PATH
    if program is None:
        raise FailedPreconditionError(
            f"{argv[0]} is not installed on this node (see `csi-oxide doctor --mode node`)"
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            *_with_pdeathsig([program, *argv[1:]]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise FailedPreconditionError(
            f"{argv[0]} is not installed on this node (see `csi-oxide doctor --mode node`)"
        ) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailedError(argv, -9, f"killed after {limit:.0f}s") from None
    code = proc.returncode if proc.returncode is not None else -1
    result = Completed(
        tuple(argv), code, out.decode(errors="replace"), err.decode(errors="replace")
    )
    log.debug("command", argv=list(argv), returncode=code)
    if code not in accept:
        raise CommandFailedError(argv, code, result.stderr or result.stdout)
    return result


@functools.cache
def _setpriv() -> str | None:
    return tools.find("setpriv")


def _with_pdeathsig(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the kernel kills it when this process dies."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)
