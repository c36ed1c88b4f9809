"""The publish_context contract between controller and node."""

from __future__ import annotations

import pytest

from csi_oxide.publish_context import ORIGIN_KEY, Origin, decode, encode


@pytest.mark.parametrize("origin", list(Origin))
def test_every_origin_survives_the_trip(origin: Origin) -> None:
    assert decode(encode(origin)) is origin


@pytest.mark.parametrize("context", [{}, {ORIGIN_KEY: ""}, {ORIGIN_KEY: "Blank"}, {"x": "blank"}])
def test_missing_or_unknown_proves_nothing(context: dict[str, str]) -> None:
    assert decode(context) is None
