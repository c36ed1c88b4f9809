"""The subprocess runner: exit codes, output, timeouts and missing tools."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csi_oxide.errors import FailedPreconditionError
from csi_oxide.node.exec import CommandFailedError, run


async def test_output_and_exit_code() -> None:
    done = await run(["sh", "-c", "echo out; echo err >&2"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


async def test_an_unaccepted_exit_code_raises_with_the_last_stderr_line() -> None:
    with pytest.raises(CommandFailedError) as caught:
        await run(["sh", "-c", "echo first >&2; echo 'bad superblock' >&2; exit 3"])
    assert caught.value.returncode == 3
    assert "exit code 3" in str(caught.value)
    assert "bad superblock" in str(caught.value)


async def test_an_accepted_exit_code_is_returned() -> None:
    done = await run(["sh", "-c", "exit 2"], accept=(0, 2))
    assert done.returncode == 2


async def test_a_missing_tool_is_a_precondition() -> None:
    with pytest.raises(FailedPreconditionError, match="no-such-tool-here"):
        await run(["no-such-tool-here", "--version"])


async def test_a_command_past_its_limit_is_killed() -> None:
    started = time.monotonic()
    with pytest.raises(CommandFailedError, match="killed after"):
        await run(["sleep", "30"], limit=0.2)
    assert time.monotonic() - started < 5


def test_a_tool_dies_with_the_plugin(tmp_path: Path) -> None:
    """kill -9 of the process running a tool kills the tool too (no orphaned mkfs)."""
    pidfile = tmp_path / "pid"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio; from csi_oxide.node.exec import run; "
            f"asyncio.run(run(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60']))",
        ]
    )
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tool = int(pidfile.read_text())
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{tool}").exists() and _state(tool) != "Z":
        assert time.monotonic() < deadline, "the tool outlived its plugin"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
