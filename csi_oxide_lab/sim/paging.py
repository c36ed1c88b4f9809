"""Dropshot-style pagination: opaque URL-safe base64 JSON page tokens carrying the scan params.

A first page takes ``limit`` (a uint32 of at least 1: default 100, more than 10000 is lowered to
10000, one beyond uint32 does not parse), ``sort_by`` (``name_ascending`` by
default, ``name_descending``, ``id_ascending``) and the scan's parent selector (``project``).
Every page that has items carries a ``next_page`` token; a scan ends on an empty page whose
``next_page`` is null. Later pages send ``page_token`` (and optionally ``limit``); the scan params
inside the token win over any sent again.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from csi_oxide_lab.sim.errors import ApiError, bad_request
from csi_oxide_lab.sim.spec import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, UINT32_MAX

SORT_MODES = ("name_ascending", "name_descending", "id_ascending")

T = TypeVar("T")
_UINT = re.compile(r"\+?[0-9]+")  # what an unsigned integer parse accepts


@dataclass(frozen=True, slots=True)
class Scan:
    """One page request: what to list, in which order, from where, how many."""

    sort_by: str
    project: str | None
    last_seen: str | None
    limit: int


def _query_error(detail: str) -> ApiError:
    return bad_request(f"unable to parse query parameters: {detail}")


def parse_limit(raw: str | None) -> int:
    """The page size: a uint32 of at least 1 (else 400), lowered to the server's maximum."""
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    if _UINT.fullmatch(raw) is None:
        raise _query_error(f"limit: invalid digit found in {raw!r}")
    limit = int(raw)
    if limit > UINT32_MAX:
        raise _query_error("limit: number too large to fit in target type")
    if limit < 1:
        raise _query_error("limit: must be at least 1")
    return min(limit, MAX_PAGE_LIMIT)


def encode_token(sort_by: str, project: str | None, last_seen: str) -> str:
    """The opaque token for the page after ``last_seen``."""
    start: dict[str, str] = {"sort_by": sort_by, "last_seen": last_seen}
    if project is not None:
        start["project"] = project
    raw = json.dumps({"v": "v1", "page_start": start}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str) -> tuple[str, str | None, str]:
    """(sort_by, project, last_seen) from a token; 400 when it is not one of ours."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        start = data["page_start"]
        sort_by, last_seen = start["sort_by"], start["last_seen"]
        project = start.get("project")
        valid = (
            data.get("v") == "v1"
            and sort_by in SORT_MODES
            and isinstance(last_seen, str)
            and (project is None or isinstance(project, str))
        )
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        valid = False
    if not valid:
        raise _query_error("failed to parse pagination token: not a valid page token")
    return sort_by, project, last_seen


def parse_scan(query: Mapping[str, str], *, project_required: bool) -> Scan:
    """Read the pagination parameters of a list request."""
    limit = parse_limit(query.get("limit"))
    token = query.get("page_token")
    if token is not None:
        sort_by, project, last_seen = decode_token(token)
        return Scan(sort_by, project, last_seen, limit)
    sort_by = query.get("sort_by", "name_ascending")
    if sort_by not in SORT_MODES:
        raise _query_error(f"sort_by: unknown variant `{sort_by}`")
    project = query.get("project")
    if project_required and project is None:
        raise _query_error("missing field `project`")
    return Scan(sort_by, project, None, limit)


def page(
    items: Iterable[T],
    scan: Scan,
    *,
    name: Callable[[T], str],
    ident: Callable[[T], str],
) -> tuple[Sequence[T], str | None]:
    """The items of this page and the next page token (None only for an empty page)."""
    key = ident if scan.sort_by == "id_ascending" else name
    ordered = sorted(items, key=key, reverse=scan.sort_by == "name_descending")
    if scan.last_seen is not None:
        seen = scan.last_seen
        if scan.sort_by == "name_descending":
            ordered = [i for i in ordered if key(i) < seen]
        else:
            ordered = [i for i in ordered if key(i) > seen]
    chosen = ordered[: scan.limit]
    if not chosen:
        return chosen, None
    return chosen, encode_token(scan.sort_by, scan.project, key(chosen[-1]))
