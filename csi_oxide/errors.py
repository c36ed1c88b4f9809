"""The driver's error vocabulary.

Every layer below the gRPC server raises these (or subclasses of them); the server maps each class
to one gRPC status code in a single table (``csi_oxide.server.errors``). Messages are shown to the
Kubernetes user as they are, so they say what is wrong and what to do, and never carry a secret.

::

    CsiOxideError
    ├── InvalidArgumentError        a request field is missing or malformed
    ├── NotFoundError               the volume, snapshot, node or path does not exist
    ├── AlreadyExistsError          same name, incompatible request
    ├── OutOfRangeError             a capacity range the platform cannot meet
    ├── FailedPreconditionError     the request is valid but the state forbids it now
    ├── ResourceExhaustedError      attach limit, quota, physical capacity
    ├── AbortedError                another operation on the same object is in flight
    ├── UnavailableError            a dependency is (hopefully briefly) unreachable
    ├── UnauthenticatedError        the Oxide API refused our credentials
    ├── PermissionDeniedError       the credentials lack a permission
    ├── UnimplementedError          the RPC is not served in this mode
    ├── InternalError               a state the driver refuses to guess about (needs an operator)
    └── ConfigurationError          bad settings at start
"""

from __future__ import annotations


class CsiOxideError(Exception):
    """Base of every error the driver raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(CsiOxideError):
    """A request field is missing, empty, malformed or not supported."""


class NotFoundError(CsiOxideError):
    """The object named by the request does not exist (or is not ours)."""


class AlreadyExistsError(CsiOxideError):
    """An object with the same name exists but does not match the request."""


class OutOfRangeError(CsiOxideError):
    """A capacity range that cannot be satisfied."""


class FailedPreconditionError(CsiOxideError):
    """The request is valid, but the current state of the system forbids it."""


class ResourceExhaustedError(CsiOxideError):
    """A limit was reached: disks per instance, silo quota or physical capacity."""


class AbortedError(CsiOxideError):
    """Another operation on the same volume or snapshot is in flight; the caller should back off."""


class UnavailableError(CsiOxideError):
    """A dependency did not answer in time or answered "try again"; the call may be retried."""


class UnauthenticatedError(CsiOxideError):
    """The Oxide API did not accept the configured credentials."""


class PermissionDeniedError(CsiOxideError):
    """The credentials are valid but not allowed to perform the operation."""


class UnimplementedError(CsiOxideError):
    """The RPC is not implemented by this plugin, or not in the mode it runs in."""


class InternalError(CsiOxideError):
    """Oxide holds a state the driver cannot explain; it stops rather than risk data."""


class ConfigurationError(CsiOxideError):
    """The process was started with settings it cannot use (reported at start, not per RPC)."""
