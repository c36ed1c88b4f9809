"""The ``api-version`` header rule and the translation of older request bodies.

Any version up to the simulated one is accepted, none means the latest, a newer one is refused
(400 without an error code). Requests made at an older version are translated into the current
form before anything else reads them, as the real server translates them (omicron
``api_versions!``; FACTS §0): of what the simulator serves, only the `DiskCreate` body changed
(``LOCAL_STORAGE`` moved ``disk_source`` under ``disk_backend``; ``READ_ONLY_DISKS`` added
``read_only`` to the snapshot and image sources). Responses are always in the current form: the
real server answers clients older than ``LOCAL_STORAGE`` with ``disk_type: "crucible"`` and no
``read_only``, the simulator does not (a known simplification, listed in the README).
"""

from __future__ import annotations

import json

from csi_oxide_lab.sim import errors

API_VERSION = "2026081901.0.0"

Version = tuple[int, int, int]

# Versions (YYYYMMDDNN.0.0) at which a body the simulator reads changed.
LOCAL_STORAGE: Version = (2025120300, 0, 0)
READ_ONLY_DISKS: Version = (2026013001, 0, 0)


def parse_version(value: str) -> Version:
    """``MAJOR.MINOR.PATCH`` as numbers; ValueError when it is not one."""
    parts = value.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(value)
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_api_version(header: str | None) -> Version:
    """The version a request is made at (the simulated one when the header is absent); a malformed
    version or one newer than the simulated server is refused (400, no error code)."""
    latest = parse_version(API_VERSION)
    if header is None:
        return latest
    try:
        version = parse_version(header)
    except ValueError:
        raise errors.bad_request(f'bad value for header "api-version": {header!r}') from None
    if version > latest:
        raise errors.bad_request(f"server does not support this API version: {header.strip()}")
    return version


def upgrade_body(operation_id: str, version: Version, body: bytes) -> bytes:
    """``body`` of a request to ``operation_id`` made at ``version``, in the current form.

    A body that is not a JSON object is left as it is (the parser refuses it). An old
    `DiskCreate` without ``disk_source`` does not parse (400 without an error code); a
    ``disk_backend`` in it is ignored, as the old type has no such field, and so is a
    ``read_only`` sent before ``READ_ONLY_DISKS``.
    """
    if operation_id != "disk_create" or version >= READ_ONLY_DISKS:
        return body
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    if not isinstance(data, dict):
        return body
    if version < LOCAL_STORAGE:
        if "disk_source" not in data:
            raise errors.body_error("missing field `disk_source`")
        source = data["disk_source"]
        data = {k: v for k, v in data.items() if k not in ("disk_source", "disk_backend")}
        data["disk_backend"] = {"type": "distributed", "disk_source": source}
    backend = data.get("disk_backend")
    source = backend.get("disk_source") if isinstance(backend, dict) else None
    if isinstance(source, dict) and source.get("type") in ("snapshot", "image"):
        source.pop("read_only", None)
    return json.dumps(data).encode()
