"""The Dockerfile, checked statically (no Docker engine here), and its install path for real.

Statically: the stages and their pinned base, that the builder copies everything the wheel build
reads, that the runtime installs a package for every tool the node runs, the entrypoint and the
users the manifests expect. For real: build the wheel as the builder stage does, install it into
a fresh virtual environment as the runtime stage does, and run ``csi-oxide --version``, the
simulator, and the controller with the Deployment's own arguments from there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from csi_oxide import DRIVER_NAME, __version__
from csi_oxide._csi import csi_pb2 as csi
from csi_oxide._csi import csi_pb2_grpc as csi_grpc
from csi_oxide.cli import build_parser
from csi_oxide.commands import doctor
from tests import skips
from tests.plain_http import get

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "base" / "controller.yaml"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "base" / "node.yaml"

# The Debian package that provides each tool the node runs (checked against dpkg below).
TOOL_PACKAGES = {
    "blkid": "util-linux",
    "setpriv": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "losetup": "mount",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "mkfs.xfs": "xfsprogs",
    "xfs_growfs": "xfsprogs",
    "xfs_db": "xfsprogs",
}
# Tools the node runs that doctor does not check for (csi_oxide/node/fs.py).
EXTRA_NODE_TOOLS = ("e2fsck", "xfs_db")


@dataclass
class Stage:
    """One ``FROM ... AS name`` stage: its base image and its instructions."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _stages(text: str) -> dict[str, Stage]:
    joined = re.sub(r"\\\n", " ", text)  # line continuations
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = stages[match[2]] = Stage(match[2], match[1])
        else:
            assert current is not None, f"instruction before FROM: {line}"
            current.instructions.append((keyword, rest.strip()))
    return stages


STAGES = _stages(DOCKERFILE)


def _apt_packages(stage: Stage) -> set[str]:
    packages: set[str] = set()
    for run in stage.args("RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                packages |= {
                    w for w in words[words.index("install") + 1 :] if not w.startswith("-")
                }
    return packages


def _copied(stage: Stage) -> set[str]:
    sources: set[str] = set()
    for copy in stage.args("COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--")]
        sources |= {w.rstrip("/").removeprefix("./") for w in words[:-1]}
    return sources


def test_two_stages_on_one_pinned_slim_python_base() -> None:
    assert list(STAGES) == ["builder", "runtime"]
    minimum = re.fullmatch(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    for stage in STAGES.values():
        # A full patch version and Debian release: the tag does not move under a rebuild.
        assert re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-[a-z]+", stage.base), stage.base
        assert stage.base.split(":")[1].startswith(f"{minimum[1]}.")
    assert STAGES["builder"].base == STAGES["runtime"].base  # the wheel's Python is the runtime's


def test_builder_copies_what_the_wheel_build_reads() -> None:
    builder = STAGES["builder"]
    copied = _copied(builder)
    hatch = PYPROJECT["tool"]["hatch"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"]}
    needed |= set(hatch["build"]["targets"]["wheel"]["packages"])
    version_file = hatch["version"]["path"]
    assert any(version_file == c or version_file.startswith(f"{c}/") for c in copied), version_file
    assert needed <= copied, needed - copied
    assert any(re.search(r"-m build --wheel|pip wheel", run) for run in builder.args("RUN"))


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = [
        p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")
    ]
    assert {".git", ".venv", "tests"} <= set(patterns)
    for needed in _copied(STAGES["builder"]):
        for pattern in patterns:
            assert not fnmatch.fnmatch(needed, pattern), f"{pattern} hides {needed} from COPY"
        assert (ROOT / needed).exists(), needed


def test_runtime_installs_every_tool_the_node_runs() -> None:
    packages = _apt_packages(STAGES["runtime"])
    assert "libudev1" in packages  # pyudev loads libudev with ctypes
    for tool in (*doctor.NODE_TOOLS, *EXTRA_NODE_TOOLS):
        assert tool in TOOL_PACKAGES, f"which Debian package provides {tool}?"
        assert TOOL_PACKAGES[tool] in packages, f"{tool} needs {TOOL_PACKAGES[tool]}"
    installs = " ".join(STAGES["runtime"].args("RUN"))
    assert "--no-install-recommends" in installs
    assert "rm -rf /var/lib/apt/lists" in installs


@pytest.mark.tools("dpkg")
@pytest.mark.parametrize(("tool", "package"), sorted(TOOL_PACKAGES.items()))
def test_tool_packages_are_what_debian_says(tool: str, package: str) -> None:
    out = subprocess.run(["dpkg", "-S", f"bin/{tool}"], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        skips.unavailable(f"{tool} is not installed from a Debian package here")
    owners = {
        line.split(":", 1)[0]
        for line in out.stdout.splitlines()
        if line.rstrip().endswith(f"bin/{tool}")
    }
    assert package in owners


def _pod_spec(path: Path) -> Any:  # a parsed YAML document (JSON-like)
    return yaml.safe_load(path.read_text())["spec"]["template"]["spec"]


def test_entrypoint_and_users_match_the_manifests() -> None:
    runtime = STAGES["runtime"]
    (entrypoint,) = runtime.args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["csi-oxide"]
    assert "csi-oxide" in PYPROJECT["project"]["scripts"]
    (cmd,) = runtime.args("CMD")
    default = build_parser().parse_args(json.loads(cmd))
    assert (default.command, default.mode) == ("serve", "controller")
    (user,) = runtime.args("USER")
    uid, _, gid = user.partition(":")
    assert int(uid) != 0, "the image's default user (the controller's) is not root"
    controller = _pod_spec(DEPLOYMENT)["securityContext"]
    assert (controller["runAsUser"], controller["runAsGroup"]) == (int(uid), int(gid or uid))
    node = next(c for c in _pod_spec(DAEMONSET)["containers"] if c["name"] == "csi-oxide")
    assert node["securityContext"]["runAsUser"] == 0
    assert node["securityContext"]["privileged"] is True
    assert any(re.search(rf"\b{uid}\b", run) for run in runtime.args("RUN")), "user not created"
    assert any(kw == "COPY" and "--from=builder" in rest for kw, rest in runtime.instructions)


# ---- the install path, for real -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{what} did not start:\n{log.read_text()}"
        time.sleep(0.05)


@dataclass
class Installed:
    """A fresh virtual environment holding only the wheel and its dependencies."""

    bin: Path
    wheel: Path
    work: Path

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [str(self.bin / "csi-oxide"), *argv], env=env, stdout=log, stderr=subprocess.STDOUT
            )


# The module's first test that asks for ``installed`` builds the wheel and installs it with its
# dependencies into a fresh environment (the two steps' own limits: 5 and 10 minutes).
INSTALLING = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("image")
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("csi_oxide-*.whl")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        timeout=600,
    )
    return Installed(bin_dir, wheel, work)


def _clean_env() -> dict[str, str]:
    prefixes = ("OXIDE_", "CSI_OXIDE_", "VIRTUAL_ENV", "PYTHON")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@INSTALLING
def test_the_wheel_holds_the_generated_stubs(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {"csi_oxide/_csi/csi_pb2.py", "csi_oxide/_csi/csi_pb2_grpc.py"} <= names
    assert not any(n.startswith("tests/") for n in names)


@INSTALLING
def test_the_installed_command_reports_its_version(installed: Installed) -> None:
    out = subprocess.run(
        [str(installed.bin / "csi-oxide"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
        timeout=60,
    )
    assert out.stdout.strip() == f"csi-oxide {__version__}"


@pytest.fixture
def simulator(installed: Installed, tmp_path: Path) -> Iterator[dict[str, str]]:
    env_file = tmp_path / "sim.env"
    argv = ["sim", "--listen", f"127.0.0.1:{_free_port()}", "--env-file", str(env_file)]
    sim = installed.start("sim", argv, _clean_env())
    try:
        _wait_for(env_file, sim, installed.work / "sim.log", "the installed simulator")
        yield {
            key: shlex.split(value)[0]
            for key, _, value in (
                line.removeprefix("export ").partition("=")
                for line in env_file.read_text().splitlines()
                if line.startswith("export ")
            )
        }
    finally:
        sim.terminate()
        sim.wait(10)


@INSTALLING
def test_the_installed_controller_serves_with_the_deployment_arguments(
    installed: Installed, simulator: dict[str, str], tmp_path: Path
) -> None:
    """As in the pod: the Deployment's args and a token file; only the socket and metrics
    address are moved to this machine's free places (later flags win in argparse), and the
    Lease is left off (``--no-leader-election``: there is no Kubernetes API here; the cluster
    test and tests/kube run the election)."""
    ours = next(c for c in _pod_spec(DEPLOYMENT)["containers"] if c["name"] == "csi-oxide")
    token_file = tmp_path / "oxide-token"
    token_file.write_text(simulator["OXIDE_TOKEN"])
    env = _clean_env() | {
        "OXIDE_HOST": simulator["OXIDE_HOST"],
        "OXIDE_PROJECT": simulator["OXIDE_PROJECT"],
        "CSI_OXIDE_TOKEN_FILE": str(token_file),
    }
    sock = tmp_path / "csi.sock"
    metrics = f"127.0.0.1:{_free_port()}"
    assert "--leader-election" in ours["args"]
    argv = [
        *ours["args"],
        f"--endpoint=unix://{sock}",
        f"--metrics-address={metrics}",
        "--no-leader-election",
    ]
    driver = installed.start("controller", argv, env)
    try:
        _wait_for(sock, driver, installed.work / "controller.log", "the installed controller")
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            identity = csi_grpc.IdentityStub(channel)
            info = identity.GetPluginInfo(csi.GetPluginInfoRequest(), timeout=10)
            assert (info.name, info.vendor_version) == (DRIVER_NAME, __version__)
            controller = csi_grpc.ControllerStub(channel)
            listed = controller.ListVolumes(csi.ListVolumesRequest(), timeout=30)
            assert list(listed.entries) == []  # an answer from the simulated Oxide API
        answer = get(f"http://{metrics}/metrics")
        assert answer.status_code == 200
        assert "ListVolumes" in answer.text
    finally:
        driver.terminate()
        driver.wait(15)
    assert driver.returncode == 0, (installed.work / "controller.log").read_text()
