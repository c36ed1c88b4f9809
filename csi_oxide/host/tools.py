"""Where the system tools the driver runs are found: ``PATH``, then where Debian installs them.

util-linux, e2fsprogs and xfsprogs put ``losetup``, ``blkid``, ``mkfs.*`` and friends in
``/usr/sbin`` and ``/sbin``, which are not on a normal user's ``PATH`` on Debian (nor on that of a
process started with a trimmed environment). A tool is therefore looked up on ``PATH`` first and
then in those directories, so the node's runner (``csi_oxide.node.exec``), the harness and
``csi-oxide doctor`` find the same binary everywhere.
"""

from __future__ import annotations

import os
import shutil

SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find(name: str, *, path: str | None = None) -> str | None:
    """The executable ``name`` on ``path`` (default: ``PATH``) or in ``SBIN_DIRS``; None if
    neither has it."""
    search = os.environ.get("PATH", os.defpath) if path is None else path
    return shutil.which(name, path=os.pathsep.join([search, *SBIN_DIRS]))
