"""The node ID: the Oxide instance UUID this node plugin runs on.

Order: ``--node-id``, then env ``CSI_OXIDE_NODE_ID``, then SMBIOS (the instance UUID is the SMBIOS
system UUID on an Oxide guest). Anything that is not a UUID is refused at start.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

from csi_oxide.errors import ConfigurationError

SMBIOS_UUID = Path("/sys/class/dmi/id/product_uuid")
ENV_NODE_ID = "CSI_OXIDE_NODE_ID"


def parse_node_id(value: str, *, source: str) -> str:
    """The canonical lowercase UUID form of ``value``, or ConfigurationError naming ``source``."""
    text = value.strip()
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise ConfigurationError(
            f"node ID {text!r} from {source} is not a UUID; the node ID must be the Oxide "
            "instance UUID (set --node-id or CSI_OXIDE_NODE_ID, or make "
            f"{SMBIOS_UUID} readable)"
        ) from None
    if len(text) != 36:
        raise ConfigurationError(
            f"node ID {text!r} from {source} is not in the 8-4-4-4-12 UUID form"
        )
    return str(parsed)


def resolve_node_id(
    flag: str | None, env: Mapping[str, str], *, smbios_path: Path = SMBIOS_UUID
) -> str:
    """Find and validate the node ID (see the module docstring for the order)."""
    if flag:
        return parse_node_id(flag, source="--node-id")
    if env.get(ENV_NODE_ID):
        return parse_node_id(env[ENV_NODE_ID], source=ENV_NODE_ID)
    try:
        text = smbios_path.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigurationError(
            f"no node ID: --node-id and {ENV_NODE_ID} are unset and {smbios_path} cannot be read "
            f"({exc.strerror}); run as root on an Oxide instance or set the node ID"
        ) from None
    return parse_node_id(text, source=str(smbios_path))
