"""Oxide's own rules that the node plugin follows too: what the server takes for a name or for a
UUID, the block sizes a disk may have and how many disks an instance may have. Pure: no I/O.

They live here, outside the Oxide layer (``csi_oxide.oxide``), so that the node plugin, which holds
no Oxide credentials and makes no Oxide call, follows the same rules without loading that layer
(``tests/test_layers.py`` and ``tests/test_footprint.py`` check it). The Oxide layer and the
controller take them from here too; Oxide's limits that only the controller needs (disk sizes, the
description's length) stay in ``csi_oxide.oxide.types``.
"""

from __future__ import annotations

import re
import uuid

BLOCK_SIZES = (512, 2048, 4096)
MAX_DISKS_PER_INSTANCE = 12  # its boot disk included
MAX_NAME_LENGTH = 63

# fullmatch, never ``match`` with ``$``: ``$`` also matches before a final newline.
_NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]*[a-z0-9])?")


# The canonical 8-4-4-4-12 form, which ``uuid.UUID`` always accepts (ASCII hex digits only).
_CANONICAL_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", re.ASCII)


def is_uuid(value: str) -> bool:
    """True when the server would read ``value`` as an ID rather than a name.

    The server parses with a parser that also accepts 32 hex digits without dashes, braces and the
    ``urn:uuid:`` form; Python's ``uuid.UUID`` accepts the same family.
    """
    # Two exact shortcuts (this runs several times per Oxide request): ``uuid.UUID`` only removes
    # characters before it demands 32 hex digits, so a shorter string (every driver-made name)
    # is never one; and the canonical form always is.
    if len(value) < 32:
        return False
    if _CANONICAL_UUID_RE.fullmatch(value):
        return True
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def is_valid_name(value: str) -> bool:
    """True for names the Oxide server accepts (stricter than the published regex: lowercase)."""
    return (
        0 < len(value) <= MAX_NAME_LENGTH and bool(_NAME_RE.fullmatch(value)) and not is_uuid(value)
    )


def is_canonical_uuid(value: str) -> bool:
    """True for the canonical lowercase 8-4-4-4-12 form only."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
