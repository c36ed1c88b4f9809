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

from csi_oxide import LOG_LEVELS

LogFormat = Literal["json", "console"]
LEVELS = LOG_LEVELS

_TOKEN_RE = re.compile(r"oxide-token-[A-Za-z0-9_\-]+")
# C0 controls, DEL and C1 controls: ESC, BEL, CSI and friends drive a terminal; CR/LF forge lines.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TRACEBACK_KEYS = frozenset({"exception", "stack"})  # multi-line by nature: keep their newlines


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


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character written as a Python escape (ESC -> ``\\x1b``)."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if keep_newlines and char == "\n":
            return char
        return char.encode("unicode_escape").decode("ascii")

    return _CONTROL_RE.sub(escape, text)


def _console_value(key: str, value: object) -> object:
    if isinstance(value, str):
        return escape_controls(value, keep_newlines=key in _TRACEBACK_KEYS)
    if isinstance(value, int | float | None):
        return value
    shown = repr(value)  # what the console renderer prints; an object's own repr may be raw
    return escape_controls(shown) if _CONTROL_RE.search(shown) else value


def escape_for_console(
    _logger: object, _method: str, event: MutableMapping[str, object]
) -> MutableMapping[str, object]:
    """structlog processor for console lines: names from a request (volume IDs, paths) may hold
    terminal escapes or line breaks; they are shown escaped, never sent to the terminal raw.
    (The JSON renderer escapes control characters itself.)"""
    escaped = {escape_controls(key): _console_value(key, value) for key, value in event.items()}
    event.clear()
    event.update(escaped)
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
    renderers: list[structlog.typing.Processor]
    if fmt == "json":
        renderers = [structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        renderers = [escape_for_console, structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out)
