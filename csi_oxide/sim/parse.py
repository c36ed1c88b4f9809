"""Reading request bodies and query values the way the real server does (pure functions)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from csi_oxide.oxide.names import MAX_NAME_LENGTH, is_uuid
from csi_oxide.oxide.types import BLOCK_SIZES, MAX_DESCRIPTION_LENGTH
from csi_oxide.sim import errors
from csi_oxide.sim.model import BlankSource, SnapshotSource, canonical_id

JsonMap = Mapping[str, object]


def body_error(detail: str) -> errors.ApiError:
    """400 without an error code: the JSON body did not parse into the expected type."""
    return errors.bad_request(f"unable to parse JSON body: {detail}")


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
    """A required non-negative integer field (a JSON boolean is not an integer)."""
    if key not in data:
        raise _missing(key, where)
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _wrong_type(key, "a non-negative integer", where)
    return value


def name_problem(value: str) -> str | None:
    """Why the server would refuse ``value`` as a name, or None when it is a valid name."""
    if not value:
        return "name requires at least one character"
    if len(value) > MAX_NAME_LENGTH:
        return f"name may contain at most {MAX_NAME_LENGTH} characters"
    if not ("a" <= value[0] <= "z"):
        return "name must begin with an ASCII lowercase character"
    for ch in value:
        if not (("a" <= ch <= "z") or ("0" <= ch <= "9") or ch == "-"):
            return (
                f'name contains invalid character: "{ch}" '
                '(allowed characters are lowercase ASCII, digits, and "-")'
            )
    if value.endswith("-"):
        return 'name cannot end with "-"'
    if is_uuid(value):
        return "name cannot be a UUID"
    return None


def name(data: JsonMap) -> str:
    """The ``name`` field, checked against the server's name rules (400 InvalidValue)."""
    value = text(data, "name")
    problem = name_problem(value)
    if problem is not None:
        raise errors.invalid_value("name", problem)
    return value


def description(data: JsonMap) -> str:
    """The ``description`` field.

    The simulator refuses more than 512 characters. That limit is OUR ASSUMPTION about the real
    server (the published document gives none), enforced so the driver never depends on more.
    """
    value = text(data, "description")
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise errors.invalid_value(
            "description", f"description must be at most {MAX_DESCRIPTION_LENGTH} characters"
        )
    return value


def name_or_id(value: str, what: str) -> str:
    """A NameOrId value: a UUID (made canonical) or a valid name; otherwise 400."""
    if is_uuid(value):
        return canonical_id(value)
    problem = name_problem(value)
    if problem is not None:
        raise errors.bad_request(f"unable to parse {what}: {problem}")
    return value


def disk_source(data: JsonMap) -> BlankSource | SnapshotSource:
    """The ``disk_backend`` of a DiskCreate (only ``distributed`` disks are simulated)."""
    backend = obj(data, "disk_backend")
    kind = text(backend, "type", where="disk_backend.")
    if kind == "local":
        raise errors.invalid_request(
            'the simulator serves distributed disks only (disk_backend type "local")'
        )
    if kind != "distributed":
        raise body_error(f"disk_backend.type: unknown variant `{kind}`")
    return _source(obj(backend, "disk_source", where="disk_backend."))


def _source(source: JsonMap) -> BlankSource | SnapshotSource:
    where = "disk_backend.disk_source."
    kind = text(source, "type", where=where)
    if kind == "blank":
        block_size = integer(source, "block_size", where=where)
        if block_size not in BLOCK_SIZES:
            raise errors.invalid_value("block_size", "must be one of 512, 2048 or 4096")
        return BlankSource(block_size)
    if kind == "snapshot":
        snapshot_id = text(source, "snapshot_id", where=where)
        if not is_uuid(snapshot_id):
            raise body_error(f"{where}snapshot_id: invalid UUID")
        read_only = source.get("read_only", False)
        if not isinstance(read_only, bool):
            raise body_error(f"{where}read_only: invalid type, expected a boolean")
        return SnapshotSource(canonical_id(snapshot_id), read_only)
    if kind == "image":
        image_id = text(source, "image_id", where=where)
        raise errors.not_found("image", image_id, by_id=True)
    if kind == "importing_blocks":
        raise errors.invalid_request("the simulator does not support importing blocks")
    raise body_error(f"{where}type: unknown variant `{kind}`")


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
