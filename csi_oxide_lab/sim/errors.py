"""The error answers of the simulated API, shaped like the real server's (see FACTS §6)."""

from __future__ import annotations

from http import HTTPStatus


class ApiError(Exception):
    """An HTTP error answer: status, optional ``error_code`` and the client-visible message."""

    def __init__(self, status: int, error_code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def not_found(kind: str, value: str, *, by_id: bool) -> ApiError:
    """404 ObjectNotFound for a missing (or unreadable) object."""
    by = "id" if by_id else "name"
    return ApiError(404, "ObjectNotFound", f'not found: {kind} with {by} "{value}"')


def invalid_request(message: str) -> ApiError:
    """400 InvalidRequest: the request is well formed but the state or arguments forbid it."""
    return ApiError(400, "InvalidRequest", message)


def invalid_value(field: str, message: str) -> ApiError:
    """400 InvalidValue for one field."""
    return ApiError(400, "InvalidValue", f'unsupported value for "{field}": {message}')


def already_exists(kind: str, name: str) -> ApiError:
    """400 (not 409) ObjectAlreadyExists, as the real server answers a name conflict."""
    return ApiError(400, "ObjectAlreadyExists", f'already exists: {kind} "{name}"')


def bad_request(message: str) -> ApiError:
    """400 without an error code: something did not parse (body, query, path, header)."""
    return ApiError(400, None, message)


def body_error(detail: str) -> ApiError:
    """400 without an error code: the JSON body did not parse into the expected type."""
    return bad_request(f"unable to parse JSON body: {detail}")


def unauthorized() -> ApiError:
    """401 for a missing or wrong token."""
    return ApiError(401, "Unauthorized", "credentials missing or invalid")


def unavailable() -> ApiError:
    """503 ServiceNotAvailable, the only status the real server calls retryable."""
    return ApiError(503, "ServiceNotAvailable", "Service Unavailable")


def insufficient_storage(requested: int, available: int) -> ApiError:
    """507 InsufficientCapacity for a request over the silo's storage quota."""
    return ApiError(
        507,
        "InsufficientCapacity",
        "Insufficient capacity: Storage Limit Exceeded: "
        f"requested {requested} bytes, {max(available, 0)} bytes left in the silo quota",
    )


_CODES = {
    400: ("InvalidRequest", None),
    401: ("Unauthorized", "credentials missing or invalid"),
    403: ("Forbidden", "Forbidden"),
    404: ("ObjectNotFound", None),
    409: ("Conflict", None),
    410: ("Gone", None),
    500: ("Internal", "Internal Server Error"),
    503: ("ServiceNotAvailable", "Service Unavailable"),
    507: ("InsufficientCapacity", "Insufficient capacity: injected fault"),
}


def for_status(status: int) -> ApiError:
    """The usual error answer for ``status`` (used by fault injection)."""
    code, message = _CODES.get(status, (None, None))
    if message is None:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = f"HTTP {status}"
        message = f"{message} (injected fault)"
    return ApiError(status, code, message)
