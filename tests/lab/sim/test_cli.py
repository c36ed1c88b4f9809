"""``csi-oxide sim`` as a real server: env file, token, clean stop on SIGTERM."""

from __future__ import annotations

import argparse
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.sim.cli import _config, add_arguments, env_lines, parse_listen, write_atomically
from csi_oxide_lab.sim.config import OpLatency
from tests.plain_http import get

REPO = Path(__file__).resolve().parents[2]


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export"
        key, _, value = words[1].partition("=")
        env[key] = value
    return env


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the simulator exited early"
        assert time.monotonic() < deadline, "no env file in time"
        time.sleep(0.05)


def test_real_server_publishes_env_file_and_stops_cleanly(tmp_path: Path) -> None:
    env_file = tmp_path / "sim.env"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "csi_oxide_lab.sim.cli", "--env-file", str(env_file)]
    proc = subprocess.Popen(
        [*argv, "--instances", "2"], env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        _wait_for(env_file, proc)
        values = _parse_env(env_file.read_text())
        assert set(values) == {"OXIDE_HOST", "OXIDE_TOKEN", "OXIDE_PROJECT", "CSI_OXIDE_NODE_ID"}
        assert values["OXIDE_HOST"].startswith("http://127.0.0.1:")
        assert "'" in env_file.read_text()
        headers = {"authorization": f"Bearer {values['OXIDE_TOKEN']}"}
        host = values["OXIDE_HOST"]
        r = get(f"{host}/v1/instances/{values['CSI_OXIDE_NODE_ID']}", headers=headers)
        assert r.status_code == 200
        assert r.json()["run_state"] == "running"
        r = get(
            f"{host}/v1/instances", params={"project": values["OXIDE_PROJECT"]}, headers=headers
        )
        assert len(r.json()["items"]) == 3
        assert get(f"{host}/v1/utilization").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert values["OXIDE_HOST"] in out
    assert list(tmp_path.iterdir()) == [env_file]  # no temporary file left beside it


def test_arguments_and_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert (args.listen, args.backing, args.hotplug, args.quota_gib) == (
        "127.0.0.1:0",
        "memory",
        False,
        10240,
    )
    args = parser.parse_args(
        ["--hotplug", "--backing", "loop", "--state-dir", "/x", "--fail-rate", "0.1"]
    )
    assert (args.hotplug, args.backing, args.state_dir, args.fail_rate) == (
        True,
        "loop",
        Path("/x"),
        0.1,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("0.0.0.0:9", ("0.0.0.0", 9)),  # noqa: S104 (parsing only),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", ":80", "host:port", "h:70000"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(value)


def test_env_file_for_loop_backing(tmp_path: Path) -> None:
    sim = Simulator(SimConfig(backing="loop", state_dir=tmp_path, token="oxide-token-x'y"))
    try:
        target = tmp_path / "out.env"
        write_atomically(target, env_lines(sim, "http://127.0.0.1:1"))
        values = _parse_env(target.read_text())
    finally:
        sim.close()
    assert values["CSI_OXIDE_SIM_DEVICE_DIR"] == str(tmp_path / "devices")
    assert values["OXIDE_TOKEN"] == "oxide-token-x'y"
    assert values["CSI_OXIDE_NODE_ID"] == sim.local_instance_id
    assert tmp_path.exists()  # a state dir the user chose is kept


def test_op_latency_and_request_log_reach_the_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--op-latency-ms",
            "mutation=300:800,read=20:50",
            "--request-log",
            str(tmp_path / "r.jsonl"),
            "--latency-ms",
            "2",
        ]
    )
    config = _config(args)
    assert config.op_latency == (OpLatency("mutation", 300, 800), OpLatency("read", 20, 50))
    assert config.request_log == tmp_path / "r.jsonl"
    assert config.latency_ms == 2
    assert _config(parser.parse_args([])).op_latency == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("read=50:20", "want 0 <= LOW <= HIGH"),
        ("create=300:800", "'create' is neither an operation class"),
        ("mutation300", "want KEY=LOW:HIGH or KEY=MS"),
    ],
)
def test_a_bad_op_latency_is_refused_when_parsed(
    value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="csi-oxide sim")
    add_arguments(parser)
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["--op-latency-ms", value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --op-latency-ms" in err
    assert message in err


def _export_lines(proc: subprocess.Popen[str], count: int, timeout: float = 20.0) -> str:
    """The first ``count`` ``export`` lines ``proc`` prints, waited for up to ``timeout``."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while len(found) < count:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError(f"only {len(found)} export lines after {timeout} s") from None
        found += [line] if line.startswith("export ") else []
    return "".join(found)


def test_without_an_env_file_the_export_lines_go_to_stdout(tmp_path: Path) -> None:
    import csi_oxide

    code = Path(csi_oxide.__file__).resolve().parents[1]  # the code under test
    proc = subprocess.Popen(
        [sys.executable, "-m", "csi_oxide", "sim"],
        env=dict(os.environ, PYTHONPATH=str(code)),
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        values = _parse_env(_export_lines(proc, count=4))
        assert values["OXIDE_TOKEN"].startswith("oxide-token-")
        assert values["OXIDE_HOST"].startswith("http://127.0.0.1:")
        assert values["OXIDE_PROJECT"] and values["CSI_OXIDE_NODE_ID"]
        headers = {"authorization": f"Bearer {values['OXIDE_TOKEN']}"}
        assert get(f"{values['OXIDE_HOST']}/v1/utilization", headers=headers).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
