"""The `limit` of list requests (csi_oxide_lab/sim/paging.py): a uint32 of at least 1, lowered to
the
server's maximum of 10000; one beyond uint32 does not parse (400 without an error code)."""

from __future__ import annotations

import pytest

from csi_oxide_lab.sim.errors import ApiError
from csi_oxide_lab.sim.paging import parse_limit

from .sim_helpers import Api, error_of, serve


@pytest.mark.parametrize(
    ("raw", "limit"),
    [(None, 100), ("1", 1), ("+7", 7), ("10000", 10000), ("10001", 10000), ("4294967295", 10000)],
)
def test_limits_that_parse(raw: str | None, limit: int) -> None:
    assert parse_limit(raw) == limit


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("4294967296", "too large"),  # uint32 + 1: refused, not capped
        ("99999999999999999999", "too large"),
        ("0", "at least 1"),
        ("-1", "invalid digit"),
        ("5_000", "invalid digit"),
        (" 5", "invalid digit"),
        ("ten", "invalid digit"),
    ],
)
def test_limits_that_do_not_parse(raw: str, why: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_limit(raw)
    assert (caught.value.status, caught.value.error_code) == (400, None)
    assert caught.value.message.startswith("unable to parse query parameters: limit: ")
    assert why in caught.value.message


async def test_a_limit_beyond_uint32_is_refused_over_http() -> None:
    async with serve(validate=False, instances=1) as api:
        await api.create_disk("vol-a")
        for path, params in (
            ("/v1/disks", {"project": "csi"}),
            ("/v1/snapshots", {"project": "csi"}),
            ("/v1/instances", {"project": "csi"}),
            (f"/v1/instances/{api.node}/disks", {}),
        ):
            r = await api.http.get(path, params={**params, "limit": 2**32})
            status, code, message = error_of(r)
            assert (status, code) == (400, None), path
            assert "too large" in message
            r = await api.http.get(path, params={**params, "limit": 2**32 - 1})
            assert r.status_code == 200, path


async def test_the_largest_uint32_limit_is_a_valid_request(api: Api) -> None:
    for i in range(3):
        await api.create_disk(f"vol-{i}")
    r = await api.http.get("/v1/disks", params={"project": "csi", "limit": 2**32 - 1})
    assert [d["name"] for d in r.json()["items"]] == ["vol-0", "vol-1", "vol-2"]
