"""Ties a command's whole process group to the life of the process that started it.

``python -m csi_oxide_lab.guest.tether -- COMMAND...`` runs COMMAND (stdin from /dev/null) and waits
for it, while a thread reads the tether's own stdin: a pipe whose write end only the starting
process holds. When that process dies, however it dies (SIGKILL included), the kernel closes the
pipe; the read sees end-of-file and the tether kills its process group, COMMAND and everything
COMMAND started (vng forks virtme-run, which forks qemu: none of them outlives the simulator).

Started in a session of its own (``start_new_session``), so the group holds only the tether and
what it runs. The tether exits with COMMAND's status when COMMAND ends first. Closing the pipe on
purpose does the same as dying: the group is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence


def _kill_group_at_eof(fd: int) -> None:
    """Read ``fd`` until end-of-file (the holder of the write end is gone), then kill the group."""
    while os.read(fd, 4096):
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _start(argv: Sequence[str]) -> int:
    """Fork and exec ``argv`` with stdin from /dev/null; the child's pid."""
    pid = os.fork()
    if pid == 0:  # the child: only exec (or exit) here, no Python-level clean-up
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.execvp(argv[0], list(argv))  # noqa: S606 (the tethered command, no shell)
        except OSError as exc:
            os.write(2, f"tether: cannot run {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    return pid


def main(argv: Sequence[str]) -> int:
    """Run ``argv`` tethered to our stdin; its exit status (128 + N for signal N)."""
    command = list(argv[1:]) if argv and argv[0] == "--" else list(argv)
    if not command:
        print("usage: python -m csi_oxide_lab.guest.tether -- COMMAND...", file=sys.stderr)
        return 2
    pid = _start(command)  # fork before any thread exists
    watcher = threading.Thread(target=_kill_group_at_eof, args=(0,), daemon=True)
    watcher.start()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
