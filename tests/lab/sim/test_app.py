"""The simulator's HTTP behaviour: auth, api-version, parse errors, routes, pagination, request
IDs, contract validation, scripted faults, random 503s and latency."""

from __future__ import annotations

import base64
import itertools
import json
import time
from pathlib import Path

import pytest

from csi_oxide_lab.sim import API_VERSION, SimConfig, Simulator, contract, records
from csi_oxide_lab.sim.config import parse_op_latency
from csi_oxide_lab.sim.paging import decode_token, encode_token
from tests.oxide_bodies import disk_create_body
from tests.units import GIB

from .sim_helpers import Api, error_of, serve


@pytest.mark.parametrize(
    "header",
    [
        "Bearer oxide-token-wrong",
        "Bearer " + "ab" * 20,  # the right secret without the required prefix
        "Basic oxide-token-" + "ab" * 20,
    ],
)
async def test_unauthorized(api: Api, header: str) -> None:
    r = await api.http.get("/v1/utilization", headers={"authorization": header})
    assert error_of(r) == (401, "Unauthorized", "credentials missing or invalid")


async def test_no_authorization_header_at_all() -> None:
    async with serve() as api:
        del api.http.headers["authorization"]
        r = await api.http.get("/v1/disks", params={"project": "csi"})
        assert error_of(r) == (401, "Unauthorized", "credentials missing or invalid")
        assert api.sim.contract_violations == []


async def test_generated_token_has_the_real_format() -> None:
    sim = Simulator(SimConfig())
    assert sim.token.startswith("oxide-token-")
    assert len(sim.token) == len("oxide-token-") + 40
    int(sim.token.removeprefix("oxide-token-"), 16)
    assert sim.token not in repr(sim)
    secret = "oxide-token-" + "cd" * 20
    assert Simulator(SimConfig(token=secret)).token == secret
    assert secret not in repr(SimConfig(token=secret))
    assert "<redacted>" in repr(SimConfig(token=secret))


def test_spec_location_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    assert contract.spec_path().name == "oxide-api.json"
    monkeypatch.setenv("CSI_OXIDE_OPENAPI", "/elsewhere/api.json")
    assert str(contract.spec_path()) == "/elsewhere/api.json"


@pytest.mark.parametrize("name", ["api-version", "API-Version", "Api-Version"])
@pytest.mark.parametrize("version", ["2026060800.0.0", "2026072800.0.0", API_VERSION])
async def test_api_versions_up_to_ours_are_accepted(api: Api, name: str, version: str) -> None:
    r = await api.http.get("/v1/utilization", headers={name: version})
    assert r.status_code == 200


async def test_newer_api_version_is_refused(api: Api) -> None:
    r = await api.http.get("/v1/utilization", headers={"API-Version": "2026090100.0.0"})
    assert error_of(r) == (
        400,
        None,
        "server does not support this API version: 2026090100.0.0",
    )
    r = await api.http.get("/v1/utilization", headers={"api-version": "banana"})
    assert error_of(r)[:2] == (400, None)


async def test_json_parse_error_has_no_error_code() -> None:
    async with serve(validate=False) as api:
        r = await api.http.post(
            "/v1/disks",
            params={"project": "csi"},
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        status, code, message = error_of(r)
        assert (status, code) == (400, None)
        assert message.startswith("unable to parse JSON body: ")
        r = await api.http.post("/v1/disks", params={"project": "csi"}, json={"name": "x"})
        status, code, message = error_of(r)
        assert (status, code) == (400, None)
        assert "missing field" in message


async def test_unknown_route_and_method(api: Api) -> None:
    r = await api.http.get("/v1/subnet-pools")  # published, but not simulated
    assert error_of(r) == (404, None, "Not Found")
    r = await api.http.put("/v1/disks/vol-a", params={"project": "csi"})
    assert error_of(r) == (405, None, "Method Not Allowed")


async def test_unpublished_path_is_a_violation_but_still_404() -> None:
    async with serve() as api:
        r = await api.http.get("/v2/whatever")
        assert error_of(r) == (404, None, "Not Found")
        assert len(api.sim.contract_violations) == 1


async def test_request_id_header_on_every_response(api: Api) -> None:
    ok = await api.http.get("/v1/projects/csi")
    assert ok.json()["id"] == api.sim.project_id
    missing = await api.http.get("/v1/projects/nope")
    assert error_of(missing)[:2] == (404, "ObjectNotFound")
    ids = {ok.headers["x-request-id"], missing.headers["x-request-id"]}
    assert len(ids) == 2


async def test_a_request_breaking_the_schema_is_recorded() -> None:
    async with serve() as api:
        r = await api.create_disk("Not-Valid", GIB)
        status, code, message = error_of(r)
        assert (status, code) == (400, None)
        assert "published Oxide API" in message
        assert len(api.sim.contract_violations) == 1
        assert "POST /v1/disks" in api.sim.contract_violations[0]
        assert api.sim.disk_names() == []


async def test_a_response_breaking_the_schema_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve() as api:
        await api.create_disk("vol-a")
        monkeypatch.setattr(records.DiskRecord, "to_json", lambda *a, **k: {"id": "nope"})
        r = await api.http.get("/v1/disks/vol-a", params={"project": "csi"})
        assert error_of(r) == (500, "Internal", "Internal Server Error")
        assert len(api.sim.contract_violations) == 1
        assert api.sim.contract_violations[0].startswith("response 200 to GET /v1/disks/vol-a")


# ---- pagination ----


async def _all_pages(api: Api, path: str, **params: object) -> tuple[list[str], int]:
    names: list[str] = []
    pages = 0
    query: dict[str, object] = dict(params)
    while True:
        body = (await api.http.get(path, params=query)).json()
        pages += 1
        names += [item["name"] for item in body["items"]]
        if body["next_page"] is None:
            assert body["items"] == []
            return names, pages
        query = {"page_token": body["next_page"], "limit": params.get("limit", 100)}


async def test_pagination_over_several_pages(api: Api) -> None:
    names = [f"vol-{i:02d}" for i in range(7)]
    for name in reversed(names):
        await api.create_disk(name)
    got, pages = await _all_pages(api, "/v1/disks", project="csi", limit=3)
    assert got == names
    assert pages == 4  # 3 + 3 + 1 + the empty page that ends the scan
    got, _ = await _all_pages(api, "/v1/disks", project="csi", limit=2, sort_by="name_descending")
    assert got == list(reversed(names))
    by_id = sorted([str((await api.disk(n))["id"]) for n in names])
    items: list[str] = []
    query: dict[str, object] = {"project": "csi", "sort_by": "id_ascending", "limit": 4}
    while True:
        body = (await api.http.get("/v1/disks", params=query)).json()
        items += [d["id"] for d in body["items"]]
        if body["next_page"] is None:
            break
        query = {"page_token": body["next_page"]}
    assert items == by_id


async def test_default_limit_is_100_and_max_10000(api: Api) -> None:
    for i in range(101):
        await api.create_disk(f"v{i:03d}")
    body = (await api.http.get("/v1/disks", params={"project": "csi"})).json()
    assert len(body["items"]) == 100
    body = (await api.http.get("/v1/disks", params={"project": "csi", "limit": 10000})).json()
    assert len(body["items"]) == 101


async def test_token_carries_the_scan_params(api: Api) -> None:
    for name in ("a1", "a2", "a3"):
        await api.create_disk(name)
    first = (
        await api.http.get(
            "/v1/disks", params={"project": "csi", "limit": 1, "sort_by": "name_descending"}
        )
    ).json()
    token = first["next_page"]
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert raw["page_start"] == {"sort_by": "name_descending", "project": "csi", "last_seen": "a3"}
    # sort_by sent again is ignored: the token wins
    second = (
        await api.http.get("/v1/disks", params={"page_token": token, "sort_by": "name_ascending"})
    ).json()
    assert [d["name"] for d in second["items"]] == ["a2", "a1"]


async def test_bad_page_token_and_missing_project() -> None:
    async with serve(validate=False) as api:
        r = await api.http.get("/v1/disks", params={"page_token": "not-a-token"})
        assert error_of(r)[:2] == (400, None)
        r = await api.http.get("/v1/disks")
        status, code, message = error_of(r)
        assert (status, code) == (400, None)
        assert "project" in message


def test_token_codec_round_trip() -> None:
    token = encode_token("id_ascending", "csi", "0000-last")
    assert decode_token(token) == ("id_ascending", "csi", "0000-last")
    assert not set(token.rstrip("=")) - set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )


# ---- faults, fail_rate, latency ----


async def test_injected_fault_before_applying(api: Api) -> None:
    api.sim.faults.inject("disk_create", status=503, times=2)
    for _ in range(2):
        r = await api.create_disk("vol-a")
        assert error_of(r) == (503, "ServiceNotAvailable", "Service Unavailable")
        assert api.sim.disk_names() == []
    assert (await api.create_disk("vol-a")).status_code == 201
    assert api.sim.faults.pending("disk_create") == 0
    assert api.sim.request_counts["disk_create"] == 3


async def test_injected_fault_after_applying_loses_the_answer(api: Api) -> None:
    api.sim.faults.inject("disk_create", status=500, after=True)
    r = await api.create_disk("vol-a")
    assert error_of(r) == (500, "Internal", "Internal Server Error")
    assert api.sim.disk_names() == ["vol-a"]
    r = await api.create_disk("vol-a")
    assert error_of(r)[:2] == (400, "ObjectAlreadyExists")


async def test_injected_fault_only_hits_its_operation(api: Api) -> None:
    api.sim.faults.inject("disk_delete", status=507)
    assert (await api.create_disk("vol-a")).status_code == 201
    r = await api.http.delete("/v1/disks/vol-a", params={"project": "csi"})
    assert error_of(r)[:2] == (507, "InsufficientCapacity")
    assert api.sim.disk_names() == ["vol-a"]


def test_fault_arguments_are_checked() -> None:
    sim = Simulator(SimConfig())
    with pytest.raises(ValueError, match="times"):
        sim.faults.inject("disk_view", times=0)
    with pytest.raises(ValueError, match="status"):
        sim.faults.inject("disk_view", status=200)


async def _failures(seed: int) -> list[int]:
    async with serve(fail_rate=0.5, seed=seed) as api:
        statuses = [(await api.http.get("/v1/utilization")).status_code for _ in range(40)]
        assert api.sim.contract_violations == []
        return statuses


async def test_fail_rate_is_seeded() -> None:
    first = await _failures(7)
    assert first == await _failures(7)
    assert set(first) == {200, 503}
    assert 5 < first.count(503) < 35


async def test_latency_is_added() -> None:
    async with serve(latency_ms=50) as api:
        start = time.monotonic()
        await api.http.get("/v1/utilization")
        assert time.monotonic() - start >= 0.05


async def test_a_lost_answer_still_applies_the_request() -> None:
    async with serve(lost_rate=1.0, seed=1) as api:
        answer = await api.http.post(
            "/v1/disks",
            params={"project": "csi"},
            json=disk_create_body("lost-answer", GIB),
        )
        assert answer.status_code == 503
        assert api.sim.disk_names() == ["lost-answer"]


async def test_jitter_is_bounded_and_seeded() -> None:
    sim = Simulator(SimConfig(latency_ms=10, jitter_ms=20, seed=3))
    delays = [sim.draw_delay() for _ in range(50)]
    assert all(0.010 <= d <= 0.030 for d in delays)
    assert len(set(delays)) > 40
    again = Simulator(SimConfig(latency_ms=10, jitter_ms=20, seed=3))
    assert [again.draw_delay() for _ in range(50)] == delays


async def test_the_request_log_has_one_line_per_answer(tmp_path: Path) -> None:
    log_path = tmp_path / "requests.jsonl"
    op_latency = parse_op_latency("mutation=3:4,read=1:2")
    async with serve(op_latency=op_latency, request_log=log_path, hotplug=True, seed=2) as api:
        before = time.monotonic()
        assert (await api.create_disk("vol-a")).status_code == 201
        assert (await api.attach("vol-a")).status_code == 202
        await api.disk("vol-a")
        assert (await api.http.get("/v1/nowhere")).status_code == 404
        after = time.monotonic()
        lines = log_path.read_text().splitlines()  # written as they happen, not on close
    entries = [json.loads(line) for line in lines]
    assert [(e["operation"], e["method"], e["status"]) for e in entries] == [
        ("disk_create", "POST", 201),
        ("instance_disk_attach", "POST", 202),
        ("disk_view", "GET", 200),
        (None, "GET", 404),
    ]
    assert [e["target"] for e in entries] == ["vol-a", "vol-a", None, None]
    assert entries[2]["path"] == "/v1/disks/vol-a"
    assert 0.003 <= entries[0]["delay"] <= 0.004
    assert 0.003 <= entries[1]["delay"] <= 0.004
    assert 0.001 <= entries[2]["delay"] <= 0.002
    assert entries[3]["delay"] == 0  # no route, no operation latency
    for e in entries:
        assert before <= e["arrived"] <= e["answered"] <= after
    for earlier, later in itertools.pairwise(entries):
        assert earlier["answered"] <= later["arrived"]


async def test_no_request_log_by_default(tmp_path: Path) -> None:
    async with serve() as api:
        assert not api.sim.logs_requests
        assert (await api.create_disk("vol-a")).status_code == 201
    assert list(tmp_path.iterdir()) == []
