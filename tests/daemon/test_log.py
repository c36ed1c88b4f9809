from __future__ import annotations

import io
import json
import logging

import structlog

from csi_oxide.daemon import log


def test_json_lines_and_token_redaction() -> None:
    out = io.StringIO()
    log.configure(fmt="json", level="info", stream=out)
    logger = structlog.get_logger("t")
    logger.info("hello", detail="Bearer oxide-token-abcdef0123456789", volume_id="csi-1")
    logger.debug("hidden at info level")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "hello"
    assert lines[0]["volume_id"] == "csi-1"
    assert "abcdef0123456789" not in out.getvalue()
    assert lines[0]["detail"] == "Bearer oxide-token-<redacted>"


def test_console_format() -> None:
    out = io.StringIO()
    log.configure(fmt="console", level="debug", stream=out)
    structlog.get_logger("t").debug("visible", a=1)
    assert "visible" in out.getvalue()
    assert "a=1" in out.getvalue()


def test_is_enabled_follows_the_configured_level() -> None:
    before = structlog.get_config()
    try:
        log.configure(fmt="json", level="info", stream=io.StringIO())
        assert log.is_enabled(logging.INFO) and log.is_enabled(logging.ERROR)
        assert not log.is_enabled(logging.DEBUG)
        log.configure(fmt="json", level="debug", stream=io.StringIO())
        assert log.is_enabled(logging.DEBUG)
        log.configure(fmt="json", level="error", stream=io.StringIO())
        assert not log.is_enabled(logging.WARNING)
        # A wrapper class that cannot say which levels it drops: nothing is held back.
        structlog.configure(wrapper_class=structlog.BoundLogger)
        assert log.is_enabled(logging.DEBUG)
    finally:
        structlog.configure(**before)


class _RawRepr:
    def __repr__(self) -> str:
        return "object\x1b[31m"


def test_console_lines_escape_control_characters_from_requests() -> None:
    out = io.StringIO()
    log.configure(fmt="console", level="info", stream=out)
    hostile = "csi-\x1b]0;owned\x07\x9b2J\r\nforged=line"
    structlog.get_logger("t").info(f"stage {hostile}", volume_id=hostile, obj=_RawRepr())
    text = out.getvalue()
    assert not any(c in text for c in "\x1b\x07\x9b\r"), repr(text)
    assert text.count("\n") == 1  # one event, one line
    assert "\\x1b]0;owned\\x07" in text  # still readable


def test_console_tracebacks_keep_their_lines_but_lose_escapes() -> None:
    out = io.StringIO()
    log.configure(fmt="console", level="info", stream=out)
    try:
        raise ValueError("no such volume csi-\x1b[2J")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    assert "\x1b" not in out.getvalue()
    assert "Traceback (most recent call last):\n" in out.getvalue()


def test_json_lines_escape_control_characters() -> None:
    out = io.StringIO()
    log.configure(fmt="json", level="info", stream=out)
    structlog.get_logger("t").info("stage", volume_id="csi-\x1b\x07\nx", obj=_RawRepr())
    text = out.getvalue()
    assert not any(c in text for c in "\x1b\x07") and text.count("\n") == 1
    assert json.loads(text)["volume_id"] == "csi-\x1b\x07\nx"
