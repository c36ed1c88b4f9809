"""The lab's in-process requests (csi_oxide_lab/asgi.py): what an app's behaviour means to the
caller (a complete answer, a body beyond the cap, no answer, a crash, a deadline), and the plain
client the simulator tests use. That the driver's requests reach the app as its carrier
(StreamCarrier) sends them is tests/oxide/test_transport.py's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from csi_oxide.oxide.transport import AnswerTooLargeError, Request, TransportFailure
from csi_oxide_lab.asgi import AsgiCarrier, AsgiClient


def _get(path: str) -> Request:
    return Request("GET", f"http://sim{path}", {"accept-encoding": "identity"}, None)


async def _echo(request: StarletteRequest) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "body": (await request.body()).decode(),
        }
    )


def _big(request: StarletteRequest) -> Response:
    return Response(b"x" * 2048, media_type="text/plain")


def _big_unannounced(request: StarletteRequest) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 64

    return StreamingResponse(chunks())


def _trickle(request: StarletteRequest) -> Response:
    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x"
            await asyncio.sleep(0.05)

    return StreamingResponse(slowly())


def _crash(request: StarletteRequest) -> Response:
    raise RuntimeError("the app's own bug")


APP = Starlette(
    routes=[
        Route("/echo/{rest:path}", _echo, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/big", _big),
        Route("/big-unannounced", _big_unannounced),
        Route("/trickle", _trickle),
        Route("/crash", _crash),
    ]
)


async def test_an_answer_is_complete_with_status_reason_headers_and_body() -> None:
    answer = await AsgiCarrier(APP).exchange(_get("/echo/a%2Fb?x=1&y=%20"), 1 << 20)
    assert (answer.status_code, answer.reason_phrase) == (200, "OK")
    assert answer.headers["Content-Type"] == "application/json"  # any case
    seen = answer.json()
    assert isinstance(seen, dict)
    assert (seen["path"], seen["query"]) == ("/echo/a/b", "x=1&y=%20")
    assert seen["headers"]["host"] == "sim"
    assert "content-length" not in seen["headers"]  # a GET without a body, as the carrier sends it


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
async def test_a_body_beyond_the_cap_is_abandoned(path: str) -> None:
    with pytest.raises(AnswerTooLargeError, match="1024 bytes the driver reads"):
        await AsgiCarrier(APP).exchange(_get(path), 1024)
    assert (await AsgiCarrier(APP).exchange(_get(path), 4096)).content == b"x" * (
        2048 if path == "/big" else 4096
    )


async def test_an_app_that_never_answers_is_a_lost_connection() -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def half(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})

    for app in (silent, half):
        with pytest.raises(TransportFailure) as info:
            await AsgiCarrier(app).exchange(_get("/"), 1024)
        assert info.value.outcome == "connection_error"


async def test_an_apps_exception_reaches_the_caller_as_it_is() -> None:
    with pytest.raises(RuntimeError, match="the app's own bug"):
        await AsgiCarrier(APP).exchange(_get("/crash"), 1024)


async def test_the_callers_deadline_cuts_a_trickled_answer() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await AsgiCarrier(APP).exchange(_get("/trickle"), 1024)


async def test_the_plain_client_sends_params_json_raw_bodies_and_its_headers() -> None:
    async with AsgiClient(APP, headers={"Authorization": "Bearer t"}) as http:
        r = await http.post("/echo/x", params={"limit": 3, "q": "a b"}, json={"name": "ü"})
        assert r.status_code == 200
        seen = r.json()
        assert seen["query"] == "limit=3&q=a+b"
        assert seen["body"] == '{"name":"ü"}'
        assert seen["headers"]["content-type"] == "application/json"
        assert seen["headers"]["authorization"] == "Bearer t"
        del http.headers["authorization"]
        r = await http.put("/echo/y", content=b"{not json", headers={"API-Version": "v"})
        seen = r.json()
        assert seen["body"] == "{not json"
        assert seen["headers"]["api-version"] == "v"
        assert "authorization" not in seen["headers"]
        assert seen["headers"]["content-length"] == "9"
        assert (await http.delete("/echo/z")).json()["method"] == "DELETE"
        missing = await http.get("/nowhere")
        assert (missing.status_code, missing.text) == (404, "Not Found")
