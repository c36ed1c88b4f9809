"""HTTP/1.1 framing for the Oxide API's carrier (``csi_oxide.oxide.transport``): pure functions
on bytes, no I/O, so that every rule of the wire can be tested on its own.

What the driver needs of HTTP/1.1 is small, and fixed by what it sends: GET, POST and DELETE with
a JSON body or none, to one server, kept-alive connections, no content coding (every request says
``accept-encoding: identity``), no redirects followed, no cookies, no upgrades. What it must read
is whatever a server (or something posing as one) answers, so the parsing here refuses anything
it cannot frame exactly rather than guess (RFC 9112):

- a status line ``HTTP/1.x NNN reason``; header fields ``name: value``, names without spaces,
  no line folding; the whole head at most ``MAX_HEAD`` bytes (the reader's limit);
- the body's length from, in this order: no body for a 1xx, 204 or 304 answer; chunked when
  ``transfer-encoding`` is ``chunked`` (any other coding is refused: nothing was asked for; and
  so is an answer that also gives a ``content-length``, a sign of response splitting);
  ``content-length`` (repeated only with one value); else the body runs until the connection
  closes, and the connection is not used again;
- a connection is kept for another request only after an HTTP/1.1 answer without
  ``connection: close`` whose body had a known end.

A request's head is refused (``ValueError``) when a name or value holds a line break: nothing a
caller passes can add a header line or split the request.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping

MAX_HEAD = 64 * 1024  # the most an answer's head (or a chunk's size line) may take, in bytes
MAX_TRAILERS = 64  # trailer lines after the last chunk read and dropped at most
CRLF = b"\r\n"


class Headers(Mapping[str, str]):
    """An answer's header fields; names looked up case-insensitively. A repeated field's values
    are joined with ``", "`` (RFC 9110 5.3)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        self._fields: dict[str, str] = {}
        for name, value in (fields or {}).items():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Add one field line."""
        key = name.lower()
        old = self._fields.get(key)
        self._fields[key] = value if old is None else f"{old}, {value}"

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class Framing(enum.Enum):
    """How an answer's body ends."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # content-length bytes
    CHUNKED = "chunked"  # chunked transfer coding
    CLOSE = "close"  # until the server closes the connection


def request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """The head of a request: its line, ``host``, ``headers`` and the body's ``content-length``
    (a request without a body has one, ``0``, unless its method is GET, as clients send it)."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None or method != "GET":
        lines.append(f"content-length: {len(body or b'')}")
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks or "\0" in text:
        raise ValueError("a request header holds a line break or NUL; nothing was sent")
    return (text + "\r\n\r\n").encode("utf-8")


def parse_head(raw: bytes) -> tuple[int, int, str, Headers]:
    """``(minor version, status, reason, headers)`` of an answer's head (its bytes up to and
    including the blank line); ``ValueError`` when it is not an HTTP/1.x answer's head."""
    text = raw.decode("latin-1")
    if not text.endswith("\r\n\r\n"):
        raise ValueError("the answer's head does not end in a blank line")
    head = text[:-4]
    breaks = head.count("\r\n")
    if head.count("\r") != breaks or head.count("\n") != breaks or "\0" in head:
        raise ValueError("the answer holds a bare line break or a NUL in its head")
    status_line, *fields = head.split("\r\n")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ValueError("the answer does not begin with an HTTP/1.x status line")
    if len(code) != 3 or not code.isdigit() or not code.isascii():
        raise ValueError("the answer's status code is not three digits")
    headers = Headers()
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon or not name or name != name.strip() or " " in name or "\t" in name:
            raise ValueError("the answer holds a header line that is not 'name: value'")
        headers.add(name, value.strip(" \t"))
    return int(version[-1]), int(code), reason, headers


def framing(status: int, headers: Headers) -> tuple[Framing, int]:
    """How the body of an answer with ``status`` and ``headers`` ends, and its length for
    ``Framing.LENGTH`` (else 0); ``ValueError`` when it cannot be framed exactly."""
    if 100 <= status < 200 or status in (204, 304):
        return Framing.NONE, 0
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if "content-length" in headers:  # a sign of response splitting (RFC 9112 6.3)
            raise ValueError("the answer gives both a transfer-encoding and a content-length")
        codings = [c.strip().lower() for c in coding.split(",")]
        if codings != ["chunked"]:
            raise ValueError("the answer uses a transfer coding other than chunked")
        return Framing.CHUNKED, 0
    length = headers.get("content-length")
    if length is None:
        return Framing.CLOSE, 0
    values = {v.strip() for v in length.split(",")}
    if len(values) != 1:
        raise ValueError("the answer gives conflicting content-lengths")
    (value,) = values
    if not value.isdigit() or not value.isascii() or len(value) > 18:
        raise ValueError("the answer's content-length is not a number of bytes")
    return Framing.LENGTH, int(value)


def keeps_alive(minor: int, headers: Headers, how: Framing) -> bool:
    """Whether the connection may carry another request after this answer."""
    if minor != 1 or how is Framing.CLOSE:
        return False
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "close" not in tokens


def chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (``1a;ext=1\\r\\n``); ``ValueError`` unless it is
    hexadecimal digits (at most 15 of them) ending in CRLF."""
    if not line.endswith(CRLF):
        raise ValueError("a chunk's size line does not end in CRLF")
    digits = line[:-2].split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 15 or any(d not in b"0123456789abcdefABCDEF" for d in digits):
        raise ValueError("a chunk's size is not hexadecimal")
    return int(digits, 16)
