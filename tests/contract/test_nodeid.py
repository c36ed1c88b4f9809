from __future__ import annotations

from pathlib import Path

import pytest

from csi_oxide.contract.nodeid import resolve_node_id
from csi_oxide.errors import ConfigurationError

UUID = "7d3b1c2a-0f4e-4e8a-9b1c-2d3e4f5a6b7c"


def test_flag_wins_over_env_and_smbios(tmp_path: Path) -> None:
    smbios = tmp_path / "product_uuid"
    smbios.write_text("11111111-2222-3333-4444-555555555555\n")
    env = {"CSI_OXIDE_NODE_ID": "22222222-2222-3333-4444-555555555555"}
    assert resolve_node_id(UUID, env, smbios_path=smbios) == UUID


def test_env_then_smbios(tmp_path: Path) -> None:
    smbios = tmp_path / "product_uuid"
    smbios.write_text(UUID.upper() + "\n")
    assert resolve_node_id(None, {"CSI_OXIDE_NODE_ID": UUID}, smbios_path=smbios) == UUID
    # SMBIOS prints upper case: the node ID is normalised to the API's lowercase form.
    assert resolve_node_id(None, {}, smbios_path=smbios) == UUID


@pytest.mark.parametrize(
    "bad", ["fake-node-id", "not-a-uuid", UUID.replace("-", ""), "{" + UUID + "}"]
)
def test_non_uuid_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="UUID"):
        resolve_node_id(bad, {}, smbios_path=tmp_path / "none")


def test_missing_everything_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="CSI_OXIDE_NODE_ID"):
        resolve_node_id(None, {}, smbios_path=tmp_path / "none")
