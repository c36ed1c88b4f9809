"""The controller against a slow or hostile Oxide API (issue 13).

A real ``HttpOxideClient`` (and, where the CO's view matters, the real gRPC server with the
interceptor and ``ControllerService``) talks over real TCP to ``HostileServer`` (tests/oxide/
hostile.py): slow headers, slow bodies, endless pages, errors echoing every request header,
fifty-megabyte answers, implausible values, redirects, 429 with Retry-After, connections dropped
under a request (the carrier's one resend). Deadlines here are short so the suite stays quick;
``asyncio.wait_for`` guards only stop a test that would otherwise hang on the old behaviour (they
are not timing assertions). Convergence after a lost answer runs against the simulator.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.controller.record import PREFIX as DESCRIPTION_PREFIX
from csi_oxide.controller.record import volume_name
from csi_oxide.daemon.inflight import InFlight
from csi_oxide.errors import CsiOxideError
from csi_oxide.oxide import errors as oxerr
from csi_oxide.oxide.api import OxideApi
from csi_oxide.oxide.client import HttpOxideClient, RequestRecord, RetryPolicy
from csi_oxide.oxide.credentials import StaticToken
from csi_oxide.oxide.types import DiskSpec
from csi_oxide.wiring import build_controller_ops, build_reconciler
from csi_oxide_lab.asgi import AsgiCarrier
from csi_oxide_lab.sim import SimConfig
from csi_oxide_lab.sim.inprocess import InProcessSimulator
from tests.oxide.fakes import FakeClock
from tests.oxide.hostile import Answer, HostileServer, Seen
from tests.oxide_bodies import DISK_UUID, INSTANCE_UUID, disk_body, instance_body, snapshot_body
from tests.server.controller_world import controller_stub
from tests.units import GIB

# Shaped like a real token, and a second secret without the prefix (scrubbed by exact value).
TOKEN = "oxide-token-5ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4"
BARE_TOKEN = "hunter2-not-prefixed-0123456789"
NAME = "csi-0123456789abcdef"
QUICK = RetryPolicy(max_elapsed=0.3, base_delay=0.01, max_delay=0.05)
GUARD = 30.0  # stops a test that would hang on the old behaviour; never reached when it passes

Behave = Callable[[Seen], Answer]


def client(url: str, *, token: str = TOKEN, **kwargs: object) -> HttpOxideClient:
    kwargs.setdefault("retry", QUICK)
    return HttpOxideClient(url, StaticToken(token), "p", **kwargs)  # type: ignore[arg-type]


def not_found(_seen: Seen) -> Answer:
    return Answer.json(404, {"error_code": "ObjectNotFound", "message": "not found"})


@asynccontextmanager
async def hostile(behave: Behave) -> AsyncIterator[HostileServer]:
    async with HostileServer(behave) as server:
        yield server


# ---- 1. a total deadline per request ------------------------------------------------------------


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_a_trickling_answer_cannot_outlive_the_request_deadline(where: str) -> None:
    """One byte every 0.4 s: each read is quick, so only a total deadline ends the request."""
    slow = Answer.json(200, disk_body())
    if where == "headers":
        slow = dataclasses.replace(slow, head_delay=0.4)
    else:
        slow = dataclasses.replace(slow, body_delay=0.4)
    records: list[RequestRecord] = []
    async with hostile(lambda s: slow) as server:
        api = client(server.url, timeout=1.0, request_observer=records.append)
        with pytest.raises(oxerr.OxideUnavailableError, match="request deadline") as info:
            await asyncio.wait_for(api.disk_view(NAME), GUARD)
        await api.aclose()
    assert info.value.operation == "disk_view"
    assert records, "every attempt is recorded"
    assert {r.outcome for r in records} == {"timeout"}
    # Retries stop being started after max_elapsed: a handful of attempts, not an endless stream.
    assert len(server.seen) == len(records) <= 5


@dataclass
class Controller:
    stub: csi_grpc.ControllerAsyncStub
    inflight: InFlight


@asynccontextmanager
async def controller(tmp_path: Path, api: OxideApi, grace: float) -> AsyncIterator[Controller]:
    inflight = InFlight(grace=grace)
    ops = build_controller_ops(api, cluster="test", inflight=inflight)
    try:
        async with controller_stub(tmp_path / "c.sock", ops, grace=0.5) as stub:
            yield Controller(stub, inflight)
    finally:
        await api.aclose()


def create_request(name: str = "pvc-slow") -> csi.CreateVolumeRequest:
    mode = csi.VolumeCapability.AccessMode(mode=csi.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    return csi.CreateVolumeRequest(
        name=name,
        capacity_range=csi.CapacityRange(required_bytes=GIB),
        volume_capabilities=[
            csi.VolumeCapability(
                mount=csi.VolumeCapability.MountVolume(fs_type="ext4"), access_mode=mode
            )
        ],
    )


async def until_not_aborted(call: Callable[[], object]) -> grpc.StatusCode:
    """Retry like the provisioner while the answer is ABORTED; the final code."""
    while True:
        try:
            await call()  # type: ignore[misc]
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                return exc.code()
            await asyncio.sleep(0.1)
            continue
        return grpc.StatusCode.OK


async def test_the_guard_is_free_soon_after_the_rpc_deadline(tmp_path: Path) -> None:
    """The Oxide request may take 60 s (its own deadline), but the RPC's work is cut at the RPC's
    deadline plus the grace, so the volume's guard is free and a retry starts afresh."""
    healthy = asyncio.Event()

    def behave(seen: Seen) -> Answer:
        if seen.method == "POST" and seen.path == "/v1/disks":
            asked = json.loads(seen.body)
            body = disk_body(asked["name"], description=asked["description"], size=asked["size"])
            return Answer.json(201, body, head_delay=0 if healthy.is_set() else 1.0)
        return not_found(seen)

    async with hostile(behave) as server:
        api = client(server.url, timeout=60.0)
        async with controller(tmp_path, api, grace=0.3) as ctl:
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await ctl.stub.CreateVolume(create_request(), timeout=0.5)
            assert first.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            healthy.set()
            code = await asyncio.wait_for(
                until_not_aborted(lambda: ctl.stub.CreateVolume(create_request(), timeout=5)),
                GUARD,
            )
            assert code == grpc.StatusCode.OK
            assert not ctl.inflight.busy(volume_name("pvc-slow"))
    posts = [s for s in server.seen if s.method == "POST"]
    assert len(posts) == 2  # the cut attempt and the fresh one


async def test_a_retry_converges_when_the_lost_answer_was_applied(tmp_path: Path) -> None:
    """The simulator carries out disk_create and then trickles its answer: the driver never hears
    that it worked. The retry finds the disk by name, compares the description, and answers OK
    with the one disk that exists."""
    sim = InProcessSimulator(SimConfig(slow_rate=1.0, slow_byte_ms=500))
    api = HttpOxideClient(
        "http://sim",
        StaticToken(sim.token),
        "csi",
        carrier=AsgiCarrier(sim.asgi_app(validate=True)),
        retry=QUICK,
        timeout=0.5,
    )
    async with controller(tmp_path, api, grace=0.2) as ctl:
        with pytest.raises(grpc.aio.AioRpcError):
            await ctl.stub.CreateVolume(create_request("pvc-lost"), timeout=1.0)
        assert len(sim.disk_names()) == 1  # applied, though no answer came
        sim.config = dataclasses.replace(sim.config, slow_rate=0.0)
        code = await asyncio.wait_for(
            until_not_aborted(lambda: ctl.stub.CreateVolume(create_request("pvc-lost"))), GUARD
        )
        assert code == grpc.StatusCode.OK
        answer = await ctl.stub.CreateVolume(create_request("pvc-lost"))
    assert sim.disk_names() == [answer.volume.volume_id]
    assert sim.request_counts["disk_create"] >= 2
    assert sim.contract_violations == []


# ---- 2. bounded listings, bounded reconciler passes ----------------------------------------------


def endless(seen: Seen) -> Answer:
    """Every page has one item and a fresh next_page."""
    n = len(seen.query.get("page_token", "")) + 1
    item = snapshot_body(f"s{n}") if "snapshots" in seen.path else disk_body(f"d{n}")
    return Answer.json(200, {"items": [item], "next_page": "x" * n})


async def test_endless_paging_stops_at_the_page_limit_with_a_clear_error() -> None:
    async with hostile(endless) as server:
        api = client(server.url, max_pages=25)
        with pytest.raises(oxerr.OxideServerError, match="did not end after 25 pages") as info:
            await asyncio.wait_for(api.disk_list(), GUARD)
        await api.aclose()
    assert len(server.seen) == 25
    assert info.value.operation == "disk_list"


async def test_a_listing_stops_at_the_item_limit() -> None:
    def big_pages(seen: Seen) -> Answer:
        token = seen.query.get("page_token", "")
        items = [disk_body(f"d{len(token)}-{i}") for i in range(10)]
        return Answer.json(200, {"items": items, "next_page": token + "x"})

    async with hostile(big_pages) as server:
        api = client(server.url, max_items=35)
        with pytest.raises(oxerr.OxideServerError, match="40 items"):
            await asyncio.wait_for(api.disk_list(), GUARD)
        await api.aclose()
    assert len(server.seen) == 4


async def test_a_page_token_seen_before_is_caught() -> None:
    def cycle(seen: Seen) -> Answer:
        token = seen.query.get("page_token")
        following = {None: "a", "a": "b", "b": "a"}[token]
        return Answer.json(200, {"items": [disk_body()], "next_page": following})

    async with hostile(cycle) as server:
        api = client(server.url)
        with pytest.raises(oxerr.OxideServerError, match="did not advance"):
            await asyncio.wait_for(api.disk_list(), GUARD)
        await api.aclose()
    assert len(server.seen) == 3


async def test_the_reconciler_works_in_bounded_passes_and_backs_off() -> None:
    pauses: list[float] = []

    class StopError(Exception):
        pass

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise StopError

    async with hostile(endless) as server:
        api = client(server.url, max_pages=10)
        reconciler = build_reconciler(api, cluster="test", inflight=InFlight())
        with pytest.raises(StopError):
            await asyncio.wait_for(
                reconciler.run_forever(100.0, sleep=sleep, random=lambda: 0.5), GUARD
            )
        await api.aclose()
    assert len(server.seen) == 30  # three passes of ten pages, then the error each time
    assert pauses == [100.0, 200.0, 400.0]


async def test_a_stuck_reconciler_pass_is_cut() -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise asyncio.CancelledError

    # Headers a byte a second: the request's own deadline (60 s) is far away; the pass limit cuts.
    async with hostile(lambda s: Answer.json(200, {"items": []}, head_delay=1.0)) as server:
        api = client(server.url, timeout=60.0)
        reconciler = build_reconciler(api, cluster="test", inflight=InFlight())
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(
                reconciler.run_forever(7.0, pass_limit=0.3, sleep=sleep, random=lambda: 0.5),
                GUARD,
            )
        await api.aclose()
    assert pauses == [7.0]  # the first failure waits one interval (with jitter 0.5 -> x1.0)


# ---- 3. nothing secret in any text that leaves the process ---------------------------------------


def echo_everything(seen: Seen) -> Answer:
    everything = seen.text()
    body = {
        "error_code": "InvalidRequest",
        "message": f"refused: {everything}",
        "request_id": seen.headers.get("authorization", "none"),
    }
    return Answer.json(400, body, headers={"x-request-id": seen.headers.get("authorization", "")})


async def refused_create(
    tmp_path: Path, api: HttpOxideClient
) -> tuple[str, list[MutableMapping[str, object]]]:
    """The gRPC details of a CreateVolume that ``api``'s server refuses, and the log lines."""
    with capture_logs() as logs:
        async with controller(tmp_path, api, grace=1.0) as ctl:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ctl.stub.CreateVolume(create_request())
    return info.value.details() or "", logs


async def test_an_echoing_server_never_gets_the_token_into_grpc_details_or_logs(
    tmp_path: Path,
) -> None:
    async with hostile(echo_everything) as server:
        details, logs = await refused_create(tmp_path, client(server.url, token=TOKEN))
    assert server.seen[0].headers["authorization"] == f"Bearer {TOKEN}"  # it was echoed
    assert "refused" in details  # the server's message still reaches the CO...
    for secret in (TOKEN, TOKEN.removeprefix("oxide-token-")):
        assert secret not in details  # ...without the token
        assert secret not in repr(logs)


# Text with line breaks and terminal controls, as a hostile or broken API could send it: a forged
# log line after a newline, an ANSI sequence that would recolour or clear a terminal showing an
# event, C1 controls (NEL, CSI) that some terminals obey too.
CONTROLS = (
    "refused\n2026-12-07T00:00:00Z [info] rpc code=OK\r\x1b[2J\x1b]0;owned\x07\x85\x9b31m\x7f"
)


def controls_everywhere(seen: Seen) -> Answer:
    body = {"error_code": f"Bad{CONTROLS}", "message": CONTROLS, "request_id": f"r-{CONTROLS}"}
    return Answer.json(400, body, headers={"x-request-id": "r\x1b[31m"})


async def test_control_characters_from_the_api_reach_no_one_raw(tmp_path: Path) -> None:
    """The server's words reach the CO (gRPC details, hence Kubernetes events) and the logs with
    every control character escaped (``\\x1b``): none can forge a log line or drive the terminal
    of whoever reads them."""
    async with hostile(controls_everywhere) as server:
        api = client(server.url, token=TOKEN)
        details, logs = await refused_create(tmp_path, api)
        with pytest.raises(oxerr.OxideError) as direct:
            await api.disk_create(DiskSpec(name=NAME, description="d", size=GIB, block_size=4096))
        await api.aclose()
    assert "refused\\x0a2026-12-07" in details  # still said, escaped
    err = direct.value
    logged = [str(value) for line in logs for value in line.values()]
    assert any("refused" in text for text in logged)  # the logs said it too
    for text in (
        details,
        str(err),
        err.message,
        err.error_code or "",
        err.request_id or "",
        *logged,
    ):
        raw = [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
        assert raw == [], f"control characters {raw!r} in {text!r}"


# A token made of regular-expression metacharacters: scrubbing is by exact text, never a pattern
# built from the token (which would match other text, or fail to compile, or miss the token).
META_TOKEN = r"t0k.*+?[x](y){2}|^$\\d"


@pytest.mark.parametrize("token", [TOKEN, BARE_TOKEN, META_TOKEN])
async def test_every_oxide_error_text_is_scrubbed(token: str) -> None:
    async with hostile(echo_everything) as server:
        api = client(server.url, token=token)
        with pytest.raises(oxerr.OxideError) as info:
            await api.disk_create(DiskSpec(name=NAME, description="d", size=GIB, block_size=4096))
        await api.aclose()
    err = info.value
    for text in (str(err), err.message, err.request_id or "", repr(err.args)):
        assert token not in text
        assert token[12:] not in text


async def test_a_token_rotated_during_a_request_is_scrubbed_too() -> None:
    """The error is built after the answer came, when the token provider may already hand out
    the next token (a Secret rotation): the token the request carried must be scrubbed as well."""
    tokens = iter(["old-bare-token-q7w8e9r0t1y2", *["new-bare-token-fedcba9876543210"] * 50])
    current = ["", ""]

    def provider() -> str:
        current[0], current[1] = current[1], next(tokens)
        return current[1]

    def echo_credential(seen: Seen) -> Answer:
        credential = seen.headers["authorization"].removeprefix("Bearer ")
        body = {"error_code": "Unauthorized", "message": f"credential {credential} is revoked"}
        return Answer.json(401, body)

    async with hostile(echo_credential) as server:
        api = HttpOxideClient(server.url, provider, "p", retry=QUICK)
        with pytest.raises(oxerr.OxideError) as info:
            await api.disk_view(NAME)
        await api.aclose()
    assert server.seen[0].headers["authorization"] == "Bearer old-bare-token-q7w8e9r0t1y2"
    err = info.value
    for text in (str(err), err.message, err.request_id or ""):
        assert "old-bare-token" not in text
        assert "q7w8e9r0t1y2" not in text


# ---- answers about another object than the one asked for -----------------------------------

OTHER = "csi-fedcba9876543210"


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        ("disk_view", disk_body(OTHER)),
        ("disk_view_by_id", disk_body(NAME, id="6c1a9d3e-2f4b-4c5d-8e9f-0a1b2c3d4e60")),
        ("disk_create", disk_body(OTHER)),
        ("snapshot_view", snapshot_body("snap-fedcba9876543210")),
        ("instance_view", instance_body(id="0f1e2d3c-4b5a-4968-8776-655443322111")),
        ("attach", disk_body(OTHER, state={"state": "attached", "instance": INSTANCE_UUID})),
    ],
)
async def test_an_answer_about_another_object_is_refused(call: str, answer: object) -> None:
    """The driver acts on what a view answers (it deletes by the UUID it read): an answer about
    another object than the one asked for (a confused proxy, a buggy or hostile server) must
    never be taken for it."""
    async with hostile(lambda s: Answer.json(200, answer)) as server:
        api = client(server.url)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "disk_view": lambda: api.disk_view(NAME),
            "disk_view_by_id": lambda: api.disk_view(DISK_UUID),
            "disk_create": lambda: api.disk_create(
                DiskSpec(name=NAME, description="d", size=GIB, block_size=4096)
            ),
            "snapshot_view": lambda: api.snapshot_view("snap-0123456789abcdef"),
            "instance_view": lambda: api.instance_view(INSTANCE_UUID),
            "attach": lambda: api.instance_disk_attach(INSTANCE_UUID, NAME),
        }
        with pytest.raises(oxerr.OxideServerError, match="another") as info:
            await calls[call]()
        await api.aclose()
    assert str(info.value).startswith("Oxide ")


async def test_delete_volume_never_deletes_what_a_lying_view_names(tmp_path: Path) -> None:
    def behave(seen: Seen) -> Answer:
        if seen.method == "GET" and seen.path == f"/v1/disks/{NAME}":
            # Another volume of this cluster (its record and name agree): a tempting target.
            rec = '{"c":"test","n":"pvc-other"}'
            other = disk_body(volume_name("pvc-other"), description=DESCRIPTION_PREFIX + rec)
            return Answer.json(200, other)
        return not_found(seen)

    async with hostile(behave) as server, controller(tmp_path, client(server.url), 1.0) as ctl:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=NAME))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert [s.method for s in server.seen if s.method == "DELETE"] == []


# ---- 4. implausible answers, capped bodies -------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"size": -5}, "size -5 is not a positive whole number of GiB"),
        ({"size": 0}, "size 0"),
        ({"size": GIB + 512}, "not a positive whole number of GiB"),
        ({"block_size": 7}, "block_size 7"),
        ({"id": "not-a-uuid"}, "'id' is not a UUID"),
        ({"project_id": 12}, "expected a string"),
        ({"state": {"state": "exploded"}}, "unknown state"),
        ({"state": {"state": "attached", "instance": "node-1"}}, "'instance' is not a UUID"),
        ({"name": ""}, "field 'name'"),
        ({"time_created": "yesterday"}, "timestamp"),
        # No time zone: such a time cannot be compared with an aware one (the reconciler's age
        # check, the expansion's "made before" check) without a TypeError.
        ({"time_created": "2026-01-02T03:04:05"}, "time zone"),
        # Whole GiB, but beyond what a CSI answer (int64) can carry.
        ({"size": 2**70}, "out of range"),
    ],
)
async def test_an_implausible_disk_is_one_clear_error_naming_the_operation(
    changes: dict[str, object], complaint: str
) -> None:
    async with hostile(lambda s: Answer.json(200, {**disk_body(), **changes})) as server:
        api = client(server.url)
        with pytest.raises(oxerr.OxideServerError, match="unexpected answer") as info:
            await api.disk_view(NAME)
        await api.aclose()
    assert complaint in str(info.value)
    assert str(info.value).startswith("Oxide disk_view:")


async def test_implausible_values_reach_the_co_as_internal_never_as_values(
    tmp_path: Path,
) -> None:
    def behave(seen: Seen) -> Answer:
        if seen.path == "/v1/disks":
            return Answer.json(200, {"items": [disk_body(size=-5)], "next_page": None})
        if seen.path == "/v1/utilization":
            figures = {"capacity": {"storage": 10 * GIB}, "provisioned": {"storage": -GIB}}
            return Answer.json(200, figures)
        if seen.path == "/v1/snapshots":
            return Answer.json(200, {"items": [], "next_page": None})
        return not_found(seen)

    async with hostile(behave) as server, controller(tmp_path, client(server.url), 1.0) as ctl:
        calls: list[tuple[Awaitable[object], str]] = [
            (ctl.stub.ListVolumes(csi.ListVolumesRequest()), "disk_list"),
            (ctl.stub.GetCapacity(csi.GetCapacityRequest()), "utilization_view"),
        ]
        for call, operation in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert f"Oxide {operation}" in (info.value.details() or "")


async def test_instances_and_utilization_are_checked_too() -> None:
    answers = {
        "/v1/instances/node-1": instance_body(id="nope"),
        "/v1/utilization": {"capacity": {"storage": -1}, "provisioned": {"storage": 0}},
    }
    async with hostile(lambda s: Answer.json(200, answers[s.path])) as server:
        api = client(server.url)
        with pytest.raises(oxerr.OxideServerError, match="'id' is not a UUID"):
            await api.instance_view("node-1")
        with pytest.raises(oxerr.OxideServerError, match="capacity storage -1 is negative"):
            await api.utilization_view()
        await api.aclose()


async def test_figures_beyond_int64_are_internal_naming_the_operation(tmp_path: Path) -> None:
    """Protobuf refuses a number beyond int64 with a bare ValueError when the answer is built:
    the client refuses it first, as an implausible answer."""

    def behave(seen: Seen) -> Answer:
        if seen.path == "/v1/utilization":
            figures = {"capacity": {"storage": 2**64}, "provisioned": {"storage": 0}}
            return Answer.json(200, figures)
        if seen.path == "/v1/disks":
            return Answer.json(200, {"items": [disk_body(size=2**70)], "next_page": None})
        return Answer.json(200, {"items": [], "next_page": None})

    async with hostile(behave) as server, controller(tmp_path, client(server.url), 1.0) as ctl:
        calls: list[tuple[Awaitable[object], str]] = [
            (ctl.stub.GetCapacity(csi.GetCapacityRequest()), "utilization_view"),
            (ctl.stub.ListVolumes(csi.ListVolumesRequest()), "disk_list"),
        ]
        for call, operation in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INTERNAL
            details = info.value.details() or ""
            assert f"Oxide {operation}" in details and "out of range" in details


@pytest.mark.parametrize("length", [None, -1], ids=["announced", "unannounced"])
async def test_a_huge_answer_is_abandoned_not_held(length: int | None) -> None:
    huge = 50 * 1024 * 1024
    answer = Answer(200, b"", {"content-type": "application/json"}, body_size=huge, length=length)
    async with hostile(lambda s: answer) as server:
        api = client(server.url, max_body=1024 * 1024)
        with pytest.raises(oxerr.OxideServerError, match="bytes the driver reads"):
            await asyncio.wait_for(api.disk_view(NAME), GUARD)
        await api.aclose()
        async with asyncio.timeout(GUARD):  # until the server sees the connection gone
            while server.open_connections:  # noqa: ASYNC110 - the server offers no event
                await asyncio.sleep(0.01)
    # The client stopped reading: most of the 50 MB never left the server.
    assert server.bytes_sent < huge // 4


# ---- 5. 429/503 with Retry-After; redirects ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "7", 7.0),
        (503, "2", 2.0),
        (429, "100000", 30.0),
        (503, "soon", None),
        # Not ASCII digits: str.isdigit() says yes to both, float() chokes on the first.
        (503, "\u00b2", None),
        (503, "\u0663", None),
        (429, "Thu, 01 Jan 1970 00:00:00 GMT", 0.25),  # a date in the past: no wait asked
    ],
)
async def test_429_and_503_are_retried_honouring_a_capped_retry_after(
    status: int, retry_after: str, expected: float | None
) -> None:
    def behave(seen: Seen) -> Answer:
        if len(server.seen) == 1:
            headers = {"retry-after": retry_after}
            return Answer.json(status, {"message": "slow down"}, headers=headers)
        return Answer.json(200, disk_body())

    clock = FakeClock()
    async with hostile(behave) as server:
        api = HttpOxideClient(
            server.url,
            StaticToken(TOKEN),
            "p",
            retry=RetryPolicy(max_elapsed=120, base_delay=0.5, max_delay=1.0),
            sleep=clock.sleep,
            monotonic=clock.monotonic,
            random=lambda: 0.5,
        )
        disk = await api.disk_view(NAME)
        await api.aclose()
    assert disk.name == NAME
    assert len(server.seen) == 2
    assert clock.sleeps == [expected if expected is not None else 0.25]


async def test_a_redirect_is_not_followed_and_says_so() -> None:
    async with hostile(not_found) as elsewhere:
        moved = Answer(302, b"", {"location": f"{elsewhere.url}/v1/disks/{NAME}"})
        async with hostile(lambda s: moved) as server:
            api = client(server.url)
            with pytest.raises(oxerr.OxideServerError, match="redirect") as info:
                await api.disk_view(NAME)
            await api.aclose()
    assert elsewhere.seen == []  # the token never went anywhere else
    assert "OXIDE_HOST" in str(info.value)
    assert len(server.seen) == 1


async def test_a_garbage_answer_is_one_internal_error() -> None:
    async with hostile(lambda s: Answer(200, b"<html>hello</html>")) as server:
        api = client(server.url)
        with pytest.raises(CsiOxideError, match="not JSON"):
            await api.disk_view(NAME)
        await api.aclose()


@pytest.mark.parametrize("status", [200, 400])
async def test_a_deeply_nested_answer_is_one_clear_error(status: int) -> None:
    """JSON nested a hundred thousand deep is a few hundred kilobytes, well under the body cap,
    and makes the JSON decoder raise RecursionError (not ValueError)."""
    nested = b"[" * 100_000 + b"]" * 100_000
    answer = Answer(status, nested, {"content-type": "application/json"})
    async with hostile(lambda s: answer) as server:
        api = client(server.url)
        with pytest.raises(oxerr.OxideError) as info:
            await api.disk_view(NAME)
        await api.aclose()
    if status == 200:
        assert isinstance(info.value, oxerr.OxideServerError)
        assert "not JSON" in str(info.value)
    else:
        assert isinstance(info.value, oxerr.OxideInvalidRequestError)


async def test_the_reconciler_outlives_an_error_it_did_not_expect() -> None:
    """Whatever a pass raises, the loop logs it and carries on with backoff: a background task
    that died would repair nothing until the controller restarts, and nobody would notice. The
    API here raises a TypeError, standing in for any bug below the reconciler (a fake, as no real
    component here raises one any more)."""
    pauses: list[float] = []

    class StopError(Exception):
        pass

    class Broken:
        async def snapshot_list(self) -> list[object]:
            raise TypeError("can't compare offset-naive and offset-aware datetimes")

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise StopError

    reconciler = build_reconciler(Broken(), cluster="test", inflight=InFlight())  # type: ignore[arg-type]
    with capture_logs() as logs, pytest.raises(StopError):
        await reconciler.run_forever(10.0, sleep=sleep, random=lambda: 0.5)
    assert pauses == [10.0, 20.0]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["reconcile pass crashed"] * 2


def _first_then_fine(first: Answer) -> Behave:
    """``first`` for the first request, a good disk for every later one."""
    pending = [first]
    return lambda _seen: pending.pop() if pending else Answer.json(200, disk_body())


_ERROR_BODY = {"error_code": "ObjectNotFound", "message": "gone", "request_id": "r-1"}


@pytest.mark.parametrize(
    ("first", "outcome"),
    [
        # The connection dies mid-body: a transport failure, retried (reads are repeatable).
        (dataclasses.replace(Answer.json(200, disk_body()), cut=40), "retried"),
        # Not JSON's content type, but JSON: the body decides, as for the real server.
        (Answer(200, json.dumps(disk_body()).encode(), {"content-type": "text/html"}), "ok"),
        # Success status, error body: an answer that does not fit, never "the disk".
        (Answer.json(200, _ERROR_BODY), "internal"),
        # Invalid UTF-8 in the body.
        (Answer(200, b'{"name": "\xff\xfe"}', {"content-type": "application/json"}), "internal"),
        # An error status whose body is not JSON at all: still the right class of error.
        (Answer(404, b"\x00\x01 not json"), "not_found"),
    ],
    ids=["cut-mid-body", "wrong-content-type", "200-with-error-body", "bad-utf8", "404-garbage"],
)
async def test_protocol_misbehaviour_ends_in_one_oxide_error_or_a_retry(
    first: Answer, outcome: str
) -> None:
    async with hostile(_first_then_fine(first)) as server:
        api = client(server.url)
        try:
            disk = await asyncio.wait_for(api.disk_view(NAME), GUARD)
        except oxerr.OxideError as exc:
            error: oxerr.OxideError | None = exc
        else:
            error = None
        await api.aclose()
    if outcome in ("ok", "retried"):
        assert error is None and disk.name == NAME
        assert len(server.seen) == (2 if outcome == "retried" else 1)
    elif outcome == "internal":
        assert isinstance(error, oxerr.OxideServerError)
        assert str(error).startswith("Oxide disk_view:")
    else:
        assert isinstance(error, oxerr.OxideNotFoundError)


# ---- 6. The carrier's one resend: harmless for what the driver sends ----------------------------
#
# StreamCarrier sends a GET or DELETE (never a POST) once more, at once, on a new connection and
# unseen by the client, when a kept-alive connection ends after the request went out and before
# any byte of an answer came (its class docstring). The server here carries out the request, then
# closes the kept-alive connection without answering.


ROOT = Path(__file__).resolve().parents[2]


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def test_the_client_sends_only_get_post_and_delete() -> None:
    """The resend's premise, on the client's side: GET, POST and DELETE only, no PUT, PATCH or
    any other method a repeat might not leave as it was; the carrier resends a GET or a DELETE,
    never a POST."""
    methods = set()
    for call in _calls(ROOT / "csi_oxide/oxide/client.py"):
        if isinstance(call.func, ast.Attribute) and call.func.attr == "_call":
            method = call.args[1]
            assert isinstance(method, ast.Constant), ast.unparse(call)
            methods.add(method.value)
    assert methods == {"GET", "POST", "DELETE"}


def test_the_controller_deletes_only_by_uuid() -> None:
    """The resend's premise, on the controller's side: every ``*_delete`` call names the object
    by the UUID it read (``x.id``, or ``disk_id``, a parameter holding one), never by a name (a
    volume or CSI snapshot ID is a name here), so a repeated DELETE can only find the same
    object, or nothing (404: gone)."""
    deletes = {name for name in dir(OxideApi) if name.endswith("_delete")}
    assert deletes == {"disk_delete", "snapshot_delete", "image_delete"}
    seen = 0
    for path in sorted((ROOT / "csi_oxide").rglob("*.py")):
        if path.parent.name == "oxide":
            continue  # the client itself, and the protocol
        for call in _calls(path):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in deletes:
                (target,) = call.args
                by_id = (isinstance(target, ast.Attribute) and target.attr == "id") or (
                    isinstance(target, ast.Name) and target.id == "disk_id"
                )
                assert by_id, f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)}"
                seen += 1
    assert seen >= 6  # disks, snapshots and images, in ops, expand and reconcile


def _dropping(method: str, nth: int, behave: Behave) -> Behave:
    """``behave``, except that the ``nth`` ``method`` request is carried out by ``behave`` and
    its connection then closed without an answer."""
    count = 0

    def drop(seen: Seen) -> Answer:
        nonlocal count
        answer = behave(seen)
        if seen.method == method:
            count += 1
            if count == nth:
                return Answer(drop=True)
        return answer

    return drop


def disk_named_in_path(seen: Seen) -> Answer:
    return Answer.json(200, disk_body(seen.path.rsplit("/", 1)[-1]))


async def test_a_delete_whose_connection_drops_is_resent_once_and_its_404_means_gone(
    tmp_path: Path,
) -> None:
    """DeleteVolume: the disk is read by name, then deleted by its UUID on the same kept-alive
    connection; the server deletes it and drops the connection. The carrier sends the DELETE
    again, on a new connection, by the same UUID (so never to a disk made under the name since),
    and its 404 is "gone": the call succeeds, and the disk is gone."""
    name = volume_name("pvc-dropped")
    rec = '{"c":"test","n":"pvc-dropped"}'
    disks = {DISK_UUID: disk_body(name, description=DESCRIPTION_PREFIX + rec)}

    def behave(seen: Seen) -> Answer:
        if seen.method == "GET" and seen.path == f"/v1/disks/{name}" and disks:
            return Answer.json(200, disks[DISK_UUID])
        if seen.method == "DELETE" and seen.path == f"/v1/disks/{DISK_UUID}" and disks:
            del disks[DISK_UUID]
            return Answer(204)
        return not_found(seen)

    records: list[RequestRecord] = []
    async with hostile(_dropping("DELETE", 1, behave)) as server:
        api = client(server.url, request_observer=records.append)
        async with controller(tmp_path, api, grace=1.0) as ctl:
            await asyncio.wait_for(
                ctl.stub.DeleteVolume(csi.DeleteVolumeRequest(volume_id=name)), GUARD
            )
    assert disks == {}  # deleted, by the request whose answer never came
    view, first, again = (s for s in server.seen if s.path.startswith("/v1/disks/"))
    assert (view.method, view.path) == ("GET", f"/v1/disks/{name}")
    assert [(s.method, s.path) for s in (first, again)] == [
        ("DELETE", f"/v1/disks/{DISK_UUID}")
    ] * 2
    assert first.connection == view.connection  # the kept-alive connection...
    assert again.connection != first.connection  # ...dropped: the resend came on a new one
    # The client saw one attempt, answered 404 (read as "gone"): the resend is the carrier's own.
    deletes = [(r.attempt, r.status, r.outcome) for r in records if r.method == "DELETE"]
    assert deletes == [(1, 404, "http_error")]


async def test_a_get_whose_connection_drops_is_answered_by_the_resend() -> None:
    records: list[RequestRecord] = []
    async with hostile(_dropping("GET", 2, disk_named_in_path)) as server:
        api = client(server.url, request_observer=records.append)
        assert (await api.disk_view(NAME)).name == NAME  # opens the kept-alive connection
        assert (await asyncio.wait_for(api.disk_view(NAME), GUARD)).name == NAME
        await api.aclose()
    warm, dropped, resent = server.seen
    assert [s.method for s in server.seen] == ["GET"] * 3
    assert dropped.connection == warm.connection != resent.connection
    # One attempt each as the client sees it: the resend answered the second.
    assert [(r.attempt, r.status) for r in records] == [(1, 200), (1, 200)]


async def test_a_post_whose_connection_drops_is_never_resent_by_the_carrier() -> None:
    """A create whose connection drops before its answer: the carrier does not send it again; only
    the client's RetryPolicy does, each attempt recorded and paced (and a create that did happen
    is found again by name: test_client.py). The server sees exactly one POST per attempt."""

    def behave(seen: Seen) -> Answer:
        if seen.method == "POST":
            return Answer(drop=True)  # every create: carried out or not, never answered
        return disk_named_in_path(seen)

    records: list[RequestRecord] = []
    spec = DiskSpec(name=NAME, description="d", size=GIB, block_size=4096)
    async with hostile(behave) as server:
        api = client(server.url, request_observer=records.append)
        await api.disk_view(NAME)  # the create goes on this kept-alive connection
        with pytest.raises(oxerr.OxideUnavailableError, match="could not connect"):
            await asyncio.wait_for(api.disk_create(spec), GUARD)
        await api.aclose()
    posts = [s for s in server.seen if s.method == "POST"]
    creates = [r for r in records if r.operation == "disk_create"]
    assert len(creates) >= 2  # the client's own retries...
    assert [r.attempt for r in creates] == list(range(1, len(creates) + 1))
    assert {r.outcome for r in creates} == {"connection_error"}
    assert len(posts) == len(creates)  # ...and nothing else: no resend of a POST
    assert posts[0].connection == server.seen[0].connection  # it went on the kept-alive one
    assert len({p.connection for p in posts}) == len(posts)  # each dropped, each one new
