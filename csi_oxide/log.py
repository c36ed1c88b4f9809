"""Logging set-up: structlog, JSON (default, for Kubernetes) or console lines.

Secrets never reach a log line: CSI ``secrets`` maps are never logged (the server logs no request
bodies), and as a second line of defence every event passes through ``redact``, which masks Oxide
tokens wherever they appear in a string value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]
LEVELS = ("debug", "info", "warning", "error")

_TOKEN_RE = re.compile(r"oxide-token-[A-Za-z0-9_\-]+")


def redact_text(text: str) -> str:
    """Replace anything that looks like an Oxide token with a fixed mask."""
    return _TOKEN_RE.sub("oxide-token-<redacted>", text)


def redact(
    _logger: object, _method: str, event: MutableMapping[str, object]
) -> MutableMapping[str, object]:
    """structlog processor: mask tokens in every string value of the event."""
    for key, value in event.items():
        if isinstance(value, str) and "oxide-token-" in value:
            event[key] = redact_text(value)
    return event


def is_enabled(level: int) -> bool:
    """Whether structlog, as configured now, would emit an event at ``level`` (a ``logging``
    number): hot paths ask first and build no event for a level that is off (a lazy logger's
    call costs a bind even when it drops the event). True for a wrapper class that does not say
    (not one of structlog's filtering loggers)."""
    wrapper = structlog.get_config()["wrapper_class"]
    enabled = getattr(wrapper, "is_enabled_for", None)
    if enabled is None:
        return True
    return bool(enabled(None, level))


def configure(
    *, fmt: LogFormat = "json", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and the standard library root logger) once, at process start."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    out = stream if stream is not None else sys.stderr
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out)
