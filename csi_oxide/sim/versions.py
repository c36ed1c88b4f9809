"""The ``api-version`` header rule: any version up to the simulated one, none means the latest."""

from __future__ import annotations

from csi_oxide.sim import errors

API_VERSION = "2026081901.0.0"


def parse_version(value: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as numbers; ValueError when it is not one."""
    parts = value.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(value)
    return int(parts[0]), int(parts[1]), int(parts[2])


def check_api_version(header: str | None) -> None:
    """Refuse a malformed version or one newer than the simulated server (400, no error code).

    Older versions are accepted and answered in the current wire format: between 2026060800.0.0
    and 2026081901.0.0 nothing the simulator serves changed; the simulator does not translate the
    older disk-create body of versions before 2025-12-03.
    """
    if header is None:
        return
    try:
        version = parse_version(header)
    except ValueError:
        raise errors.bad_request(f'bad value for header "api-version": {header!r}') from None
    if version > parse_version(API_VERSION):
        raise errors.bad_request(f"server does not support this API version: {header.strip()}")
