"""Logging set-up: structlog, JSON (default, for Kubernetes) or console lines.

Secrets never reach a log line: CSI ``secrets`` maps are never logged (the server logs no request
bodies), and as a second line of defence every event passes through ``redact``, which masks Oxide
tokens wherever they appear in a string value.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from types import MappingProxyType
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


# The fields every line logged during one RPC carries (its name, request ID, the IDs it names):
# one context variable holding them all, set once per call, so that an RPC costs one set and
# one reset however many fields it binds (structlog's own contextvars cost one variable per
# field, and a walk over every variable of the context at each line).
_BOUND: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "csi_oxide_log_fields", default=MappingProxyType({})
)


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Within this block (and in the tasks it starts), every line logged carries ``fields``
    (a field the line gives itself wins)."""
    token = _BOUND.set({**_BOUND.get(), **fields})
    try:
        yield
    finally:
        _BOUND.reset(token)


def merge_bound(
    _logger: object, _method: str, event: MutableMapping[str, object]
) -> MutableMapping[str, object]:
    """structlog processor: add the fields of the enclosing ``bound`` blocks."""
    for key, value in _BOUND.get().items():
        event.setdefault(key, value)
    return event


# The second last formatted and its ISO 8601 text (UTC), one tuple replaced whole: lines within
# one second share the text and format only their microseconds, and a thread that logs while
# another replaces it reads one pair or the other, never a second with another's text.
_second_text: tuple[int, str] = (-1, "")


def timestamp(
    _logger: object, _method: str, event: MutableMapping[str, object]
) -> MutableMapping[str, object]:
    """structlog processor: ``timestamp``, the time in UTC as ISO 8601 to the microsecond, e.g.
    ``2026-12-07T12:09:54.223809Z`` (as structlog's TimeStamper, at a fifth of the cost, and
    always with six decimals)."""
    global _second_text  # a cache of the last second formatted
    now = time.time()
    second = int(now)
    last, text = _second_text
    if second != last:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    event["timestamp"] = f"{text}.{int((now - second) * 1_000_000):06d}Z"
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
    *,
    fmt: LogFormat = "json",
    level: str = "info",
    stream: TextIO | None = None,
    final: bool = False,
) -> None:
    """Configure structlog (and the standard library root logger), at process start.

    ``final``: this configuration is the process's last (the daemon's), so each logger binds
    to it on first use and keeps it (structlog's ``cache_logger_on_first_use``): a line then
    costs about half as much CPU (``make bench``'s driver CPU). Left off where logging may be
    configured again later in the process (tests, tools), since a logger used before would
    keep the configuration it first saw."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    out = stream if stream is not None else sys.stderr
    renderers: list[structlog.typing.Processor]
    if fmt == "json":
        renderers = [structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        renderers = [escape_for_console, structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[
            merge_bound,
            structlog.processors.add_log_level,
            timestamp,
            structlog.processors.format_exc_info,
            redact,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # write + flush per line, as print(flush=True) does, without print's own work.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=final,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out)
