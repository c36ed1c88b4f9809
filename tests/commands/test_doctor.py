"""``csi-oxide doctor``: every check can pass and can fail."""

from __future__ import annotations

import ast
import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import csi_oxide.node
from csi_oxide.commands import doctor
from csi_oxide.host import tools
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.credentials import OxideCredentials
from csi_oxide.oxide.types import DiskSpec
from csi_oxide_lab.asgi import AsgiCarrier
from csi_oxide_lab.sim import SimConfig, Simulator
from csi_oxide_lab.testing import oxide_client
from tests.units import GIB

UUID = "0b8e2a4c-5d6f-4a1b-9c3d-2e7f8a9b0c1d"


def _host(tmp_path: Path, **overrides: object) -> doctor.NodeHost:
    kubelet = tmp_path / "kubelet"
    kubelet.mkdir()
    settings: dict[str, object] = {
        "env": {"CSI_OXIDE_NODE_ID": UUID},
        "euid": lambda: 0,
        "which": lambda tool: f"/usr/sbin/{tool}",
        "kubelet_dir": kubelet,
        "smbios_path": tmp_path / "no-smbios",
        "netlink": lambda: "kernel uevents readable",
    }
    settings.update(overrides)
    return doctor.NodeHost(**settings)  # type: ignore[arg-type]


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def test_a_healthy_node_passes_every_check(tmp_path: Path) -> None:
    checks = doctor.node_checks(_host(tmp_path))
    assert [c.name for c in checks if not c.ok] == []
    assert _by_name(checks)["instance UUID (node ID)"].detail == UUID


def test_node_problems_are_named(tmp_path: Path) -> None:
    def no_xfs(tool: str) -> str | None:
        return None if "xfs" in tool else f"/usr/sbin/{tool}"

    def no_netlink() -> str:
        raise PermissionError("netlink socket refused")

    host = _host(
        tmp_path,
        env={},
        euid=lambda: 1000,
        which=no_xfs,
        kubelet_dir=tmp_path / "missing",
        netlink=no_netlink,
    )
    checks = _by_name(doctor.node_checks(host))
    assert not any(c.ok for c in checks.values())
    assert checks["filesystem tools"].detail == "missing: mkfs.xfs, xfs_db, xfs_growfs"
    assert "netlink socket refused" in checks["device events (udev)"].detail
    assert "no node ID" in checks["instance UUID (node ID)"].detail
    table = doctor.render(list(checks.values()))
    assert table.count("FAIL") == len(checks)


def _factory(sim: Simulator) -> doctor.ClientFactory:
    carrier = AsgiCarrier(sim.asgi_app(validate=True))

    def make(creds: OxideCredentials) -> HttpOxideClient:
        return oxide_client(
            host=creds.host, token=creds.token(), project=creds.project, carrier=carrier
        )

    return make


def _env(sim: Simulator, **changes: str) -> dict[str, str]:
    env = {"OXIDE_HOST": "http://sim", "OXIDE_TOKEN": sim.token, "OXIDE_PROJECT": "csi"}
    env.update(changes)
    return env


async def test_controller_checks_pass_against_the_simulator() -> None:
    sim = Simulator(SimConfig(quota_gib=10))
    checks = await doctor.controller_checks(_env(sim), client_factory=_factory(sim))
    assert [c.ok for c in checks] == [True, True, True]
    assert "10.0 GiB free" in checks[2].detail
    assert sim.token not in doctor.render(checks)


@pytest.mark.parametrize(
    ("changes", "failing", "message"),
    [
        ({"OXIDE_PROJECT": "nope"}, "API reachable, token valid, project exists", "not found"),
        ({"OXIDE_TOKEN": "oxide-token-wrong"}, "API reachable, token valid, project exists", ""),
        ({"OXIDE_HOST": ""}, "Oxide credentials", "OXIDE_HOST"),
    ],
)
async def test_controller_problems_are_named(
    changes: dict[str, str], failing: str, message: str
) -> None:
    sim = Simulator(SimConfig())
    env = {k: v for k, v in _env(sim, **changes).items() if v}
    checks = _by_name(await doctor.controller_checks(env, client_factory=_factory(sim)))
    assert not checks[failing].ok
    assert message.lower() in checks[failing].detail.lower()
    assert "oxide-token-" not in doctor.render(list(checks.values()))


async def test_no_quota_left_fails() -> None:
    sim = Simulator(SimConfig(quota_gib=1))
    client = oxide_client(
        host="http://sim",
        token=sim.token,
        project="csi",
        carrier=AsgiCarrier(sim.asgi_app()),
    )
    await client.disk_create(DiskSpec(name="fill", description="", size=GIB, block_size=4096))
    await client.aclose()
    checks = await doctor.controller_checks(_env(sim), client_factory=_factory(sim))
    assert not checks[-1].ok
    assert "0.0 GiB free" in checks[-1].detail


async def test_a_credentials_file_others_can_read_fails_its_row(tmp_path: Path) -> None:
    sim = Simulator(SimConfig())
    config = tmp_path / ".config" / "oxide"
    config.mkdir(parents=True)
    creds = config / "credentials.toml"
    creds.write_text(f'[profile.sim]\nhost = "http://sim"\ntoken = "{sim.token}"\nuser = "u"\n')
    env = {"HOME": str(tmp_path), "OXIDE_PROFILE": "sim", "OXIDE_PROJECT": "csi"}
    creds.chmod(0o644)
    checks = _by_name(await doctor.controller_checks(env, client_factory=_factory(sim)))
    row = checks["credentials file private"]
    assert not row.ok
    assert "chmod 600" in row.detail
    assert checks["API reachable, token valid, project exists"].ok
    assert sim.token not in doctor.render(list(checks.values()))
    creds.chmod(0o600)
    checks = _by_name(await doctor.controller_checks(env, client_factory=_factory(sim)))
    assert "credentials file private" not in checks
    assert all(c.ok for c in checks.values())


def _programs_named_in_node_code() -> tuple[set[str], set[str]]:
    """(every string that opens a list or tuple literal, the programs ``tools.find`` is asked
    for) across csi_oxide/node: argv lists such as ``["mount", "-t", ...]`` open with a program."""
    heads: set[str] = set()
    asked: set[str] = set()
    for source in Path(csi_oxide.node.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
                first = node.elts[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    heads.add(first.value)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("which", "find"):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    asked.add(arg.value)
    return heads, asked


def test_doctor_checks_the_tools_the_node_runs() -> None:
    heads, asked = _programs_named_in_node_code()
    runs = {h for h in heads if tools.find(h) is not None} | asked  # programs, not options
    assert runs, "no program found in the node's code"
    assert runs <= set(doctor.NODE_TOOLS), f"not checked by doctor: {runs - set(doctor.NODE_TOOLS)}"
    assert set(doctor.NODE_TOOLS) <= heads | asked, "doctor checks a tool the node never runs"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """doctor.run configures logging for the process; put the previous configuration back."""
    before = structlog.get_config()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    structlog.configure(**before)
    root.setLevel(level)
    root.handlers[:] = handlers


def test_the_doctor_prints_its_table_alone(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    sim = Simulator(SimConfig(quota_gib=10))
    structlog.reset_defaults()  # as in a fresh `csi-oxide doctor` process: nothing configured
    code = doctor.run("controller", _env(sim), client_factory=_factory(sim))
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["check", "detail"]
    assert len(lines) == 1 + 3 + 1  # header, the three controller checks, the summary
    assert lines[-1] == "3 passed, 0 failed"
    assert "oxide_request" not in out + err  # the client's debug lines


# ---- first contact with a wrong address: one attempt, then what is likely wrong ----------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _api_row(host: str) -> tuple[doctor.Check, float]:
    env = {"OXIDE_HOST": host, "OXIDE_TOKEN": "oxide-token-doctor", "OXIDE_PROJECT": "csi"}
    started = time.monotonic()
    checks = _by_name(await doctor.controller_checks(env))  # the doctor's own client
    return checks["API reachable, token valid, project exists"], time.monotonic() - started


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment: the client talks to 127.0.0.1 itself."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def test_nothing_listening_fails_at_once_saying_so(direct: None) -> None:
    row, seconds = await _api_row(f"http://127.0.0.1:{_closed_port()}")
    assert not row.ok
    assert "nothing listens at 127.0.0.1:" in row.detail and "after 1 attempt" in row.detail
    assert seconds < 10  # was 60 s and 17 attempts


def test_an_unreachable_api_leaves_the_table_alone(
    capsys: pytest.CaptureFixture[str], restore_logging: None, direct: None
) -> None:
    env = {
        "OXIDE_HOST": f"http://127.0.0.1:{_closed_port()}",
        "OXIDE_TOKEN": "oxide-token-doctor",
        "OXIDE_PROJECT": "csi",
    }
    assert doctor.run("controller", env) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "1 passed, 1 failed"
    assert err == ""  # the row says why; no log line above the table


async def _plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(512)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    await writer.drain()
    writer.close()


async def test_a_host_without_scheme_at_a_plain_http_server_is_told_to_use_http(
    direct: None,
) -> None:
    server = await asyncio.start_server(_plain_http, "127.0.0.1", 0)
    async with server:
        where = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        row, seconds = await _api_row(where)  # no scheme: https, as in Oxide's SDKs
    assert not row.ok
    assert f"the server speaks plain HTTP: use http://{where}" in row.detail
    assert seconds < 10  # was 55 s and 22 attempts
