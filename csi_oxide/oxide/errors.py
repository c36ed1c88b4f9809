"""Errors from the Oxide API, translated once from HTTP by ``csi_oxide.oxide.client``.

Each class is also a domain error (``csi_oxide.errors``), so an Oxide error that a caller does not
handle specially still reaches the user with a sensible gRPC code. Every instance carries Oxide's
``request_id`` for correlation with the rack's logs, and never the token.
"""

from __future__ import annotations

from csi_oxide import errors


class OxideError(errors.CsiOxideError):
    """An error answer from the Oxide API (or no answer at all)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        operation: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.request_id = request_id
        self.operation = operation

    def __str__(self) -> str:
        where = f"Oxide {self.operation}" if self.operation else "Oxide API"
        code = f" {self.status}" if self.status is not None else ""
        kind = f" {self.error_code}" if self.error_code else ""
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{where}:{code}{kind}: {self.message}{rid}"


class OxideNotFoundError(OxideError, errors.NotFoundError):
    """404: the object does not exist or is not visible to these credentials."""


class OxideAlreadyExistsError(OxideError, errors.AlreadyExistsError):
    """400 ObjectAlreadyExists: the name is taken in the project."""


class OxideInvalidRequestError(OxideError, errors.FailedPreconditionError):
    """400 InvalidRequest / InvalidValue (or a 400 without a code): the request was refused."""


class OxideUnauthorizedError(OxideError, errors.UnauthenticatedError):
    """401: missing or invalid token."""


class OxideForbiddenError(OxideError, errors.PermissionDeniedError):
    """403: the token's user may not do this."""


class OxideConflictError(OxideError, errors.FailedPreconditionError):
    """409: a state conflict, such as detaching a boot disk."""


class OxideInsufficientCapacityError(OxideError, errors.ResourceExhaustedError):
    """507: the silo quota or the rack's physical capacity is exhausted."""


class OxideUnavailableError(OxideError, errors.UnavailableError):
    """503, a connection error or a timeout, after the client's retries ran out."""


class OxideServerError(OxideError):
    """Any other answer (500, an unexpected status, a body that does not parse)."""
