"""The carrier of HttpOxideClient (StreamCarrier, csi_oxide/oxide/transport.py): TLS trust,
proxies from the environment, the query and body as sent, errors that never hold the request (its
headers carry the token); and the lab's in-process carrier, which must hand an app what
StreamCarrier puts on the wire.

Real TCP (and TLS) against tests/oxide/hostile.py's server; the certificate is made here with
the openssl command line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl

import pytest

from csi_oxide.oxide import errors as oxerr
from csi_oxide.oxide import wire
from csi_oxide.oxide.client import HttpOxideClient, RequestObserver, RequestRecord, RetryPolicy
from csi_oxide.oxide.credentials import StaticToken
from csi_oxide.oxide.transport import proxy_from_environment
from csi_oxide.oxide.types import DiskSpec
from tests import skips
from tests.oxide import scripted
from tests.oxide.hostile import Answer, HostileServer, Seen
from tests.oxide_bodies import disk_body
from tests.units import GIB

TOKEN = "oxide-token-7ra9570r7ra9570r7ra9570r7ra9570r7ra9570r"
NAME = "csi-0123456789abcdef"
QUICK = RetryPolicy(max_elapsed=0.3, base_delay=0.01, max_delay=0.05)
PROXY_VARIABLES = ["http_proxy", "https_proxy", "all_proxy", "no_proxy"]


def client(url: str, **kwargs: object) -> HttpOxideClient:
    kwargs.setdefault("retry", QUICK)
    return HttpOxideClient(url, StaticToken(TOKEN), "p", **kwargs)  # type: ignore[arg-type]


def disk_for(seen: Seen) -> Answer:
    return Answer.json(200, disk_body(seen.path.rsplit("/", 1)[-1]))


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    skips.need_tools("openssl", install="Debian's openssl, to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=oxide-test"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_is_verified_with_the_custom_ca_and_nothing_goes_to_an_unverified_server(
    certificate: tuple[Path, Path], no_proxy_settings: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    async with HostileServer(disk_for, tls=tls) as server:
        trusted = client(server.url, ca_file=cert)
        assert (await trusted.disk_view(NAME)).name == NAME
        await trusted.aclose()
        assert [s.headers["authorization"] for s in server.seen] == [f"Bearer {TOKEN}"]
        untrusted = client(server.url)  # the default trust store does not know this CA
        with pytest.raises(oxerr.OxideUnavailableError, match=r"(?i)certificate"):
            await untrusted.disk_view(NAME)
        await untrusted.aclose()
    assert len(server.seen) == 1  # the token never went to the server it could not verify


async def test_a_proxy_from_the_environment_carries_the_requests(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY names the proxy (here the test server, answering as the API would); the API's
    own host is never resolved or reached directly."""
    async with HostileServer(disk_for) as proxy:
        no_proxy_settings.setenv("HTTP_PROXY", proxy.url)
        api = client("http://oxide-api.invalid:8080")
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()
    assert [s.path for s in proxy.seen] == [f"/v1/disks/{NAME}"]
    assert proxy.seen[0].headers["host"] == "oxide-api.invalid:8080"


def test_the_proxy_is_chosen_from_the_environment(no_proxy_settings: pytest.MonkeyPatch) -> None:
    """``<scheme>_proxy``, else ``all_proxy``, unless ``no_proxy`` names the host (as httpx,
    which the driver used before, and curl read them)."""
    assert proxy_from_environment("https://oxide.example.com") is None
    no_proxy_settings.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert proxy_from_environment("https://oxide.example.com") == "http://proxy.example:3128"
    assert proxy_from_environment("http://oxide.example.com") is None  # only https's proxy set
    no_proxy_settings.setenv("ALL_PROXY", "http://all.example:3128")
    assert proxy_from_environment("http://oxide.example.com") == "http://all.example:3128"
    no_proxy_settings.setenv("NO_PROXY", "example.com")
    assert proxy_from_environment("https://oxide.example.com") is None


async def test_query_and_body_are_sent_as_the_api_expects(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """A page token full of characters with a meaning in URLs comes back to the server as it
    was; the body is compact JSON; nothing asks for a compressed answer."""
    token = "a+b/c=d&e f%"

    def behave(seen: Seen) -> Answer:
        if seen.method == "POST":
            asked = json.loads(seen.body)
            return Answer.json(201, disk_body(asked["name"], description=asked["description"]))
        if "page_token" in seen.query:
            return Answer.json(200, {"items": [], "next_page": None})
        return Answer.json(200, {"items": [disk_body()], "next_page": token})

    spec = DiskSpec(name=NAME, description="d ü", size=GIB, block_size=4096)
    async with HostileServer(behave) as server:
        api = client(server.url)
        await api.disk_create(spec)
        assert len(await api.disk_list()) == 1
        await api.aclose()
    create, first, second = server.seen
    assert create.headers["content-type"] == "application/json"
    # Compact, UTF-8 (as the Oxide SDKs send it).
    body = json.dumps(wire.disk_create_body(spec), ensure_ascii=False, separators=(",", ":"))
    assert create.body == body.encode()
    assert first.query == {"project": "p", "limit": "1000"}
    assert second.query == {"page_token": token, "limit": "1000"}
    assert all(s.headers.get("accept-encoding") == "identity" for s in server.seen)


async def _every_kind_of_request(api: HttpOxideClient) -> None:
    """A request of each shape the driver sends, each answered 404: a JSON body beyond ASCII, a
    query, a selector that must stay one path segment, a DELETE, a POST without a body."""
    spec = DiskSpec(name=NAME, description="d ü ✓", size=GIB, block_size=4096)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: api.disk_create(spec),
        api.disk_list,
        lambda: api.disk_view("../x y"),
        lambda: api.disk_delete("6c1a9d3e-2f4b-4c5d-8e9f-0a1b2c3d4e5f"),
        lambda: api.instance_stop("node-1"),
    ]
    for call in calls:
        with pytest.raises(oxerr.OxideNotFoundError):
            await call()
    await api.aclose()


async def test_the_in_process_carrier_hands_the_app_what_the_carrier_sends(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """The tests (and the simulator's in-process runs) see the driver's requests through the
    lab's AsgiCarrier: the same requests as StreamCarrier puts on the wire, Host and Content-Length
    included (the same method, raw path, query, headers and body)."""
    in_process: list[scripted.Seen] = []

    def app(seen: scripted.Seen) -> scripted.Reply:
        in_process.append(seen)
        return scripted.Reply(404)

    async with HostileServer(lambda _seen: Answer(404)) as server:
        await _every_kind_of_request(client(server.url))
        await _every_kind_of_request(client(server.url, carrier=scripted.scripted(app)))

    def on_the_wire(s: Seen) -> tuple[object, ...]:
        return (s.method, s.path, s.query, s.headers, s.body)

    def handed_to_the_app(s: scripted.Seen) -> tuple[object, ...]:
        raw_path, _, query = s.target.partition("?")
        return (s.method, raw_path, dict(parse_qsl(query)), dict(s.headers), s.content)

    assert len(server.seen) == 5
    assert [handed_to_the_app(s) for s in in_process] == [on_the_wire(s) for s in server.seen]
    assert server.seen[2].path == "/v1/disks/..%2Fx%20y"
    assert server.seen[4].headers["content-length"] == "0"  # a POST without a body


async def test_an_unreadable_answer_leaves_no_trace_of_the_token(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """An answer that is not HTTP: the error the client raises refers to nothing of the request
    (its headers, the token among them), not even as an exception's context."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = client(f"http://127.0.0.1:{port}")
    with pytest.raises(oxerr.OxideUnavailableError) as info:
        await api.disk_view(NAME)
    await api.aclose()
    server.close()
    chain: list[BaseException] = []
    pending: list[BaseException | None] = [info.value]
    while pending:
        exc = pending.pop()
        if exc is None or any(exc is seen for seen in chain):
            continue
        chain.append(exc)
        pending += [exc.__cause__, exc.__context__]
    assert len(chain) >= 2  # the error and the failure it came from
    for exc in chain:
        for text in (str(exc), repr(exc), repr(exc.args), repr(vars(exc))):
            assert TOKEN not in text
            assert TOKEN.removeprefix("oxide-token-") not in text


# ---- connections that cannot work: named, and not retried when no retry can help ------------


def _attempts(records: list[RequestRecord]) -> RequestObserver:
    return records.append


async def _fails(api: HttpOxideClient) -> tuple[str, float]:
    """The error text of a request that must fail, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(oxerr.OxideUnavailableError) as info:
        await api.disk_view(NAME)
    await api.aclose()
    return str(info.value), time.monotonic() - started


async def _plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """What an HTTP server does with a TLS handshake: reads it as a bad request, answers 400."""
    await reader.read(512)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_https_to_a_plain_http_server_says_so_at_once(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    records: list[RequestRecord] = []
    server = await asyncio.start_server(_plain_http, "127.0.0.1", 0)
    async with server:
        where = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        api = client(f"https://{where}", retry=RetryPolicy(), request_observer=_attempts(records))
        message, seconds = await _fails(api)
    assert f"the server speaks plain HTTP: use http://{where}" in message
    assert len(records) == 1 and seconds < 5  # the production policy: no retry can cure it


async def test_an_untrusted_certificate_is_not_retried_and_names_the_ca_setting(
    certificate: tuple[Path, Path], no_proxy_settings: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    records: list[RequestRecord] = []
    async with HostileServer(disk_for, tls=tls) as server:
        api = client(server.url, retry=RetryPolicy(), request_observer=_attempts(records))
        message, seconds = await _fails(api)
    assert "CSI_OXIDE_CA_FILE" in message
    assert len(records) == 1 and seconds < 5


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_is_retried_by_the_daemon_and_not_on_first_contact(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    daemon: list[RequestRecord] = []
    message, _ = await _fails(client(url, request_observer=_attempts(daemon)))
    assert len(daemon) > 1  # the API may be restarting: the controller keeps trying
    assert "nothing listens at 127.0.0.1:" in message
    first: list[RequestRecord] = []
    once = RetryPolicy(retry_unreachable=False)
    message, seconds = await _fails(client(url, retry=once, request_observer=_attempts(first)))
    assert len(first) == 1 and seconds < 5
    assert "nothing listens at 127.0.0.1:" in message and "after 1 attempt" in message


async def test_a_host_name_that_does_not_resolve_is_named(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    def unknown(host: object, *_args: object, **_kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    no_proxy_settings.setattr(socket, "getaddrinfo", unknown)  # no lookup leaves the machine
    records: list[RequestRecord] = []
    once = RetryPolicy(retry_unreachable=False)
    api = client("https://oxide.invalid", retry=once, request_observer=_attempts(records))
    message, _ = await _fails(api)
    assert "the host name 'oxide.invalid' does not resolve: check OXIDE_HOST" in message
    assert len(records) == 1


# ---- the carrier's own HTTP/1.1: framings, kept-alive connections, tunnels ---------------------


class Listening:
    """A server on 127.0.0.1 whose connections ``_serve`` handles (``async with``: listening),
    and the tasks it starts, cancelled when it stops."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Scripted(Listening):
    """A raw HTTP peer on 127.0.0.1: reads each request's head (and body, by content-length)
    and writes the next of ``answers`` as given, byte for byte; a ``None`` next in line closes
    the connection at once, without waiting for another request. Records each request's first
    line with its connection's number."""

    def __init__(self, answers: list[bytes | None]) -> None:
        super().__init__()
        self.answers = answers
        self.requests: list[tuple[int, str]] = []
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while self.answers and self.answers[0] is not None:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next(
                    (
                        int(v)
                        for k, _, v in (x.partition(": ") for x in lines)
                        if k == "content-length"
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests.append((number, lines[0]))
                answer = self.answers.pop(0)
                assert answer is not None
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self.answers and self.answers[0] is None:
                self.answers.pop(0)
            writer.close()


def _ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\n{head}\r\n".encode() + body


DISK = json.dumps(disk_body(NAME)).encode()


def _chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\nx-trailer: yes\r\n\r\n"


async def test_a_chunked_answer_is_read_whole_and_its_connection_kept(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    answers: list[bytes | None] = [
        _ok(_chunked(DISK, 7), "transfer-encoding: chunked"),
        _ok(DISK, f"content-length: {len(DISK)}"),
    ]
    async with Scripted(answers) as server:
        api = client(server.url)
        assert (await api.disk_view(NAME)).name == NAME
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()
    assert [number for number, _ in server.requests] == [1, 1]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        # No length at all: the body runs until the server closes (it must, to end it).
        (_ok(DISK), [None]),
        # These two the server would keep open: the client must not use them again.
        (_ok(DISK, f"content-length: {len(DISK)}", "connection: close"), []),
        (b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(DISK), DISK), []),
    ],
    ids=["until-close", "connection-close", "http-1.0"],
)
async def test_a_connection_that_cannot_be_kept_is_not_used_again(
    first: bytes, then: list[bytes | None], no_proxy_settings: pytest.MonkeyPatch
) -> None:
    answers = [first, *then, _ok(DISK, f"content-length: {len(DISK)}")]
    async with Scripted(answers) as server:
        api = client(server.url)
        assert (await api.disk_view(NAME)).name == NAME
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()
    assert [number for number, _ in server.requests] == [1, 2]


async def test_an_interim_answer_is_passed_over(no_proxy_settings: pytest.MonkeyPatch) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    async with Scripted([interim + _ok(DISK, f"content-length: {len(DISK)}")]) as server:
        api = client(server.url)
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_used(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """The server answers, then closes the kept-alive connection; the next request (a POST,
    which is never sent twice) goes on a new connection at once: one attempt, no failure."""
    created = json.dumps(disk_body(NAME, description="d")).encode()
    answers: list[bytes | None] = [
        _ok(DISK, f"content-length: {len(DISK)}"),
        None,
        b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\n\r\n%s" % (len(created), created),
    ]
    records: list[RequestRecord] = []
    spec = DiskSpec(name=NAME, description="d", size=GIB, block_size=4096)
    async with Scripted(answers) as server:
        api = client(server.url, request_observer=records.append)
        await api.disk_view(NAME)
        await asyncio.sleep(0.2)  # the server's close reaches the client's event loop
        assert (await api.disk_create(spec)).name == NAME
        await api.aclose()
    assert server.requests == [
        (1, f"GET /v1/disks/{NAME}?project=p HTTP/1.1"),
        (2, "POST /v1/disks?project=p HTTP/1.1"),
    ]
    assert [(r.operation, r.attempt, r.status) for r in records] == [
        ("disk_view", 1, 200),
        ("disk_create", 1, 201),
    ]


def _disk_answer(description: str) -> bytes:
    body = json.dumps(disk_body(NAME, description=description)).encode()
    return _ok(body, f"content-length: {len(body)}")


@pytest.mark.parametrize(
    "extra",
    [
        _disk_answer("stale"),  # a whole second answer nobody asked for
        b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",  # a late one, idle
        b"tail",  # more than the content-length said
    ],
    ids=["second-answer", "late-408", "overlong-body"],
)
async def test_bytes_that_belong_to_no_request_retire_the_connection(
    extra: bytes, no_proxy_settings: pytest.MonkeyPatch
) -> None:
    """What comes after an answer, before the next request, answers nothing: the connection is
    out of step (an answer read from it could be another request's), so it is dropped and the
    next request goes on a new one; its own answer is the one taken."""
    answers: list[bytes | None] = [_disk_answer("first") + extra, _disk_answer("second")]
    async with Scripted(answers) as server:
        api = client(server.url)
        assert (await api.disk_view(NAME)).description == "first"
        await asyncio.sleep(0.1)  # the extra bytes reach the client's event loop
        assert (await api.disk_view(NAME)).description == "second"
        await api.aclose()
    assert [number for number, _ in server.requests] == [1, 2]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (_ok(b"zz\r\n", "transfer-encoding: chunked"), "ValueError"),
        (_ok(DISK, "transfer-encoding: gzip"), "transfer coding"),
        (_ok(DISK, "transfer-encoding: chunked", f"content-length: {len(DISK)}"), "both"),
        (_ok(DISK, "content-length: 5", "content-length: 6"), "conflicting"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", "larger than 65536"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
    ],
    ids=["bad-chunk-size", "gzip", "te-and-cl", "two-lengths", "huge-head", "upgrade"],
)
async def test_an_answer_that_cannot_be_framed_is_a_failure_retried_then_named(
    answer: bytes, problem: str, no_proxy_settings: pytest.MonkeyPatch
) -> None:
    async with Scripted([answer] * 50) as server:
        api = client(server.url, retry=RetryPolicy(max_elapsed=0.05, base_delay=0.01))
        with pytest.raises(oxerr.OxideUnavailableError) as info:
            await asyncio.wait_for(api.disk_view(NAME), 10)
        await api.aclose()
    assert problem in str(info.value)
    assert len(server.requests) >= 2  # retried: a failure, never an answer
    assert len({number for number, _ in server.requests}) == len(server.requests)  # each dropped


async def test_a_chunked_answer_beyond_the_cap_is_abandoned(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    big = b"x" * 5000
    async with Scripted([_ok(_chunked(big, 1000), "transfer-encoding: chunked")]) as server:
        api = client(server.url, max_body=4096)
        with pytest.raises(oxerr.OxideServerError, match="is larger than the 4096 bytes"):
            await api.disk_view(NAME)
        await api.aclose()


class ConnectProxy(Listening):
    """An HTTP proxy on 127.0.0.1 that only tunnels: ``CONNECT host:port`` then bytes both ways
    (or ``refuse``: that status instead). Records each CONNECT's head."""

    def __init__(self, refuse: int | None = None, inject: bytes = b"") -> None:
        super().__init__()
        self.refuse = refuse
        self.inject = inject  # sent in the clear right after its 200, before the tunnel's bytes
        self.heads: list[str] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        self.heads.append(head)
        if self.refuse is not None:
            writer.write(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % self.refuse)
            await writer.drain()
            writer.close()
            return
        host, _, port = head.split(" ")[1].rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.inject)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            t = asyncio.create_task(task)
            self._tasks.add(t)


async def test_an_https_api_is_reached_through_a_proxys_tunnel_with_its_credentials(
    certificate: tuple[Path, Path], no_proxy_settings: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with ``user:password@``: a CONNECT to the API's address carrying basic proxy
    authorization; TLS end to end with the API (its certificate checked against the CA given),
    so the proxy never sees the token, which goes inside the tunnel only."""
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    async with HostileServer(disk_for, tls=tls) as server, ConnectProxy() as proxy:
        where = server.url.removeprefix("https://")
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url.replace("://", "://al%40ice:s3cret@"))
        api = client(server.url, ca_file=cert)
        assert (await api.disk_view(NAME)).name == NAME
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()
    assert len(proxy.heads) == 1  # one tunnel, kept alive for both requests
    assert proxy.heads[0].startswith(f"CONNECT {where} HTTP/1.1\r\n")
    assert "proxy-authorization: Basic YWxAaWNlOnMzY3JldA==\r\n" in proxy.heads[0]
    assert TOKEN not in proxy.heads[0]
    assert [s.headers["authorization"] for s in server.seen] == [f"Bearer {TOKEN}"] * 2


async def test_bytes_a_proxy_slips_in_ahead_of_the_tunnel_are_never_taken_for_the_api(
    certificate: tuple[Path, Path], no_proxy_settings: pytest.MonkeyPatch
) -> None:
    """A proxy that follows its 200 with an answer of its own, in the clear: those bytes come
    from outside TLS, so they are no answer of the API's. The tunnel is refused (each attempt),
    never a forged disk taken for the real one."""
    cert, key = certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    forged = _disk_answer("forged by the proxy")
    async with (
        HostileServer(disk_for, tls=tls) as server,
        ConnectProxy(inject=forged) as proxy,
    ):
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
        api = client(server.url, ca_file=cert, retry=RetryPolicy(max_elapsed=0.05, base_delay=0.01))
        with pytest.raises(oxerr.OxideUnavailableError, match="after its answer to CONNECT"):
            await api.disk_view(NAME)
        await api.aclose()
    assert server.seen == []  # no request went into a tunnel the proxy had tampered with
    assert len(proxy.heads) >= 2  # each attempt asked anew, and was refused anew


async def test_a_tunnel_the_proxy_refuses_is_named(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    async with ConnectProxy(refuse=407) as proxy:
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
        api = client("https://oxide.invalid:8443")
        with pytest.raises(
            oxerr.OxideUnavailableError, match=r"refused a tunnel to oxide\.invalid:8443: HTTP 407"
        ):
            await api.disk_view(NAME)
        await api.aclose()


@pytest.mark.parametrize(
    ("proxy", "refusal"),
    [
        ("https://user:s3cret@proxy.invalid:3128", "only http:// proxies are supported"),
        ("http://user:s3cret@proxy.invalid:99999", "is not a URL whose host and port can be read"),
        ("http://[::1", "is not a URL whose host and port can be read"),
        ("http://user:s3cret@proxy:port", "is not a URL whose host and port can be read"),
    ],
    ids=["https-proxy", "port-out-of-range", "open-bracket", "port-not-a-number"],
)
async def test_a_proxy_that_cannot_be_used_is_refused_without_retrying(
    proxy: str, refusal: str, no_proxy_settings: pytest.MonkeyPatch
) -> None:
    """Not an error at start-up (the client is made) but a refusal of each request that says
    why, quotes none of the URL (it may hold a password), and is not retried."""
    no_proxy_settings.setenv("HTTPS_PROXY", proxy)
    records: list[RequestRecord] = []
    api = client("https://oxide.invalid", retry=RetryPolicy(), request_observer=records.append)
    message, seconds = await _fails(api)
    assert refusal in message
    assert "s3cret" not in message and "user" not in message
    assert len(records) == 1 and seconds < 5


async def test_a_get_dropped_on_a_new_connection_is_left_to_the_clients_retry(
    no_proxy_settings: pytest.MonkeyPatch,
) -> None:
    """The carrier resends only on a kept-alive connection (one the server may have closed as
    the request went out); a new connection that ends unanswered is a failed attempt, which the
    client's RetryPolicy retries, recorded and paced."""
    pending = [Answer(drop=True)]
    records: list[RequestRecord] = []
    async with HostileServer(lambda s: pending.pop() if pending else disk_for(s)) as server:
        api = client(server.url, request_observer=records.append)
        assert (await api.disk_view(NAME)).name == NAME
        await api.aclose()
    assert [(r.attempt, r.outcome) for r in records] == [(1, "connection_error"), (2, "ok")]
    assert [s.connection for s in server.seen] == [1, 2]
