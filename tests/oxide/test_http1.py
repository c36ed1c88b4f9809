"""HTTP/1.1 framing (``csi_oxide.oxide.http1``): the exact bytes of a request's head, and the
strict reading of an answer's head, body framing, connection reuse and chunk sizes.

The carrier trusts nothing a server answers, so every rule that refuses a head or a framing is
tested on its own: a lenient reading here would let a server (or something posing as one) desync
a kept-alive connection or smuggle a second answer into the first.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from csi_oxide.oxide import http1
from csi_oxide.oxide.http1 import Framing, Headers

HOST = "oxide.example:443"
JSON = {"accept": "application/json", "accept-encoding": "identity"}


def head(*lines: str) -> bytes:
    """An answer's head from its lines, each ended by CRLF, then the blank line."""
    return "".join(f"{line}\r\n" for line in lines).encode("latin-1") + b"\r\n"


# request_head


def test_a_get_without_a_body_has_no_content_length() -> None:
    raw = http1.request_head("GET", "/v1/disks?project=p", HOST, JSON, None)
    assert raw == (
        b"GET /v1/disks?project=p HTTP/1.1\r\n"
        b"host: oxide.example:443\r\n"
        b"accept: application/json\r\n"
        b"accept-encoding: identity\r\n"
        b"\r\n"
    )


def test_a_post_with_a_json_body_gives_its_length_in_bytes() -> None:
    body = '{"name":"disk-é"}'.encode()  # a non-ASCII character: bytes, not characters
    raw = http1.request_head("POST", "/v1/disks", HOST, {"content-type": "application/json"}, body)
    assert raw == (
        b"POST /v1/disks HTTP/1.1\r\n"
        b"host: oxide.example:443\r\n"
        b"content-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + b"\r\n"
    )
    assert len(body) == 18


@pytest.mark.parametrize("method", ["POST", "DELETE"], ids=["post", "delete"])
def test_a_request_other_than_get_without_a_body_says_content_length_zero(method: str) -> None:
    raw = http1.request_head(method, "/v1/disks/d", HOST, {}, None)
    assert raw == (
        f"{method} /v1/disks/d HTTP/1.1\r\n".encode()
        + b"host: oxide.example:443\r\n"
        + b"content-length: 0\r\n"
        + b"\r\n"
    )


def test_the_host_header_comes_first_after_the_request_line() -> None:
    raw = http1.request_head("GET", "/", HOST, {"a": "1", "host-like": "2"}, None)
    lines = raw.split(b"\r\n")
    assert lines[0] == b"GET / HTTP/1.1"
    assert lines[1] == b"host: oxide.example:443"
    assert lines[2:] == [b"a: 1", b"host-like: 2", b"", b""]


def test_header_values_are_sent_as_utf8() -> None:
    raw = http1.request_head("GET", "/", HOST, {"x-note": "naïve"}, None)
    assert b"x-note: na\xc3\xafve\r\n" in raw


def _request_with(place: str, bad: str) -> bytes:
    if place == "name":
        return http1.request_head("GET", "/", HOST, {f"x{bad}evil": "v"}, None)
    if place == "value":
        return http1.request_head("GET", "/", HOST, {"x-evil": f"v{bad}injected: 1"}, None)
    if place == "target":
        return http1.request_head("GET", f"/v1{bad}x", HOST, {}, None)
    if place == "host":
        return http1.request_head("GET", "/", f"oxide{bad}.example", {}, None)
    assert place == "method"
    return http1.request_head(f"GET{bad}", "/", HOST, {}, None)


@pytest.mark.parametrize("bad", ["\r", "\n", "\0", "\r\n"], ids=["cr", "lf", "nul", "crlf"])
@pytest.mark.parametrize("place", ["name", "value", "target", "host", "method"])
def test_a_line_break_or_nul_anywhere_in_a_request_head_is_refused_before_anything_is_sent(
    place: str, bad: str
) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        _request_with(place, bad)


def test_a_body_on_a_get_is_announced() -> None:
    raw = http1.request_head("GET", "/", HOST, {}, b"{}")
    assert raw.endswith(b"content-length: 2\r\n\r\n")


# parse_head


def test_an_http11_head_parses_into_version_status_reason_and_headers() -> None:
    raw = head(
        "HTTP/1.1 404 Not Found Here",
        "Content-Type: application/json",
        "X-Request-Id:\t  abc-123 \t",
        "Vary: accept",
        "vary: accept-encoding",
    )
    minor, status, reason, headers = http1.parse_head(raw)
    assert (minor, status, reason) == (1, 404, "Not Found Here")
    assert headers["content-type"] == "application/json"
    assert headers["CONTENT-TYPE"] == "application/json"
    assert headers["x-request-id"] == "abc-123"
    assert headers["Vary"] == "accept, accept-encoding"
    assert sorted(headers) == ["content-type", "vary", "x-request-id"]


def test_an_http10_head_gives_minor_version_zero() -> None:
    minor, status, reason, headers = http1.parse_head(head("HTTP/1.0 200 OK"))
    assert (minor, status, reason, len(headers)) == (0, 200, "OK", 0)


@pytest.mark.parametrize(
    "status_line", ["HTTP/1.1 204 ", "HTTP/1.1 204"], ids=["space-then-nothing", "no-space"]
)
def test_an_empty_reason_is_accepted(status_line: str) -> None:
    assert http1.parse_head(head(status_line))[1:3] == (204, "")


def test_an_empty_header_value_is_accepted() -> None:
    _, _, _, headers = http1.parse_head(head("HTTP/1.1 200 OK", "x-empty:"))
    assert headers["x-empty"] == ""


def test_a_value_keeps_its_inner_spaces_and_colons() -> None:
    _, _, _, headers = http1.parse_head(head("HTTP/1.1 200 OK", "Date:  Mon, 01 Jan 2026 0:00 "))
    assert headers["date"] == "Mon, 01 Jan 2026 0:00"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n",
        b"HTTP/1.1 200 OK\n\n",
        b"HTTP/1.1 200 OK\r\n\n",
        b"",
    ],
    ids=["status-line-only", "no-blank-line", "bare-lf-lines", "half-blank-line", "empty"],
)
def test_a_head_not_ending_in_a_blank_line_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="blank line"):
        http1.parse_head(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.2 200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b" HTTP/1.1 200 OK\r\n\r\n",
        b"\r\n\r\n",
    ],
    ids=["not-http", "http2", "http2.0", "http1.2", "lower-case", "leading-space", "empty-line"],
)
def test_a_head_without_an_http1_status_line_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"HTTP/1\.x status line"):
        http1.parse_head(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 \xb200 OK\r\n\r\n",  # latin-1 superscript two: str.isdigit() says yes
        b"HTTP/1.1 -20 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
    ],
    ids=[
        "two-digits",
        "four-digits",
        "letters",
        "letter-inside",
        "superscript-digit",
        "negative",
        "two-spaces",
        "no-status",
    ],
)
def test_a_status_that_is_not_three_ascii_digits_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="three digits"):
        http1.parse_head(raw)


@pytest.mark.parametrize(
    "line",
    [
        b"no colon here",
        b"Bad Name: x",
        b"name : x",
        b"name\t: x",
        b"\tname: x",
        b": no name",
        b" folded",
        b"\tfolded: continuation",
        b"",
    ],
    ids=[
        "no-colon",
        "space-inside-name",
        "space-before-colon",
        "tab-before-colon",
        "tab-before-name",
        "empty-name",
        "obs-fold",
        "obs-fold-with-colon",
        "empty-line-inside-head",
    ],
)
def test_a_header_line_that_is_not_name_colon_value_is_refused(line: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nA: b\r\n" + line + b"\r\n\r\n"
    with pytest.raises(ValueError, match="not 'name: value'"):
        http1.parse_head(raw)


@pytest.mark.parametrize(
    "line",
    [b"A: b\nX-Injected: 1", b"A: b\rX-Injected: 1", b"A: b\r", b"A: \nb"],
    ids=["bare-lf", "bare-cr", "trailing-cr", "lf-in-value"],
)
def test_a_bare_line_break_inside_a_header_line_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="bare line break"):
        http1.parse_head(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")


@pytest.mark.parametrize("line", [b"A\nB: c", b"A\rB: c"], ids=["lf-in-name", "cr-in-name"])
def test_a_bare_line_break_inside_a_header_name_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="bare line break"):
        http1.parse_head(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\nX-Injected: 1\r\n\r\n",
        b"HTTP/1.1 200 O\rK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\0c\r\n\r\n",
        b"HTTP/1.1 200 O\0K\r\n\r\n",
    ],
    ids=["lf-in-status-line", "cr-in-reason", "nul-in-value", "nul-in-reason"],
)
def test_a_bare_line_break_or_nul_anywhere_in_the_head_is_refused(raw: bytes) -> None:
    """RFC 9112 2.2 and RFC 9110 5.5: a bare CR, LF or NUL is refused, in the status line too
    (its reason reaches error texts), not only in header lines."""
    with pytest.raises(ValueError, match="bare line break or a NUL"):
        http1.parse_head(raw)


def test_latin1_bytes_in_a_value_are_read_one_character_each() -> None:
    _, _, _, headers = http1.parse_head(b"HTTP/1.1 200 OK\r\nx-note: na\xc3\xafve\r\n\r\n")
    assert headers["x-note"] == "na\xc3\xafve"


# Headers


def test_headers_look_names_up_case_insensitively() -> None:
    headers = Headers({"Content-Length": "5"})
    assert "content-length" in headers
    assert "CONTENT-LENGTH" in headers
    assert "content-type" not in headers
    assert headers["cOnTeNt-LeNgTh"] == "5"
    assert headers.get("CONTENT-length") == "5"
    assert headers.get("content-type") is None
    assert headers.get("content-type", "none") == "none"
    with pytest.raises(KeyError):
        headers["content-type"]


def test_headers_iterate_over_lower_case_names_and_count_distinct_fields() -> None:
    headers = Headers({"X-A": "1", "X-B": "2"})
    headers.add("x-a", "3")
    assert len(headers) == 2
    assert list(headers) == ["x-a", "x-b"]
    assert dict(headers) == {"x-a": "1, 3", "x-b": "2"}


def test_headers_from_a_mapping_join_names_that_differ_only_in_case() -> None:
    fields: Mapping[str, str] = {"Vary": "accept", "vary": "origin"}
    headers = Headers(fields)
    assert len(headers) == 1
    assert headers["VARY"] == "accept, origin"


def test_empty_headers_hold_nothing() -> None:
    headers = Headers()
    assert len(headers) == 0
    assert list(headers) == []
    assert Headers(None) == Headers({})


@pytest.mark.parametrize("key", [1, None, b"1"], ids=["int", "none", "bytes"])
def test_only_a_string_can_be_in_headers(key: object) -> None:
    headers = Headers({"1": "x"})
    assert "1" in headers
    assert key not in headers


# framing


@pytest.mark.parametrize(
    "status", [100, 102, 199, 204, 304], ids=["100", "102", "199", "204", "304"]
)
def test_an_answer_that_never_has_a_body_is_framed_none_whatever_its_headers_say(
    status: int,
) -> None:
    headers = Headers({"content-length": "10", "transfer-encoding": "gzip"})
    assert http1.framing(status, headers) == (Framing.NONE, 0)


@pytest.mark.parametrize(
    "coding",
    ["chunked", "Chunked", "CHUNKED", "  chunked  ", "\tchunked"],
    ids=["lower", "title", "upper", "spaces", "tab"],
)
def test_transfer_encoding_chunked_in_any_case_frames_chunked(coding: str) -> None:
    assert http1.framing(200, Headers({"transfer-encoding": coding})) == (Framing.CHUNKED, 0)


@pytest.mark.parametrize("coding", ["chunked", "gzip"], ids=["chunked", "gzip"])
def test_a_transfer_encoding_with_a_content_length_is_refused_as_response_splitting(
    coding: str,
) -> None:
    # RFC 9112 6.3: both at once "ought to be handled as an error"; neither framing is trusted.
    _, status, _, headers = http1.parse_head(
        head("HTTP/1.1 200 OK", "Content-Length: 5", f"Transfer-Encoding: {coding}")
    )
    with pytest.raises(ValueError, match="both a transfer-encoding and a content-length"):
        http1.framing(status, headers)


@pytest.mark.parametrize(
    "coding",
    ["gzip, chunked", "gzip", "chunked, gzip", "chunked, chunked", "", "identity"],
    ids=["gzip-then-chunked", "gzip", "chunked-then-gzip", "chunked-twice", "empty", "identity"],
)
def test_a_transfer_coding_other_than_chunked_alone_is_refused(coding: str) -> None:
    with pytest.raises(ValueError, match="transfer coding"):
        http1.framing(200, Headers({"transfer-encoding": coding}))


def test_a_transfer_coding_sent_on_two_lines_is_refused_too() -> None:
    _, status, _, headers = http1.parse_head(
        head("HTTP/1.1 200 OK", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked")
    )
    with pytest.raises(ValueError, match="transfer coding"):
        http1.framing(status, headers)


@pytest.mark.parametrize(
    ("value", "length"),
    [("0", 0), ("5", 5), (" 42 ", 42), ("007", 7), ("9" * 18, 10**18 - 1)],
    ids=["zero", "five", "spaces", "leading-zeros", "eighteen-digits"],
)
def test_a_content_length_frames_that_many_bytes(value: str, length: int) -> None:
    assert http1.framing(200, Headers({"content-length": value})) == (Framing.LENGTH, length)


@pytest.mark.parametrize("value", ["5, 5", "5,5", "5 ,  5, 5"], ids=["two", "no-space", "three"])
def test_repeated_equal_content_lengths_are_accepted(value: str) -> None:
    assert http1.framing(200, Headers({"content-length": value})) == (Framing.LENGTH, 5)


def test_a_content_length_repeated_on_two_lines_with_one_value_is_accepted() -> None:
    _, status, _, headers = http1.parse_head(
        head("HTTP/1.1 200 OK", "Content-Length: 5", "content-length: 5")
    )
    assert http1.framing(status, headers) == (Framing.LENGTH, 5)


@pytest.mark.parametrize(
    "value", ["5, 6", "5, 05", "5, ", "5,,5"], ids=["differ", "same-number", "empty", "gap"]
)
def test_conflicting_content_lengths_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="conflicting"):
        http1.framing(200, Headers({"content-length": value}))


@pytest.mark.parametrize(
    "value",
    ["abc", "-5", "+5", "5.0", "0x10", "1e3", "", "5 5", "\xb2", "9" * 19, "1" + "0" * 18],
    ids=[
        "letters",
        "negative",
        "plus",
        "decimal",
        "hex",
        "exponent",
        "empty",
        "inner-space",
        "superscript-digit",
        "nineteen-nines",
        "ten-to-the-eighteen",
    ],
)
def test_a_content_length_that_is_not_a_number_of_bytes_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a number of bytes"):
        http1.framing(200, Headers({"content-length": value}))


@pytest.mark.parametrize("status", [200, 404, 500], ids=["200", "404", "500"])
def test_an_answer_with_neither_length_nor_coding_runs_until_the_connection_closes(
    status: int,
) -> None:
    assert http1.framing(status, Headers({"content-type": "text/plain"})) == (Framing.CLOSE, 0)


# keeps_alive


@pytest.mark.parametrize(
    "how", [Framing.LENGTH, Framing.CHUNKED, Framing.NONE], ids=["length", "chunked", "none"]
)
def test_an_http11_answer_with_a_known_end_keeps_the_connection(how: Framing) -> None:
    assert http1.keeps_alive(1, Headers(), how) is True
    assert http1.keeps_alive(1, Headers({"connection": "keep-alive"}), how) is True


@pytest.mark.parametrize(
    "value",
    ["close", "Close", "CLOSE", " close ", "keep-alive, Close", "Upgrade,close"],
    ids=["lower", "title", "upper", "spaces", "in-a-list", "last-no-space"],
)
def test_connection_close_in_any_case_drops_the_connection(value: str) -> None:
    assert http1.keeps_alive(1, Headers({"Connection": value}), Framing.LENGTH) is False


def test_a_connection_token_that_only_contains_close_keeps_the_connection() -> None:
    headers = Headers({"connection": "closed, enclose"})
    assert http1.keeps_alive(1, headers, Framing.LENGTH) is True


@pytest.mark.parametrize(
    "headers",
    [Headers(), Headers({"connection": "keep-alive"})],
    ids=["no-connection-header", "keep-alive"],
)
def test_an_http10_answer_drops_the_connection(headers: Headers) -> None:
    assert http1.keeps_alive(0, headers, Framing.LENGTH) is False


def test_a_body_that_ends_when_the_connection_closes_drops_the_connection() -> None:
    assert http1.keeps_alive(1, Headers({"connection": "keep-alive"}), Framing.CLOSE) is False


def test_a_parsed_head_and_its_framing_decide_reuse_together() -> None:
    minor, status, _, headers = http1.parse_head(
        head("HTTP/1.1 200 OK", "Content-Length: 2", "Connection: keep-alive, close")
    )
    how, length = http1.framing(status, headers)
    assert (how, length) == (Framing.LENGTH, 2)
    assert http1.keeps_alive(minor, headers, how) is False


# chunk_size


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"0\r\n", 0),
        (b"1a\r\n", 26),
        (b"1A\r\n", 26),
        (b"FF;name=value\r\n", 255),
        (b'ff;a=1;b="x;y"\r\n', 255),
        (b"10 ;name=value\r\n", 16),
        (b"10\t;name\r\n", 16),
        (b"10 \r\n", 16),
        (b"0000010\r\n", 16),
        (b"f" * 15 + b"\r\n", 16**15 - 1),
    ],
    ids=[
        "zero",
        "lower-hex",
        "upper-hex",
        "extension",
        "two-extensions",
        "space-before-extension",
        "tab-before-extension",
        "trailing-space",
        "leading-zeros",
        "fifteen-digits",
    ],
)
def test_a_chunk_size_line_gives_its_hexadecimal_size(line: bytes, size: int) -> None:
    assert http1.chunk_size(line) == size


@pytest.mark.parametrize(
    "line",
    [b"1a", b"1a\n", b"1a\r", b"1a\n\r", b""],
    ids=["nothing", "bare-lf", "bare-cr", "lf-cr", "empty"],
)
def test_a_chunk_size_line_not_ending_in_crlf_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="CRLF"):
        http1.chunk_size(line)


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b";name=value\r\n",
        b" \r\n",
        b"g1\r\n",
        b"0x10\r\n",
        b"-1\r\n",
        b"+1\r\n",
        b"1 a\r\n",
        b"1_0\r\n",
        b"1a\r\r\n",
        b"1" * 16 + b"\r\n",
        b"\xef\xbc\x91\r\n",  # a full-width digit one, in UTF-8
    ],
    ids=[
        "empty",
        "extension-only",
        "space-only",
        "not-hex",
        "0x-prefix",
        "negative",
        "plus",
        "inner-space",
        "underscore",
        "bare-cr-before-crlf",
        "sixteen-digits",
        "full-width-digit",
    ],
)
def test_a_chunk_size_that_is_not_at_most_15_hexadecimal_digits_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="not hexadecimal"):
        http1.chunk_size(line)


# constants


def test_the_limits_are_those_the_reader_is_given() -> None:
    assert http1.CRLF == b"\r\n"
    assert http1.MAX_HEAD == 65536
    assert http1.MAX_TRAILERS == 64
