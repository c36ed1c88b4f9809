"""``csi-oxide doctor``: every check can pass and can fail."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from csi_oxide import doctor
from csi_oxide.oxide.client import HttpOxideClient
from csi_oxide.oxide.credentials import OxideCredentials
from csi_oxide.oxide.types import GIB, DiskSpec
from csi_oxide.sim import SimConfig, Simulator

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
    assert checks["filesystem tools"].detail == "missing: mkfs.xfs, xfs_growfs"
    assert "netlink socket refused" in checks["device events (udev)"].detail
    assert "no node ID" in checks["instance UUID (node ID)"].detail
    table = doctor.render(list(checks.values()))
    assert table.count("FAIL") == len(checks)


def _factory(sim: Simulator) -> doctor.ClientFactory:
    transport = httpx.ASGITransport(app=sim.asgi_app(validate=True))

    def make(creds: OxideCredentials) -> HttpOxideClient:
        return HttpOxideClient.for_tests(
            host=creds.host, token=creds.token(), project=creds.project, transport=transport
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
    client = HttpOxideClient.for_tests(
        host="http://sim",
        token=sim.token,
        project="csi",
        transport=httpx.ASGITransport(app=sim.asgi_app()),
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
