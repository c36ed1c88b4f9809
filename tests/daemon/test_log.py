from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import re

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


def test_bound_fields_reach_every_line_of_the_block_and_are_gone_after_it() -> None:
    out = io.StringIO()
    log.configure(fmt="json", level="info", stream=out)
    logger = structlog.get_logger("t")
    with log.bound(rpc="CreateVolume", request_id="r1"):
        logger.info("outer")
        with log.bound(volume_id="csi-1", request_id="r2"):
            logger.info("inner", volume_id="given")  # the line's own field wins
        logger.info("outer again")
    logger.info("after")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    fields = [{k: line.get(k) for k in ("rpc", "request_id", "volume_id")} for line in lines]
    assert fields == [
        {"rpc": "CreateVolume", "request_id": "r1", "volume_id": None},
        {"rpc": "CreateVolume", "request_id": "r2", "volume_id": "given"},
        {"rpc": "CreateVolume", "request_id": "r1", "volume_id": None},
        {"rpc": None, "request_id": None, "volume_id": None},
    ]


async def test_tasks_started_in_a_bound_block_carry_its_fields() -> None:
    out = io.StringIO()
    log.configure(fmt="json", level="info", stream=out)
    logger = structlog.get_logger("t")

    async def work() -> None:
        await asyncio.sleep(0)
        logger.info("in a task")

    with log.bound(request_id="r1"):
        task = asyncio.ensure_future(work())
    await task
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert line["request_id"] == "r1"


def test_the_timestamp_is_utc_to_the_microsecond() -> None:
    out = io.StringIO()
    log.configure(fmt="json", level="info", stream=out)
    before = datetime.datetime.now(datetime.UTC)
    for _ in range(3):
        structlog.get_logger("t").info("tick")
    after = datetime.datetime.now(datetime.UTC)
    stamps = [json.loads(line)["timestamp"] for line in out.getvalue().splitlines()]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - datetime.timedelta(seconds=1) <= when <= after  # gmtime truncates
    assert stamps == sorted(stamps)


def test_only_the_daemons_final_configuration_keeps_its_loggers() -> None:
    before = structlog.get_config()
    try:
        log.configure(fmt="json", level="info", stream=io.StringIO())
        assert structlog.get_config()["cache_logger_on_first_use"] is False
        log.configure(fmt="json", level="info", stream=io.StringIO(), final=True)
        assert structlog.get_config()["cache_logger_on_first_use"] is True
    finally:
        structlog.configure(**before)
