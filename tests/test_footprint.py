"""What a running daemon has loaded, read from the real process (``python -X importtime``): the
node plugin holds no Oxide credentials and makes no Oxide call, so it loads neither the Oxide
layer nor the controller, nor an HTTP client, nor the simulator; the controller loads none of the
node's data path (pyudev, the filesystem tools' wrappers), and of the HTTP libraries only the one
it talks to Oxide with (aiohttp; httpx serves the tests' and the simulator's transports)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

NODE_ID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
START_TIMEOUT = 60.0

# Packages (a name and everything under it) each mode must not load.
NOT_IN_THE_NODE = (
    "csi_oxide.oxide",
    "csi_oxide.controller",
    "csi_oxide.server.controller",
    "csi_oxide.sim",
    "httpx",
    "httpcore",
    "aiohttp",
    "uvicorn",
    "starlette",
)
NOT_IN_THE_CONTROLLER = (
    "csi_oxide.node",
    "csi_oxide.server.node",
    "csi_oxide.sim",
    "pyudev",
    "httpx",
    "uvicorn",
    "starlette",
)


def imported_names(importtime: str) -> set[str]:
    """The modules named in ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                names.add(name)
    return names


def under(names: set[str], packages: tuple[str, ...]) -> list[str]:
    """The ``names`` that are one of ``packages`` or inside one."""
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in packages))


def loaded_by_serve(tmp_path: Path, mode: str, *flags: str, env: dict[str, str]) -> set[str]:
    """The modules ``csi-oxide serve --mode MODE`` has imported once its socket is up."""
    sock = tmp_path / "csi.sock"
    argv = [sys.executable, "-X", "importtime", "-m", "csi_oxide", "serve", "--mode", mode]
    argv += ["--endpoint", f"unix://{sock}", *flags]
    errors = tmp_path / "stderr"  # a file: the import lines alone would fill a pipe and block
    with errors.open("w") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not sock.exists():
                assert proc.poll() is None, (
                    f"serve --mode {mode} ended: {errors.read_text()[-2000:]}"
                )
                assert time.monotonic() < deadline, f"serve --mode {mode}: no socket"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return imported_names(errors.read_text())


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without any Oxide or driver settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OXIDE_", "CSI_OXIDE_"))}
    return {**env, "HOME": str(tmp_path), **extra}


def test_imported_names_reads_importtime_output() -> None:
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |   csi_oxide.oxide_rules\n"
        "import time:        80 |        200 | csi_oxide.volumes\n"
        '{"event": "serving"}\n'
    )
    names = imported_names(text)
    assert names == {"csi_oxide.oxide_rules", "csi_oxide.volumes"}
    assert under(names | {"csi_oxide.oxide.names"}, ("csi_oxide.oxide",)) == [
        "csi_oxide.oxide.names"
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("deployed", [False, True], ids=["bare", "as-deployed"])
def test_the_node_plugin_loads_no_oxide_controller_or_http_code(
    tmp_path: Path, deployed: bool
) -> None:
    """Bare: the flags it needs; as deployed: with the metrics endpoint and the kubelet
    registration too (deploy/kubernetes/base/node.yaml)."""
    (tmp_path / "devices").mkdir()
    flags = ["--node-id", NODE_ID, "--state-dir", str(tmp_path / "state")]
    flags += ["--sim-device-dir", str(tmp_path / "devices")]
    if deployed:
        (tmp_path / "registration").mkdir()
        flags += ["--metrics-address", f"127.0.0.1:{_free_port()}"]
        flags += ["--registration-dir", str(tmp_path / "registration")]
    loaded = loaded_by_serve(tmp_path, "node", *flags, env=_env(tmp_path))
    assert {"grpc", "csi_oxide.server.node", "csi_oxide.node.ops"} <= loaded  # it did serve
    found = under(loaded, NOT_IN_THE_NODE)
    assert found == [], f"the node plugin loaded {len(found)} modules it must not: {found}"
    # The metrics and the registration API are loaded only when asked for.
    asked = {"prometheus_client": deployed, "csi_oxide.server.registration": deployed}
    assert {name: name in loaded for name in asked} == asked
    if not deployed:  # (the metrics' prometheus_client loads it through urllib.request)
        # Only a read-only raw block publish hashes (csi_oxide.node.views): imported there.
        assert "hashlib" not in loaded


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_controller_loads_none_of_the_nodes_data_path(tmp_path: Path, scheme: str) -> None:
    """https: the client builds its TLS trust at start (certifi's bundle here), without httpx."""
    env = _env(
        tmp_path,
        OXIDE_HOST=f"{scheme}://127.0.0.1:9",  # never answers: the controller starts all the same
        OXIDE_TOKEN="oxide-token-for-a-test",
        OXIDE_PROJECT="csi",
    )
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(name, None)
    loaded = loaded_by_serve(tmp_path, "controller", env=env)
    assert {"grpc", "aiohttp", "csi_oxide.controller.ops"} <= loaded  # it did serve
    assert ("certifi" in loaded) == (scheme == "https")
    found = under(loaded, NOT_IN_THE_CONTROLLER)
    assert found == [], f"the controller loaded {len(found)} modules it must not: {found}"


def _trust(context: ssl.SSLContext) -> tuple[object, ...]:
    """What an SSLContext trusts and checks."""
    return (
        context.get_ca_certs(),
        context.verify_mode,
        context.check_hostname,
        context.options,
        context.minimum_version,
        context.maximum_version,
        context.protocol,
    )


@pytest.mark.parametrize("settings", ["none", "file", "dir", "file-and-dir"])
def test_the_controllers_tls_trust_is_httpxs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: str
) -> None:
    """``tls_context`` takes httpx's steps without importing httpx: the same trust as
    ``httpx.create_ssl_context`` for each of the environment settings it reads."""
    import certifi
    import httpx

    from csi_oxide.oxide.transport import tls_context

    bundle = certifi.where()
    first = Path(bundle).read_text().split("-----END CERTIFICATE-----")[0]
    one = tmp_path / "one.pem"  # a bundle of one certificate, unlike certifi's
    one.write_text(first + "-----END CERTIFICATE-----\n")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if "file" in settings:
        monkeypatch.setenv("SSL_CERT_FILE", str(one))
    if "dir" in settings:
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    ours = tls_context(None)
    assert _trust(ours) == _trust(httpx.create_ssl_context(trust_env=True))
    count = len(ours.get_ca_certs())  # each setting made a difference
    if settings == "none":
        assert count > 10  # certifi's bundle
    elif settings == "dir":
        assert count == 0  # a folder holding no certificate
    else:
        assert count == 1  # the one certificate: SSL_CERT_FILE wins over SSL_CERT_DIR


@pytest.mark.parametrize("mode", ["node", "controller"])
def test_a_forbidden_module_is_seen(mode: str) -> None:
    forbidden = NOT_IN_THE_NODE if mode == "node" else NOT_IN_THE_CONTROLLER
    names = {"grpc", "csi_oxide.server.app", f"{forbidden[0]}.x", forbidden[-1]}
    assert under(names, forbidden) == sorted([f"{forbidden[0]}.x", forbidden[-1]])


def test_sim_options_are_defined_only_when_sim_may_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Defining ``sim``'s options imports the simulator, so ``main`` leaves them out unless
    "sim" is among the arguments; ``sim`` itself still gets all of them."""
    from csi_oxide.cli import build_parser, main

    with pytest.raises(SystemExit):
        build_parser(sim_options=False).parse_args(["sim", "--help"])
    assert "--hotplug" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    assert "--hotplug" in capsys.readouterr().out
