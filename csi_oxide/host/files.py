"""Reading the small files a process is handed (tokens, a namespace, a credentials profile)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_small(path: Path, limit: int) -> str:
    """The text of ``path``, a regular file of at most ``limit`` bytes (``ValueError`` otherwise;
    ``OSError`` when it cannot be opened).

    The file is opened without blocking and checked AFTER opening (no window for a swap): a token
    may be read on an event loop before every request, so a FIFO behind a Secret's symlink must
    not block it, nor a symlink to ``/dev/zero`` feed it without end.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")
