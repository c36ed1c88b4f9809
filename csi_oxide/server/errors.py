"""Domain error -> gRPC status code: the one table of the driver.

Below the server nothing knows gRPC; handlers raise ``csi_oxide.errors`` classes and the interceptor
(``csi_oxide.server.interceptor``) turns them into a status with this table. The most specific class
wins (the table is searched along the exception's MRO).
"""

from __future__ import annotations

import grpc

from csi_oxide import errors

STATUS_BY_ERROR: dict[type[errors.CsiOxideError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.AbortedError: grpc.StatusCode.ABORTED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
    errors.ConfigurationError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code for ``exc``; INTERNAL for anything that is not one of ours."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
