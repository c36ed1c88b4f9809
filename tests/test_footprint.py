"""What a running daemon has loaded, read from the real process (``python -X importtime``): the
node plugin holds no Oxide credentials and makes no Oxide call, so it loads neither the Oxide
layer nor the controller, nor an HTTP client, nor the simulator; the controller loads none of the
node's data path (pyudev, the filesystem tools' wrappers), nor any third-party HTTP library: it
talks to Oxide with its own carrier (csi_oxide.oxide.transport; aiohttp is the benchmark's
development dependency, httpx no dependency at all). Neither loads prometheus_client: the metrics
are written by csi_oxide.daemon.exposition, and so the node plugin is spared the standard
library's HTTP server and client, email, urllib.request and hashlib that prometheus_client
imported. (ssl stays: asyncio imports it.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_ID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
START_TIMEOUT = 60.0

# Packages (a name and everything under it) each mode must not load.
NOT_IN_THE_NODE = (
    "csi_oxide.oxide",
    "csi_oxide.controller",
    "csi_oxide.server.controller",
    "csi_oxide_lab",
    "httpx",
    "httpcore",
    "aiohttp",
    "uvicorn",
    "starlette",
    "prometheus_client",
    # What prometheus_client brought in. Only a read-only raw block publish hashes
    # (csi_oxide.node.views): it imports hashlib there, not at start.
    "hashlib",
    "http.server",
    "http.client",
    "email",
    "urllib.request",
    "wsgiref",
    # Python's TLS (OpenSSL's bindings): the node makes no TLS connection without its startup
    # taint, and refuses ``ssl`` before asyncio, gRPC and structlog would load it
    # (csi_oxide.cli._without_tls). Their refused attempts still show as ``ssl`` lines in
    # -X importtime; the bindings, which a real import loads, must not.
    "_ssl",
)
NOT_IN_THE_CONTROLLER = (
    "csi_oxide.node",
    "csi_oxide.server.node",
    "csi_oxide_lab",
    "pyudev",
    "httpx",
    "httpcore",
    "aiohttp",
    "yarl",
    "multidict",
    "uvicorn",
    "starlette",
    "prometheus_client",
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
        "import time:       120 |        120 |   csi_oxide.contract.oxide_rules\n"
        "import time:        80 |        200 | csi_oxide.contract.volumes\n"
        '{"event": "serving"}\n'
    )
    names = imported_names(text)
    assert names == {"csi_oxide.contract.oxide_rules", "csi_oxide.contract.volumes"}
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
    asked = {"csi_oxide.daemon.metrics": deployed, "csi_oxide.server.registration": deployed}
    assert {name: name in loaded for name in asked} == asked


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_controller_loads_none_of_the_nodes_data_path(tmp_path: Path, scheme: str) -> None:
    """https: the client builds its TLS trust at start (certifi's bundle here), without httpx.
    As deployed, with the metrics endpoint."""
    env = _env(
        tmp_path,
        OXIDE_HOST=f"{scheme}://127.0.0.1:9",  # never answers: the controller starts all the same
        OXIDE_TOKEN="oxide-token-for-a-test",
        OXIDE_PROJECT="csi",
    )
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        env.pop(name, None)
    metrics = f"127.0.0.1:{_free_port()}"
    loaded = loaded_by_serve(tmp_path, "controller", "--metrics-address", metrics, env=env)
    assert {"grpc", "csi_oxide.oxide.http1", "csi_oxide.controller.ops"} <= loaded
    assert "csi_oxide.daemon.metrics" in loaded
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
def test_the_controllers_tls_trust_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: str
) -> None:
    """``tls_context`` without a CA file: ``SSL_CERT_FILE`` (a bundle) wins over
    ``SSL_CERT_DIR`` (a folder), and without either, certifi's bundle; these are httpx's steps,
    kept when the driver left httpx, so the same settings trust the same servers. Each case is
    compared with a context made by hand from that one source."""
    import certifi

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
    by_hand = {
        "none": lambda: ssl.create_default_context(cafile=bundle),
        "file": lambda: ssl.create_default_context(cafile=str(one)),
        "dir": lambda: ssl.create_default_context(capath=str(tmp_path)),
        "file-and-dir": lambda: ssl.create_default_context(cafile=str(one)),
    }
    assert _trust(ours) == _trust(by_hand[settings]())
    count = len(ours.get_ca_certs())  # each setting made a difference
    if settings == "none":
        assert count > 10  # certifi's bundle
    elif settings == "dir":
        assert count == 0  # a folder holding no certificate
    else:
        assert count == 1  # the one certificate: SSL_CERT_FILE wins over SSL_CERT_DIR
    # A CA file given (CSI_OXIDE_CA_FILE) wins over the environment.
    assert _trust(tls_context(str(one))) == _trust(ssl.create_default_context(cafile=str(one)))


def _requirement_names(requirements: list[str]) -> set[str]:
    """The project names of PEP 508 requirements ("aiohttp>=3.14.5,<4" -> "aiohttp")."""
    names = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert name, requirement
        names.add(name.group(0).lower().replace("_", "-"))
    return names


def test_the_driver_has_one_http_client() -> None:
    """The driver's one HTTP client is its own (csi_oxide/oxide/transport.py): the wheel (the
    driver and its lab) asks for no HTTP library, only certifi for its TLS trust; aiohttp is
    the benchmark's Kubernetes client, a development dependency; nothing asks for httpx, nor
    for what it brought along (httpcore, sniffio)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    dev = _requirement_names(project["optional-dependencies"]["dev"])
    assert "certifi" in runtime
    assert runtime & {"aiohttp", "httpx", "httpcore", "requests", "urllib3"} == set()
    assert "aiohttp" in dev
    assert (runtime | dev) & {"httpx", "httpcore", "sniffio"} == set()


def test_the_packages_import_without_an_http_library() -> None:
    """The command line, the lab's test support and the simulator import with httpx (and
    httpcore) and aiohttp made unimportable, in a fresh interpreter."""
    code = (
        "import sys\n"
        "sys.modules['httpx'] = sys.modules['httpcore'] = sys.modules['aiohttp'] = None\n"
        "import csi_oxide.cli, csi_oxide.wiring, csi_oxide.oxide.client\n"
        "import csi_oxide_lab.testing, csi_oxide_lab.asgi, csi_oxide_lab.sim\n"
        "import csi_oxide_lab.harness, csi_oxide_lab.demo\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr


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
