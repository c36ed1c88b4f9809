"""Errors from the Oxide API, translated once from HTTP by ``csi_oxide.oxide.client``.

Each class is also a domain error (``csi_oxide.errors``), so an Oxide error that a caller does not
handle specially still reaches the user with a sensible gRPC code: the translation HTTP -> domain
happens here, once, and the server's table maps domain -> gRPC. There is no second boundary. A
caller catches an Oxide error only to decide something (a missing object is success, a refusal is
explained with what the user asked for, e.g. "source volume X does not exist"), never merely to
change its class. Every instance carries Oxide's ``request_id`` for correlation with the rack's
logs, and never the token.

``OxideError``'s constructor is the one place where text from the Oxide side (the server's error
message, its request ID, a library's exception text) becomes text of the driver, which then
reaches gRPC details, Kubernetes events, logs and metrics. It scrubs that text there, whatever the
server sent: anything shaped like an Oxide token or a bearer credential, the secrets the client
registered (``scrub_also``: the exact token, which might lack the ``oxide-token-`` prefix), and the
``user:password@`` part of URLs; it escapes every control character (a line break or a terminal
sequence from the server can neither forge a log line nor reach a terminal showing an event); and
it cuts the text to ``MAX_MESSAGE`` characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from csi_oxide import errors
from csi_oxide.daemon.log import redact_text

MAX_MESSAGE = 600
_BEARER_RE = re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"'}]+")
_ASSIGNED_RE = re.compile(r"(?i)\b(token|password|authorization)(\"?\s*[:=]\s*\"?)[^\s,;\"'}]+")
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")
REDACTED = "<redacted>"
# Every control character (C0, DEL, C1) as a visible ``\xNN``: text from the API must not break
# a log line (a newline would start a forged one) nor drive a terminal showing an event.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without tokens, bearer credentials, URL credentials or any of ``secrets``, its
    control characters escaped (``\\x1b``), and at most ``MAX_MESSAGE`` characters long."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = redact_text(text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _ASSIGNED_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = text.translate(_CONTROLS)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"... ({len(text) - MAX_MESSAGE} more characters cut)"
    return text


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
        secrets: Iterable[str] = (),
    ) -> None:
        hidden = tuple(secrets)
        super().__init__(scrub(message, hidden))
        self.status = status
        self.error_code = None if error_code is None else scrub(error_code, hidden)[:64]
        self.request_id = None if request_id is None else scrub(request_id, hidden)[:64]
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
