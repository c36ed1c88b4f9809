from __future__ import annotations

import grpc
import pytest

from csi_oxide import errors
from csi_oxide.oxide import errors as oxide_errors
from csi_oxide.server.errors import STATUS_BY_ERROR, status_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgumentError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.OutOfRangeError("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.FailedPreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhaustedError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.AbortedError("x"), grpc.StatusCode.ABORTED),
        (errors.UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.UnauthenticatedError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDeniedError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.UnimplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.InternalError("x"), grpc.StatusCode.INTERNAL),
        (errors.ConfigurationError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (oxide_errors.OxideNotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (oxide_errors.OxideInsufficientCapacityError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (oxide_errors.OxideUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (oxide_errors.OxideUnauthorizedError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (oxide_errors.OxideServerError("x"), grpc.StatusCode.INTERNAL),
        (ValueError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(exc) == code


def test_every_domain_error_has_a_code() -> None:
    leaves = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.CsiOxideError)
    ]
    missing = [
        c.__name__ for c in leaves if c is not errors.CsiOxideError and c not in STATUS_BY_ERROR
    ]
    assert missing == []
