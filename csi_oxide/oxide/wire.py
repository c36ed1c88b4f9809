"""JSON <-> domain values for the Oxide API: pure functions, no I/O.

Request bodies are built exactly as the published schema spells them (it ships as
``csi_oxide_lab/sim/openapi/oxide-api.json``); response bodies are read defensively and checked for
plausibility: sizes are positive whole GiB, block sizes one of 512/2048/4096, IDs UUIDs, names
non-empty, quota figures not negative. Anything that does not match raises ``WireError`` (an
unknown enum value raises its subclass ``UnknownValueError``, so a list can skip the one object it
cannot represent).
``csi_oxide.oxide.client`` turns these into ``OxideServerError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Generic, TypeVar

from csi_oxide.contract.oxide_rules import BLOCK_SIZES, MAX_NAME_LENGTH, is_uuid
from csi_oxide.oxide.types import (
    GIB,
    PUBLISHED_STATES,
    Disk,
    DiskSpec,
    DiskState,
    Image,
    Instance,
    InstanceState,
    Snapshot,
    SnapshotState,
    Utilization,
)

JsonObject = dict[str, object]
_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")


class WireError(ValueError):
    """A response body that does not match the published schema."""


class UnknownValueError(WireError):
    """A well-formed response with an enum value this driver does not know (a newer server)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint: raw items and the token of the next page (None at the end)."""

    items: list[object]
    next_page: str | None


@dataclass(frozen=True, slots=True)
class Results(Generic[_T]):
    """A parsed page: the items, those left out for an unknown enum value, the next token."""

    items: list[_T]
    skipped: list[UnknownValueError]
    next_page: str | None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The fields of Oxide's error body; each is None when absent or malformed."""

    error_code: str | None
    message: str | None
    request_id: str | None


# ---- request bodies -------------------------------------------------------------------------


def disk_create_body(spec: DiskSpec) -> JsonObject:
    """``DiskCreate`` for a distributed (replicated) disk: blank, from a snapshot or from an
    image (``read_only`` is sent only when set: older servers do not know it)."""
    source: JsonObject
    if spec.snapshot_id is not None:
        source = {"type": "snapshot", "snapshot_id": spec.snapshot_id}
    elif spec.image_id is not None:
        source = {"type": "image", "image_id": spec.image_id}
    else:
        source = {"type": "blank", "block_size": spec.block_size}
    if spec.read_only:
        source["read_only"] = True
    return {
        "name": spec.name,
        "description": spec.description,
        "size": spec.size,
        "disk_backend": {"type": "distributed", "disk_source": source},
    }


def snapshot_create_body(name: str, description: str, disk: str) -> JsonObject:
    """``SnapshotCreate``: ``disk`` is a name (in the query's project) or a UUID."""
    return {"name": name, "description": description, "disk": disk}


def image_create_body(name: str, description: str, snapshot_id: str) -> JsonObject:
    """``ImageCreate`` from a snapshot. ``os`` and ``version`` are required free text that
    Oxide's console shows; the driver's images say what they are."""
    return {
        "name": name,
        "description": description,
        "os": "csi-oxide",
        "version": "volume snapshot",
        "source": {"type": "snapshot", "id": snapshot_id},
    }


def disk_path_body(disk: str) -> JsonObject:
    """``DiskPath``, the body of attach and detach."""
    return {"disk": disk}


# ---- response bodies ------------------------------------------------------------------------


def parse_disk(value: object) -> Disk:
    """A ``Disk`` body. The ``state`` object gives the state and, while (de)attaching or
    attached, the instance ID."""
    obj = _object(value, "disk")
    name = _name(obj)
    what = f"disk {name!r}"
    state_obj = _object(obj.get("state"), "disk state")
    state = _enum(DiskState, _str(state_obj, "state"), f"state of {what}")
    instance_id = _uuid(state_obj, "instance", what) if state in PUBLISHED_STATES else None
    block_size = _block_size(obj, what)
    return Disk(
        id=_uuid(obj, "id", what),
        name=name,
        description=_str(obj, "description"),
        project_id=_uuid(obj, "project_id", what),
        size=_size(obj, "size", what),
        block_size=block_size,
        state=state,
        instance_id=instance_id,
        snapshot_id=_opt_uuid(obj, "snapshot_id", what),
        image_id=_opt_uuid(obj, "image_id", what),
        read_only=_bool(obj, "read_only"),
        disk_type=_str(obj, "disk_type"),
        time_created=_time(obj, "time_created"),
    )


def _block_size(obj: Mapping[str, object], what: str) -> int:
    block_size = _int(obj, "block_size")
    if block_size not in BLOCK_SIZES:
        raise WireError(f"{what}: block_size {block_size} is not one of {BLOCK_SIZES}")
    return block_size


def parse_snapshot(value: object) -> Snapshot:
    """A ``Snapshot`` body."""
    obj = _object(value, "snapshot")
    name = _name(obj)
    what = f"snapshot {name!r}"
    return Snapshot(
        id=_uuid(obj, "id", what),
        name=name,
        description=_str(obj, "description"),
        project_id=_uuid(obj, "project_id", what),
        disk_id=_uuid(obj, "disk_id", what),
        size=_size(obj, "size", what),
        state=_enum(SnapshotState, _str(obj, "state"), f"state of snapshot {name!r}"),
        time_created=_time(obj, "time_created"),
    )


def parse_image(value: object) -> Image:
    """An ``Image`` body (``project_id`` absent or null for a silo image)."""
    obj = _object(value, "image")
    name = _name(obj)
    what = f"image {name!r}"
    block_size = _block_size(obj, what)
    return Image(
        id=_uuid(obj, "id", what),
        name=name,
        description=_str(obj, "description"),
        project_id=_opt_uuid(obj, "project_id", what),
        size=_size(obj, "size", what),
        block_size=block_size,
        time_created=_time(obj, "time_created"),
    )


def parse_instance(value: object) -> Instance:
    """An ``Instance`` body (only the fields the driver uses)."""
    obj = _object(value, "instance")
    name = _name(obj)
    what = f"instance {name!r}"
    return Instance(
        id=_uuid(obj, "id", what),
        name=name,
        project_id=_uuid(obj, "project_id", what),
        run_state=_enum(InstanceState, _str(obj, "run_state"), f"run_state of {what}"),
        boot_disk_id=_opt_uuid(obj, "boot_disk_id", what),
    )


def parse_utilization(value: object) -> Utilization:
    """A ``Utilization`` body: the storage figures of ``capacity`` and ``provisioned``."""
    obj = _object(value, "utilization")
    figures = {}
    for key in ("capacity", "provisioned"):
        storage = _int(_object(obj.get(key), key), "storage")
        if storage < 0:
            raise WireError(f"utilization: {key} storage {storage} is negative")
        figures[key] = storage
    return Utilization(
        capacity_storage=figures["capacity"], provisioned_storage=figures["provisioned"]
    )


def parse_page(value: object) -> Page:
    """A ``*ResultsPage`` body."""
    obj = _object(value, "results page")
    items = obj.get("items")
    if not isinstance(items, list):
        raise WireError("results page: 'items' is not a list")
    return Page(items=list(items), next_page=_opt_str(obj, "next_page"))


def parse_items(
    items: list[object], parse: Callable[[object], _T]
) -> tuple[list[_T], list[UnknownValueError]]:
    """Parse each item; items with an unknown enum value are left out and returned as errors,
    so one object from a newer server does not hide all the others. Malformed items raise."""
    parsed: list[_T] = []
    skipped: list[UnknownValueError] = []
    for item in items:
        try:
            parsed.append(parse(item))
        except UnknownValueError as exc:
            skipped.append(exc)
    return parsed, skipped


def parse_results(value: object, parse: Callable[[object], _T]) -> Results[_T]:
    """A ``*ResultsPage`` body with each item parsed by ``parse`` (see ``parse_items``)."""
    page = parse_page(value)
    items, skipped = parse_items(page.items, parse)
    return Results(items, skipped, page.next_page)


def parse_error_body(value: object) -> ErrorBody:
    """Oxide's ``Error`` body, tolerating anything (an error answer must never fail to parse)."""
    if not isinstance(value, Mapping):
        return ErrorBody(None, None, None)

    def field(key: str) -> str | None:
        item = value.get(key)
        return item if isinstance(item, str) and item else None

    return ErrorBody(field("error_code"), field("message"), field("request_id"))


# ---- field readers --------------------------------------------------------------------------


def _object(value: object, what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise WireError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise WireError(f"field {key!r}: expected a string, got {type(value).__name__}")
    return value


def _name(obj: Mapping[str, object]) -> str:
    value = _str(obj, "name")
    if not 0 < len(value) <= MAX_NAME_LENGTH:
        raise WireError(f"field 'name': {len(value)} characters, not 1 to {MAX_NAME_LENGTH}")
    return value


def _uuid(obj: Mapping[str, object], key: str, what: str) -> str:
    value = _str(obj, key)
    if not is_uuid(value):
        raise WireError(f"{what}: field {key!r} is not a UUID: {value[:40]!r}")
    return value


def _opt_uuid(obj: Mapping[str, object], key: str, what: str) -> str | None:
    return None if obj.get(key) is None else _uuid(obj, key, what)


def _size(obj: Mapping[str, object], key: str, what: str) -> int:
    value = _int(obj, key)
    if value <= 0 or value % GIB:
        raise WireError(f"{what}: {key} {value} is not a positive whole number of GiB")
    return value


def _opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _str(obj, key)


# Every figure the driver reads ends up in a CSI message as an int64 (or is compared with one).
_INT64 = 2**63


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"field {key!r}: expected an integer, got {type(value).__name__}")
    if not -_INT64 <= value < _INT64:
        raise WireError(f"field {key!r}: {value} is out of range (more than 64 bits)")
    return value


def _bool(obj: Mapping[str, object], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise WireError(f"field {key!r}: expected a boolean, got {type(value).__name__}")
    return value


def _time(obj: Mapping[str, object], key: str) -> datetime:
    """An RFC 3339 timestamp, which always has a time zone: a time without one could not be
    compared with the driver's own (aware) times, and every comparison would raise TypeError."""
    text = _str(obj, key)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WireError(f"field {key!r}: not an RFC 3339 timestamp: {text[:40]!r}") from exc
    if when.tzinfo is None or when.utcoffset() is None:
        raise WireError(f"field {key!r}: timestamp {text[:40]!r} has no time zone")
    return when


def _enum(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError as exc:
        raise UnknownValueError(f"unknown {what} {value!r} (newer Oxide API?)") from exc
