"""The simulated API's vocabulary: states, sizes, limits and the name and ID rules of Oxide.

The simulator models Oxide on its own. It does not import the driver's understanding of Oxide
(``csi_oxide.oxide`` and the rest): a mistake made once in a shared definition would be made on
both sides and caught by neither. Everything here is taken from the published API document
(``openapi/oxide-api.json``, version 2026081901.0.0) or from the server behaviour recorded in the
project's Oxide facts (omicron sources); ``tests/lab/sim/test_spec.py`` checks each value the
document
states against the document. What the document does not state is marked as the simulator's
ASSUMPTION, and the README's simulator section lists those.
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum

GIB = 1024**3

# Disk sizes (nexus MIN_DISK_SIZE_BYTES / MAX_DISK_SIZE_BYTES): whole GiB, at least 1 GiB, and for
# distributed disks at most 1023 GiB (the check is `size > max`, so 1023 GiB itself is accepted).
MIN_DISK_SIZE = GIB
MAX_DISK_SIZE = 1023 * GIB

# The published `BlockSize` enum.
BLOCK_SIZES = frozenset({512, 2048, 4096})

# Disks an instance may have attached, its boot disk included (nexus MAX_DISKS_PER_INSTANCE).
MAX_DISKS_PER_INSTANCE = 12

# The published `Name` schema's maxLength.
MAX_NAME_LENGTH = 63

# ASSUMPTION: the document gives descriptions no limit; the simulator refuses more than this, so
# the driver never comes to depend on more.
MAX_DESCRIPTION_LENGTH = 512

# A list's `limit` query parameter is a uint32 of at least 1; the server serves at most
# MAX_PAGE_LIMIT items a page (a larger limit is lowered, one beyond uint32 does not parse).
UINT32_MAX = 2**32 - 1
DEFAULT_PAGE_LIMIT = 100
MAX_PAGE_LIMIT = 10_000


class DiskState(StrEnum):
    """The `state` tag of the published `DiskState` (all twelve)."""

    CREATING = "creating"
    DETACHED = "detached"
    IMPORT_READY = "import_ready"
    IMPORTING_FROM_URL = "importing_from_url"
    IMPORTING_FROM_BULK_WRITES = "importing_from_bulk_writes"
    FINALIZING = "finalizing"
    MAINTENANCE = "maintenance"
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DESTROYED = "destroyed"
    FAULTED = "faulted"


# The disk states that carry an `instance` in the published `DiskState` (attached or on the way).
ATTACHED_STATES = frozenset({DiskState.ATTACHING, DiskState.ATTACHED, DiskState.DETACHING})


class SnapshotState(StrEnum):
    """The published `SnapshotState`."""

    CREATING = "creating"
    READY = "ready"
    FAULTED = "faulted"
    DESTROYED = "destroyed"


class InstanceState(StrEnum):
    """The published `InstanceState` (an instance's `run_state`)."""

    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    MIGRATING = "migrating"
    REPAIRING = "repairing"
    FAILED = "failed"
    DESTROYED = "destroyed"


_HEX = "[0-9a-fA-F]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# The forms the server's UUID parser (Rust `Uuid::parse_str`) accepts: simple (32 hex digits),
# hyphenated, braced and URN; used with fullmatch.
_UUID_FORMS = re.compile(rf"{_HEX}{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}")


def is_uuid(value: str) -> bool:
    """True when the server reads ``value`` (a `NameOrId`) as an ID rather than a name."""
    return _UUID_FORMS.fullmatch(value) is not None


def canonical_id(value: str) -> str:
    """The lowercase hyphenated form of a value ``is_uuid`` accepts."""
    return str(uuid.UUID(value))


def name_problem(value: str) -> str | None:
    """Why the server refuses ``value`` as a `Name`, or None when it accepts it.

    The server is stricter than the published pattern (omicron ``Name::try_from``): lowercase ASCII
    letters, digits and ``-`` only, a lowercase letter first, no ``-`` last, and nothing its UUID
    parser accepts.
    """
    if not value:
        return "name requires at least one character"
    if len(value) > MAX_NAME_LENGTH:
        return f"name may contain at most {MAX_NAME_LENGTH} characters"
    if not ("a" <= value[0] <= "z"):
        return "name must begin with an ASCII lowercase character"
    for ch in value:
        if not (("a" <= ch <= "z") or ("0" <= ch <= "9") or ch == "-"):
            return (
                f'name contains invalid character: "{ch}" '
                '(allowed characters are lowercase ASCII, digits, and "-")'
            )
    if value.endswith("-"):
        return 'name cannot end with "-"'
    if is_uuid(value):
        return "name cannot be a UUID"
    return None
