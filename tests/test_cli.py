"""``csi-oxide serve`` flags of the controller's Oxide client."""

from __future__ import annotations

import pytest

from csi_oxide.cli import build_parser
from csi_oxide.oxide.client import DEFAULT_TIMEOUT


def test_the_oxide_request_deadline_is_a_flag_with_an_env_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CSI_OXIDE_OXIDE_TIMEOUT", raising=False)
    assert build_parser().parse_args(["serve"]).oxide_timeout == DEFAULT_TIMEOUT
    assert build_parser().parse_args(["serve", "--oxide-timeout", "2.5"]).oxide_timeout == 2.5
    monkeypatch.setenv("CSI_OXIDE_OXIDE_TIMEOUT", "30")
    assert build_parser().parse_args(["serve"]).oxide_timeout == 30.0


@pytest.mark.parametrize("value", ["0", "-1", "soon", "1e9"])
def test_a_bad_oxide_request_deadline_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--oxide-timeout", value])
    assert "--oxide-timeout" in capsys.readouterr().err
