"""A plain HTTP GET for tests, from the standard library: the driver's metrics endpoint, a
simulator served on 127.0.0.1. No proxy, no redirect, one connection per request, blocking (an
async test runs it in a thread: ``await asyncio.to_thread(get, url)``)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit


@dataclass(frozen=True, slots=True)
class Got:
    """A complete answer; ``headers`` by lower-case name."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def get(
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Got:
    """``GET url`` (``http://host:port/path``) with ``params`` as its query."""
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname, url
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if params:
        target += ("&" if parts.query else "?") + urlencode(params)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", target, headers=dict(headers or {}))
        answer = connection.getresponse()
        headers = {name.lower(): value for name, value in answer.getheaders()}
        return Got(answer.status, headers, answer.read())
    finally:
        connection.close()
