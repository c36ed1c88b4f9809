"""HttpOxideClient: against scripted servers (tests/oxide/scripted.py: a handler per test, reached
in-process through the lab's AsgiCarrier with the requests encoded as for the wire): headers,
errors, retries on a fake clock, pagination, the concurrency cap, token rotation, secrecy."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from csi_oxide import __version__
from csi_oxide.daemon import log
from csi_oxide.errors import ConfigurationError
from csi_oxide.oxide import errors as oxerr
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.client import (
    API_VERSION,
    PAGE_LIMIT,
    HttpOxideClient,
    RequestRecord,
    RetryPolicy,
)
from csi_oxide.oxide.credentials import FileToken, StaticToken, load_credentials
from csi_oxide.oxide.transport import TransportFailure
from csi_oxide.oxide.types import DiskSpec, DiskState
from csi_oxide_lab.testing import oxide_client
from tests.oxide.fakes import FakeClock
from tests.oxide.scripted import Handler, Reply, Seen, lost, scripted, timed_out
from tests.oxide_bodies import DISK_UUID, INSTANCE_UUID, disk_body, disk_create_body, error_body
from tests.units import GIB

TOKEN = "oxide-token-c0ffee15secret0123456789"
PROJECT = "k8s"


def disk_answer(request: Seen, state: str = "detached") -> dict[str, object]:
    """A disk body about the disk ``request`` asks for (the client refuses answers about another
    one): the name from the path or the body, unless that is a UUID."""
    asked = request.path.rsplit("/", 1)[-1]
    if request.content:
        body = request.json()
        asked = body.get("name") or body.get("disk") or asked
    return disk_body() if asked == DISK_UUID else disk_body(asked, state=state)


def error(status: int, code: str | None, message: str, rid: str = "req-1") -> Reply:
    return Reply.json(status, error_body(message, code, rid), headers={"x-request-id": rid})


def make_client(
    handler: Handler,
    clock: FakeClock | None = None,
    **options: object,
) -> HttpOxideClient:
    clock = clock or FakeClock()
    return HttpOxideClient(
        "http://oxide.test",
        StaticToken(TOKEN),
        PROJECT,
        carrier=scripted(handler),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        random=lambda: 0.5,
        **options,  # type: ignore[arg-type]
    )


# ---- requests as sent -------------------------------------------------------------------------


async def test_every_request_carries_version_token_and_user_agent() -> None:
    seen: list[Seen] = []

    def handler(request: Seen) -> Reply:
        seen.append(request)
        return Reply.json(201, disk_answer(request))

    client = make_client(handler)
    await client.disk_create(DiskSpec("csi-a", "desc", 2 * GIB, block_size=4096))
    (request,) = seen
    assert request.headers["api-version"] == API_VERSION == "2026060800.0.0"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"] == f"csi-oxide/{__version__}"
    assert request.headers["accept-encoding"] == "identity"  # no compressed answer, ever
    assert request.headers["content-type"] == "application/json"
    assert (request.method, request.path) == ("POST", "/v1/disks")
    assert dict(request.params) == {"project": PROJECT}
    assert request.json() == disk_create_body("csi-a", 2 * GIB, description="desc")
    await client.aclose()


async def test_project_is_sent_with_names_and_never_with_uuids() -> None:
    seen: list[Seen] = []

    def handler(request: Seen) -> Reply:
        seen.append(request)
        if request.path.endswith("/attach"):
            return Reply.json(202, disk_answer(request, state="attached"))
        return Reply.json(200, disk_answer(request))

    client = make_client(handler)
    await client.disk_view("csi-a")
    await client.disk_view(DISK_UUID)
    await client.instance_disk_attach(INSTANCE_UUID, "csi-a")
    await client.instance_disk_attach("node-1", DISK_UUID)
    queries = [dict(r.params) for r in seen]
    assert queries == [{"project": PROJECT}, {}, {}, {"project": PROJECT}]
    assert [r.json() for r in seen[2:]] == [{"disk": "csi-a"}, {"disk": DISK_UUID}]
    assert seen[2].path == f"/v1/instances/{INSTANCE_UUID}/disks/attach"
    await client.aclose()


async def test_selectors_are_one_path_segment_and_never_empty() -> None:
    seen: list[str] = []

    def handler(request: Seen) -> Reply:
        seen.append(request.target)
        return error(404, "ObjectNotFound", "not found")

    client = make_client(handler)
    with pytest.raises(oxerr.OxideNotFoundError):
        await client.disk_view("../instances")
    assert seen == ["/v1/disks/..%2Finstances?project=k8s"]
    # An empty selector would address the collection: a programmer's error, never sent.
    with pytest.raises(AssertionError, match="empty disk selector"):
        await client.disk_delete("")
    with pytest.raises(AssertionError, match="empty disk selector"):
        await client.instance_disk_detach(INSTANCE_UUID, "")
    assert len(seen) == 1
    await client.aclose()


# ---- pagination -------------------------------------------------------------------------------


def paged_server(names: list[str], page_size: int, seen: list[dict[str, str]]) -> Handler:
    """Serves ``names`` the way dropshot does: a token after every non-empty page."""

    def handler(request: Seen) -> Reply:
        params = dict(request.params)
        seen.append(params)
        start = int(params.get("page_token", "0"))
        chunk = names[start : start + page_size]
        next_page = str(start + len(chunk)) if chunk else None
        return Reply.json(200, {"items": [disk_body(n) for n in chunk], "next_page": next_page})

    return handler


async def test_lists_follow_next_page_until_an_empty_page() -> None:
    names = [f"disk-{i:02d}" for i in range(7)]
    seen: list[dict[str, str]] = []
    client = make_client(paged_server(names, 3, seen))
    disks = await client.disk_list()
    assert [d.name for d in disks] == names
    assert seen[0] == {"project": PROJECT, "limit": str(PAGE_LIMIT)}
    assert seen[1:] == [
        {"page_token": "3", "limit": str(PAGE_LIMIT)},
        {"page_token": "6", "limit": str(PAGE_LIMIT)},
        {"page_token": "7", "limit": str(PAGE_LIMIT)},
    ]
    await client.aclose()


async def test_instance_disk_list_by_uuid_sends_no_project() -> None:
    seen: list[dict[str, str]] = []
    client = make_client(paged_server(["a"], 5, seen))
    assert [d.name for d in await client.instance_disk_list(INSTANCE_UUID)] == ["a"]
    assert seen == [{"limit": str(PAGE_LIMIT)}, {"page_token": "1", "limit": str(PAGE_LIMIT)}]
    await client.aclose()


async def test_a_page_token_that_does_not_advance_is_a_server_error() -> None:
    def handler(request: Seen) -> Reply:
        return Reply.json(200, {"items": [disk_body()], "next_page": "same"})

    client = make_client(handler)
    with pytest.raises(oxerr.OxideServerError, match="pagination did not advance"):
        await client.disk_list()
    await client.aclose()


async def test_unknown_state_skips_the_item_in_a_list_but_fails_a_view() -> None:
    def handler(request: Seen) -> Reply:
        if request.path == "/v1/disks/csi-new":
            return Reply.json(200, disk_body("csi-new", state="hibernating"))
        items = [disk_body("csi-old"), disk_body("csi-new", state="hibernating")]
        if "page_token" in request.params:
            items = []
        return Reply.json(200, {"items": items, "next_page": "t" if items else None})

    client = make_client(handler)
    with capture_logs() as logs:
        disks = await client.disk_list()
    assert [d.name for d in disks] == ["csi-old"]
    skipped = [e for e in logs if e["event"] == "oxide_object_skipped"]
    assert len(skipped) == 1
    assert "hibernating" in str(skipped[0]["reason"])
    with pytest.raises(oxerr.OxideServerError, match="unknown state of disk 'csi-new'"):
        await client.disk_view("csi-new")
    await client.aclose()


async def test_answers_that_are_not_json_or_not_the_schema_are_server_errors() -> None:
    def handler(request: Seen) -> Reply:
        if request.path == "/v1/utilization":
            return Reply.text(200, "<html>", headers={"x-request-id": "r9"})
        return Reply.json(200, {"id": 5})

    client = make_client(handler)
    with pytest.raises(oxerr.OxideServerError, match="not JSON") as info:
        await client.utilization_view()
    assert info.value.request_id == "r9"
    with pytest.raises(oxerr.OxideServerError, match="unexpected answer"):
        await client.instance_view("node-1")
    await client.aclose()


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "ObjectNotFound", oxerr.OxideNotFoundError),
        (404, None, oxerr.OxideNotFoundError),
        (400, "ObjectAlreadyExists", oxerr.OxideAlreadyExistsError),
        (400, "InvalidRequest", oxerr.OxideInvalidRequestError),
        (400, "InvalidValue", oxerr.OxideInvalidRequestError),
        (400, None, oxerr.OxideInvalidRequestError),
        (401, "Unauthorized", oxerr.OxideUnauthorizedError),
        (403, "Forbidden", oxerr.OxideForbiddenError),
        (409, "Conflict", oxerr.OxideConflictError),
        (507, "InsufficientCapacity", oxerr.OxideInsufficientCapacityError),
        (500, "Internal", oxerr.OxideServerError),
        (410, "Gone", oxerr.OxideServerError),
        (418, None, oxerr.OxideServerError),
    ],
)
async def test_status_and_error_code_map_to_one_error_class(
    status: int, code: str | None, expected: type[oxerr.OxideError]
) -> None:
    calls = 0

    def handler(request: Seen) -> Reply:
        nonlocal calls
        calls += 1
        return error(status, code, "the server says no", rid="rid-42")

    client = make_client(handler)
    with pytest.raises(oxerr.OxideError) as info:
        await client.disk_delete("csi-a")
    exc = info.value
    assert type(exc) is expected
    assert (exc.status, exc.error_code, exc.request_id, exc.operation) == (
        status,
        code,
        "rid-42",
        "disk_delete",
    )
    assert exc.message == "the server says no"
    assert str(exc).startswith(f"Oxide disk_delete: {status}")
    assert calls == 1  # only 503 and connection errors are retried
    await client.aclose()


async def test_request_id_falls_back_to_the_header_and_message_to_the_reason() -> None:
    def handler(request: Seen) -> Reply:
        return Reply.text(404, "", headers={"x-request-id": "hdr-7"})

    client = make_client(handler)
    with pytest.raises(oxerr.OxideNotFoundError) as info:
        await client.snapshot_view("snap-a")
    assert info.value.request_id == "hdr-7"
    assert info.value.message == "Not Found"
    await client.aclose()


# ---- retries ----------------------------------------------------------------------------------


async def test_503_is_retried_with_exponential_full_jitter_backoff() -> None:
    statuses = [503, 503, 503, 200]
    clock = FakeClock()

    def handler(request: Seen) -> Reply:
        status = statuses.pop(0)
        if status == 503:
            return error(503, "ServiceNotAvailable", "Service Unavailable")
        return Reply.json(200, disk_answer(request))

    retry = RetryPolicy(max_elapsed=60, base_delay=1.0, max_delay=3.0)
    client = make_client(handler, clock, retry=retry)
    assert (await client.disk_view("csi-a")).name == "csi-a"
    # random() is 0.5: half of 1, 2, then 4 capped at 3.
    assert clock.sleeps == [0.5, 1.0, 1.5]
    await client.aclose()


async def test_retries_stop_at_the_overall_deadline() -> None:
    clock = FakeClock()
    attempts = 0

    def handler(request: Seen) -> Reply:
        nonlocal attempts
        attempts += 1
        return error(503, "ServiceNotAvailable", "Service Unavailable", rid=f"r{attempts}")

    retry = RetryPolicy(max_elapsed=10, base_delay=1.0, max_delay=4.0)
    client = make_client(handler, clock, retry=retry)
    with pytest.raises(oxerr.OxideUnavailableError, match="gave up after") as info:
        await client.snapshot_list()
    assert sum(clock.sleeps) <= 10
    # 0.5 + 1 + 2 + 2 + 2 + 2 = 9.5; one more 2 s pause would end past the 10 s deadline.
    assert clock.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert attempts == 7
    assert info.value.status == 503
    assert info.value.request_id == f"r{attempts}"
    await client.aclose()


async def test_connection_errors_and_timeouts_are_retried_then_unavailable() -> None:
    clock = FakeClock()
    failures = [lost("ConnectError: refused"), timed_out("ReadTimeout: slow")]

    def handler(request: Seen) -> Reply:
        if failures:
            raise failures.pop(0)
        return Reply.json(
            200,
            {
                "capacity": {"cpus": 1, "memory": 1, "storage": 9},
                "provisioned": {"cpus": 0, "memory": 0, "storage": 4},
            },
        )

    client = make_client(handler, clock)
    util = await client.utilization_view()
    assert (util.capacity_storage, util.provisioned_storage) == (9, 4)
    assert len(clock.sleeps) == 2

    def always_timeout(request: Seen) -> Reply:
        raise timed_out("ReadTimeout: read timed out")

    slow = make_client(always_timeout, FakeClock(), retry=RetryPolicy(max_elapsed=3))
    with pytest.raises(oxerr.OxideUnavailableError, match="timed out talking to") as info:
        await slow.disk_view("csi-a")
    cause = info.value.__cause__
    assert isinstance(cause, TransportFailure) and cause.outcome == "timeout"
    assert "ReadTimeout: read timed out" in str(info.value)
    assert info.value.status is None
    await client.aclose()
    await slow.aclose()


async def test_a_retried_create_that_already_happened_surfaces_as_already_exists() -> None:
    created: list[str] = []

    def handler(request: Seen) -> Reply:
        name = request.json()["name"]
        if name in created:
            return error(400, "ObjectAlreadyExists", f'already exists: disk "{name}"')
        created.append(name)
        raise lost("ReadError: connection reset after the server committed")

    client = make_client(handler)
    with pytest.raises(oxerr.OxideAlreadyExistsError, match="already exists"):
        await client.disk_create(DiskSpec("csi-a", "", GIB, block_size=512))
    assert created == ["csi-a"]
    await client.aclose()


# ---- concurrency, observer, token rotation ------------------------------------------------------


async def test_in_flight_requests_are_capped() -> None:
    in_flight = 0
    peak = 0
    full, go = asyncio.Event(), asyncio.Event()

    async def handler(request: Seen) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        await go.wait()  # held in the server until the test has looked
        in_flight -= 1
        return Reply.json(200, disk_answer(request))

    client = make_client(handler, max_concurrency=3)
    views = asyncio.gather(*(client.disk_view(f"csi-{i}") for i in range(12)))
    await asyncio.wait_for(full.wait(), 30)
    for _ in range(100):  # in-process transport: a fourth request let through would be in now
        await asyncio.sleep(0)
    assert in_flight == 3
    go.set()
    disks = await asyncio.wait_for(views, 30)
    assert len(disks) == 12
    assert peak == 3
    await client.aclose()


async def test_the_observer_sees_every_attempt_and_cannot_break_requests() -> None:
    statuses = [503, 200]
    records: list[RequestRecord] = []

    def handler(request: Seen) -> Reply:
        status = statuses.pop(0)
        if status == 503:
            return error(503, "ServiceNotAvailable", "busy", rid="a1")
        return Reply.json(200, disk_answer(request), headers={"x-request-id": "a2"})

    client = make_client(handler, request_observer=records.append)
    await client.disk_view("csi-a")
    assert [(r.operation, r.status, r.outcome, r.request_id, r.attempt) for r in records] == [
        ("disk_view", 503, "http_error", "a1", 1),
        ("disk_view", 200, "ok", "a2", 2),
    ]

    def broken(record: RequestRecord) -> None:
        raise RuntimeError("metrics backend down")

    other = make_client(lambda r: Reply.json(200, disk_answer(r)), request_observer=broken)
    with capture_logs() as logs:
        assert (await other.disk_view("csi-a")).state is DiskState.DETACHED
    assert any(e["event"] == "oxide_request_observer_failed" for e in logs)
    await client.aclose()
    await other.aclose()


async def test_a_rotated_token_file_is_used_by_the_next_request(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("oxide-token-first\n")
    tokens: list[str] = []

    def handler(request: Seen) -> Reply:
        tokens.append(request.headers["authorization"])
        return Reply.json(200, {"items": [], "next_page": None})

    client = HttpOxideClient(
        "http://oxide.test", FileToken(path), PROJECT, carrier=scripted(handler)
    )
    await client.instance_list()
    new = tmp_path / "token.new"
    new.write_text("oxide-token-second\n")
    new.replace(path)
    await client.instance_list()
    assert tokens == ["Bearer oxide-token-first", "Bearer oxide-token-second"]
    await client.aclose()


# ---- construction and secrecy -----------------------------------------------------------------


def test_constructor_refuses_a_bare_token_string_and_a_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="token provider") as info:
        HttpOxideClient("h.example", TOKEN, PROJECT)  # type: ignore[arg-type]
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigurationError, match="CA bundle"):
        HttpOxideClient("h.example", StaticToken(TOKEN), PROJECT, ca_file=tmp_path / "missing.pem")


async def test_from_credentials_uses_their_host_project_and_token(tmp_path: Path) -> None:
    env = {"OXIDE_HOST": "oxide.example.com", "OXIDE_TOKEN": TOKEN, "OXIDE_PROJECT": "prod"}
    seen: list[Seen] = []

    def handler(request: Seen) -> Reply:
        seen.append(request)
        return Reply.json(200, {"items": [], "next_page": None})

    client = HttpOxideClient.from_credentials(
        load_credentials(env, tmp_path), carrier=scripted(handler)
    )
    api: OxideApi = client  # the client satisfies the protocol (checked by mypy)
    assert await api.snapshot_list() == []
    (request,) = seen
    assert request.url.startswith("https://oxide.example.com/v1/snapshots?")
    assert request.params["project"] == "prod"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    await api.aclose()


def test_for_tests_and_host_normalisation() -> None:
    client = oxide_client(
        host="oxide.example.com",
        token=TOKEN,
        project=PROJECT,
        carrier=scripted(lambda r: Reply(204)),
    )
    assert client.host == "https://oxide.example.com"
    assert client.project == PROJECT
    assert repr(client) == "HttpOxideClient(host='https://oxide.example.com', project='k8s')"


def _status_handler(status: int, code: str | None) -> Handler:
    def handler(request: Seen) -> Reply:
        return error(status, code, f"message {status}")

    return handler


def _raising_handler(exc: Exception) -> Handler:
    def handler(request: Seen) -> Reply:
        raise exc

    return handler


SECRECY_CASES: list[tuple[str, Handler]] = [
    *(
        (f"{status}-{code}", _status_handler(status, code))
        for status, code in [
            (400, "ObjectAlreadyExists"),
            (400, "InvalidRequest"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "ObjectNotFound"),
            (409, "Conflict"),
            (500, "Internal"),
            (503, "ServiceNotAvailable"),
            (507, "InsufficientCapacity"),
        ]
    ),
    ("connect", _raising_handler(lost("ConnectError: refused"))),
    ("timeout", _raising_handler(timed_out("ReadTimeout: timed out"))),
    # A content coding the client did not ask for: never decoded, so never JSON.
    (
        "compressed",
        lambda r: Reply(200, gzip.compress(b'{"items": []}'), {"content-encoding": "gzip"}),
    ),
    ("too-large", lambda r: Reply(200, b" " * (9 * 1024 * 1024))),
    ("not-json", lambda r: Reply.text(200, "nope")),
    ("bad-schema", lambda r: Reply.json(200, {"items": 3})),
]


@pytest.mark.parametrize(("name", "handler"), SECRECY_CASES, ids=[c[0] for c in SECRECY_CASES])
async def test_the_token_never_shows_in_errors_or_logs(
    name: str, handler: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(handler, retry=RetryPolicy(max_elapsed=1))
    with capture_logs() as logs, pytest.raises(oxerr.OxideError) as info:
        await client.disk_list()
    exc = info.value
    seen = [str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__), repr(client)]
    seen += [repr(event) for event in logs]
    seen += [record.getMessage() for record in caplog.records]
    assert logs, "the client logs each request"
    for text in seen:
        assert TOKEN not in text
        assert "c0ffee15secret" not in text
    await client.aclose()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0f2c4d6e-1234-4abc-9def-0123456789ab", "0f2c4d6e-1234-4abc-9def-0123456789ab"),
        ("r.42_x", "r.42_x"),
        ("plainsecret0123", "<redacted>"),  # the token itself, no prefix: still scrubbed
        ("id-plainsecret0123-7", "id-<redacted>-7"),
        ("oxide-token-abc", "oxide-token-<redacted>"),
        ("id token=abc", "id token=<redacted>"),
        ("x" * 80, "x" * 64),
    ],
)
async def test_request_ids_reach_observers_scrubbed_and_short(header: str, expected: str) -> None:
    records: list[RequestRecord] = []
    client = HttpOxideClient(
        "http://oxide.test",
        StaticToken("plainsecret0123"),
        PROJECT,
        carrier=scripted(
            lambda r: Reply.json(200, disk_answer(r), headers={"x-request-id": header})
        ),
        request_observer=records.append,
    )
    await client.disk_view("csi-a")
    assert [r.request_id for r in records] == [expected]
    await client.aclose()


async def test_the_debug_line_per_request_shows_at_debug_level_only() -> None:
    client = make_client(lambda r: Reply.json(200, disk_answer(r)))
    before = structlog.get_config()
    try:
        for level, expected in (("debug", 1), ("info", 0)):
            log.configure(fmt="json", level=level, stream=io.StringIO())
            with capture_logs() as logs:
                await client.disk_view("csi-a")
            lines = [e for e in logs if e["event"] == "oxide_request"]
            assert len(lines) == expected, level
    finally:
        structlog.configure(**before)
    await client.aclose()


async def test_each_retry_line_says_why_it_retries() -> None:
    answers: list[Exception | int] = [503, lost("ConnectError: refused"), 200]

    def handler(request: Seen) -> Reply:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == 503:
            return error(503, "ServiceNotAvailable", "Service Unavailable")
        return Reply.json(200, disk_answer(request))

    client = make_client(handler)
    with capture_logs() as logs:
        await client.disk_view("csi-a")
    await client.aclose()
    causes = [e["cause"] for e in logs if e["event"] == "oxide_request_retry"]
    assert causes == ["HTTP 503", "connection_error: ConnectError: refused"]
