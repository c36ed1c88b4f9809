from __future__ import annotations

import io
import json
import logging

import structlog

from csi_oxide import log


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
