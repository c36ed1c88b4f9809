"""Validation of requests and responses against the published OpenAPI document (openapi-core).

The document is loaded once per process. Its location is ``$CSI_OXIDE_OPENAPI`` or the copy of
Oxide's published document (API version 2026081901.0.0) shipped in ``csi_oxide_lab/sim/openapi/``.
openapi-core (a development dependency) is imported only when validation is used, so the served
simulator does not need it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openapi_core import OpenAPI

SPEC_ENV = "CSI_OXIDE_OPENAPI"


def spec_path() -> Path:
    """Where the published API document is read from."""
    override = os.environ.get(SPEC_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "openapi" / "oxide-api.json"


@functools.cache
def _openapi(path: Path) -> OpenAPI:
    from openapi_core import OpenAPI
    from openapi_core.configurations import Config

    with path.open("rb") as f:
        document = json.load(f)
    # The published document carries a few defaults its own schemas reject (in IP pool types, not
    # in anything the simulator serves), so the check of the document itself is turned off.
    return OpenAPI.from_dict(document, config=Config(spec_validator_cls=None))


def load() -> OpenAPI:
    """The parsed document (cached per process and path)."""
    return _openapi(spec_path())


class _Request:
    """The request shape openapi-core reads (its ``Request`` protocol)."""

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
        content_type: str,
    ) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url = "http://sim"
        self.method = method.lower()
        self.path = path
        self.body = body or None
        self.content_type = content_type
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query), header=Headers(dict(headers))
        )


class _Response:
    """The response shape openapi-core reads (its ``Response`` protocol)."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        from werkzeug.datastructures import Headers

        self.status_code = status
        self.data = body or None
        self.content_type = content_type
        self.headers = Headers({"content-type": content_type}) if content_type else Headers()


def _describe(exc: BaseException) -> str:
    parts = [str(exc) or type(exc).__name__]
    cause = exc.__cause__
    schema_errors = getattr(cause, "schema_errors", None)
    if schema_errors:
        parts.extend(getattr(e, "message", str(e)) for e in schema_errors)
    elif cause is not None:
        parts.append(str(cause))
    return "; ".join(p for p in parts if p)


class Request:
    """One HTTP request as the validator needs it."""

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> None:
        self.method, self.path, self.query = method, path, query
        self.headers, self.body = headers, body

    def _core(self) -> _Request:
        content_type = self.headers.get("content-type", "application/json" if self.body else "")
        return _Request(self.method, self.path, self.query, self.headers, self.body, content_type)


def request_errors(request: Request) -> list[str]:
    """What is wrong with ``request`` according to the published document (empty when valid)."""
    return [_describe(e) for e in load().iter_request_errors(request._core())]


def response_errors(request: Request, status: int, body: bytes, content_type: str) -> list[str]:
    """What is wrong with a response to ``request`` (empty when valid)."""
    response = _Response(status, body, content_type)
    return [_describe(e) for e in load().iter_response_errors(request._core(), response)]
