"""``csi-oxide serve`` flags: the controller's Oxide client, the gRPC server's call cap."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import csi_oxide
from csi_oxide import cli
from csi_oxide.cli import build_parser
from csi_oxide.oxide.client import DEFAULT_TIMEOUT
from csi_oxide.server import app


def test_the_oxide_request_deadline_is_a_flag_with_an_env_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CSI_OXIDE_OXIDE_TIMEOUT", raising=False)
    assert build_parser().parse_args(["serve"]).oxide_timeout == DEFAULT_TIMEOUT
    assert build_parser().parse_args(["serve", "--oxide-timeout", "2.5"]).oxide_timeout == 2.5
    monkeypatch.setenv("CSI_OXIDE_OXIDE_TIMEOUT", "30")
    assert build_parser().parse_args(["serve"]).oxide_timeout == 30.0


@pytest.mark.parametrize("value", ["0", "-1", "soon", "1e9"])
def test_a_bad_oxide_request_deadline_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--oxide-timeout", value])
    assert "--oxide-timeout" in capsys.readouterr().err


def test_the_cap_on_concurrent_calls_is_a_flag_with_an_env_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CSI_OXIDE_MAX_CONCURRENT_RPCS", raising=False)
    # The command line keeps its own copy of the server's default, so as not to import gRPC.
    assert cli.DEFAULT_MAX_CONCURRENT_RPCS == app.DEFAULT_MAX_CONCURRENT_RPCS
    args = build_parser().parse_args(["serve"])
    assert args.max_concurrent_rpcs == app.DEFAULT_MAX_CONCURRENT_RPCS
    monkeypatch.setenv("CSI_OXIDE_MAX_CONCURRENT_RPCS", "64")
    assert build_parser().parse_args(["serve"]).max_concurrent_rpcs == 64
    assert (
        build_parser().parse_args(["serve", "--max-concurrent-rpcs", "8"]).max_concurrent_rpcs == 8
    )
    for value in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--max-concurrent-rpcs", value])
        assert "--max-concurrent-rpcs" in capsys.readouterr().err


def _options(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    """Every option of ``parser`` and of its subcommands, with the command it belongs to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _options(sub, f"{name} {sub_name}")
        elif action.option_strings:
            yield name, action


def test_every_option_has_help() -> None:
    options = list(_options(build_parser(), "csi-oxide"))
    helpless = [f"{cmd} {a.option_strings[-1]}" for cmd, a in options if not a.help]
    assert len(options) > 20 and helpless == []


def test_serve_help_names_the_credential_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("OXIDE_HOST", "OXIDE_TOKEN", "OXIDE_PROJECT", "OXIDE_PROFILE"):
        assert name in text


# ---- start-up refusals: one line, a remedy, exit 2 ---------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``csi-oxide serve ARGS`` in a process of its own, with controller credentials."""
    code = Path(csi_oxide.__file__).resolve().parents[1]  # the code under test
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "OXIDE_HOST": f"http://127.0.0.1:{_closed_port()}",
        "OXIDE_TOKEN": "oxide-token-cli-test",
        "OXIDE_PROJECT": "csi",
    }
    argv = [sys.executable, "-m", "csi_oxide", "serve", "--log-format", "console", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def _socket_folder_is_a_file(tmp: Path, _taken: int) -> list[str]:
    (tmp / "file").write_text("")
    return ["--mode", "controller", "--endpoint", f"unix://{tmp}/file/csi.sock"]


def _socket_path_too_long(tmp: Path, _taken: int) -> list[str]:
    return ["--mode", "controller", "--endpoint", f"unix://{tmp}/{'x' * 120}/csi.sock"]


def _metrics_port_in_use(tmp: Path, taken: int) -> list[str]:
    return [
        *("--mode", "controller", "--endpoint", f"unix://{tmp}/csi.sock"),
        *("--metrics-address", f"127.0.0.1:{taken}"),
    ]


def _node_id_not_a_uuid(tmp: Path, _taken: int) -> list[str]:
    return [
        *("--mode", "all", "--endpoint", f"unix://{tmp}/csi.sock"),
        *("--node-id", "not-a-uuid", "--state-dir", str(tmp / "state")),
    ]


@pytest.mark.parametrize(
    ("case", "remedy"),
    [
        (_socket_folder_is_a_file, "pass --endpoint in a folder you can write"),
        (_socket_path_too_long, "pass a shorter --endpoint"),
        (_metrics_port_in_use, "choose a free port"),
        (_node_id_not_a_uuid, "set --node-id or CSI_OXIDE_NODE_ID"),
    ],
)
def test_start_up_refusals_are_one_line_with_a_remedy(
    case: Callable[[Path, int], list[str]], remedy: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = _serve(*case(tmp_path, taken.getsockname()[1]))
    assert done.returncode == 2, done.stderr
    assert "csi-oxide: cannot start: " in done.stderr and remedy in done.stderr
    assert "Traceback" not in done.stderr
    assert "Unclosed" not in done.stderr  # the Oxide client's session was closed
