"""Reading request bodies and query values the way the real server does (pure functions).

A value that does not fit its published type (a bad `Name`, a block size outside the `BlockSize`
enum, a malformed UUID, a missing field) fails while the body is parsed: 400 without an error
code, as the real server (dropshot) answers. Rules the server checks after parsing (sizes, the
description limit) answer 400 ``InvalidValue``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from csi_oxide_lab.sim import errors
from csi_oxide_lab.sim.errors import body_error
from csi_oxide_lab.sim.model import (
    BlankSource,
    DiskSource,
    ImageSource,
    NewImage,
    SnapshotSource,
    UnservedSource,
)
from csi_oxide_lab.sim.spec import (
    BLOCK_SIZES,
    canonical_id,
    is_uuid,
    name_problem,
)

JsonMap = Mapping[str, object]
_UINT64_MAX = 2**64 - 1


def json_body(raw: bytes) -> JsonMap:
    """The request body as a JSON object."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise body_error(str(exc)) from None
    if not isinstance(data, dict):
        raise body_error("invalid type: expected a JSON object")
    return data


def _missing(key: str, where: str) -> errors.ApiError:
    return body_error(f"{where}missing field `{key}`")


def _wrong_type(key: str, expected: str, where: str) -> errors.ApiError:
    return body_error(f"{where}{key}: invalid type, expected {expected}")


def obj(data: JsonMap, key: str, *, where: str = "") -> JsonMap:
    """A required JSON object field."""
    if key not in data:
        raise _missing(key, where)
    value = data[key]
    if not isinstance(value, dict):
        raise _wrong_type(key, "a JSON object", where)
    return value


def text(data: JsonMap, key: str, *, where: str = "") -> str:
    """A required string field."""
    if key not in data:
        raise _missing(key, where)
    value = data[key]
    if not isinstance(value, str):
        raise _wrong_type(key, "a string", where)
    return value


def integer(data: JsonMap, key: str, *, where: str = "") -> int:
    """A required uint64 field (a JSON boolean is not an integer)."""
    if key not in data:
        raise _missing(key, where)
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT64_MAX:
        raise _wrong_type(key, "a non-negative integer (u64)", where)
    return value


def name(data: JsonMap) -> str:
    """The ``name`` field: a `Name` by the server's rules, or the body does not parse."""
    value = text(data, "name")
    problem = name_problem(value)
    if problem is not None:
        raise body_error(f"name: {problem}")
    return value


def description(data: JsonMap) -> str:
    """The ``description`` field (its length is checked once the body has parsed)."""
    return text(data, "description")


def name_or_id(value: str, what: str) -> str:
    """A NameOrId value: a UUID (made canonical) or a valid name; otherwise 400."""
    if is_uuid(value):
        return canonical_id(value)
    problem = name_problem(value)
    if problem is not None:
        raise errors.bad_request(f"unable to parse {what}: {problem}")
    return value


def disk_source(data: JsonMap) -> DiskSource:
    """The ``disk_backend`` of a `DiskCreate`, parsed whole; the disks the simulator does not make
    come back as an ``UnservedSource`` (refused after parsing, as the real server refuses a
    well-formed request)."""
    backend = obj(data, "disk_backend")
    kind = text(backend, "type", where="disk_backend.")
    if kind == "local":
        return UnservedSource("local")
    if kind != "distributed":
        raise body_error(f"disk_backend.type: unknown variant `{kind}`")
    return _source(obj(backend, "disk_source", where="disk_backend."))


def _source(source: JsonMap) -> DiskSource:
    where = "disk_backend.disk_source."
    kind = text(source, "type", where=where)
    if kind == "blank":
        return BlankSource(_block_size(source, where))
    if kind == "snapshot":
        return SnapshotSource(_uuid(source, "snapshot_id", where), _read_only(source, where))
    if kind == "image":
        return ImageSource(_uuid(source, "image_id", where), _read_only(source, where))
    if kind == "importing_blocks":
        _block_size(source, where)
        return UnservedSource("importing_blocks")
    raise body_error(f"{where}type: unknown variant `{kind}`")


def new_image(data: JsonMap, *, project: bool) -> NewImage:
    """An `ImageCreate` body (its only source type is a snapshot)."""
    source = obj(data, "source")
    kind = text(source, "type", where="source.")
    if kind != "snapshot":
        raise body_error(f"source.type: unknown variant `{kind}`")
    return NewImage(
        name=name(data),
        description=description(data),
        os=text(data, "os"),
        version=text(data, "version"),
        snapshot_id=_uuid(source, "id", "source."),
        project=project,
    )


def _uuid(data: JsonMap, key: str, where: str) -> str:
    value = text(data, key, where=where)
    if not is_uuid(value):
        raise body_error(f"{where}{key}: invalid UUID")
    return canonical_id(value)


def _read_only(data: JsonMap, where: str) -> bool:
    value = data.get("read_only", False)
    if not isinstance(value, bool):
        raise body_error(f"{where}read_only: invalid type, expected a boolean")
    return value


def _block_size(source: JsonMap, where: str) -> int:
    """A `BlockSize`: one of the published enum's values, or the body does not parse."""
    value = integer(source, "block_size", where=where)
    if value not in BLOCK_SIZES:
        allowed = ", ".join(str(b) for b in sorted(BLOCK_SIZES))
        raise body_error(f"{where}block_size: invalid value {value}, expected one of {allowed}")
    return value


def optional_query(query: Mapping[str, str], key: str) -> str | None:
    """An optional NameOrId query parameter."""
    value = query.get(key)
    return None if value is None else name_or_id(value, f"query parameter {key!r}")


def required_query(query: Mapping[str, str], key: str) -> str:
    """A required NameOrId query parameter."""
    value = optional_query(query, key)
    if value is None:
        raise errors.bad_request(f"unable to parse query parameters: missing field `{key}`")
    return value
