"""Matching a method and path to one served operation."""

from __future__ import annotations

import pytest

from csi_oxide_lab.sim.routing import NoRouteError, match


def test_a_path_parameter_is_matched_whole() -> None:
    route, params = match("GET", "/v1/disks/csi-0123456789abcdef")
    assert route.operation_id == "disk_view"
    assert params == {"disk": "csi-0123456789abcdef"}


@pytest.mark.parametrize("path", ["/v1/disks/a/b", "/v1/disks/", "/v1/disksx/a"])
def test_anything_but_a_served_path_is_no_route(path: str) -> None:
    with pytest.raises(NoRouteError) as caught:
        match("GET", path)
    assert caught.value.status == 404
