"""The Dockerfile, checked statically (no Docker engine here), and its install path for real.

The real check: build the wheel the image's builder stage builds, install it into a fresh
virtual environment as the runtime stage does, and run ``csi-oxide --version`` and the simulator
from there.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx

from csi_oxide import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_two_stages_on_a_pinned_slim_python_base() -> None:
    found = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", DOCKERFILE, re.MULTILINE)
    stages = {name: image for image, name in found}
    assert set(stages) == {"builder", "runtime"}
    for image in stages.values():
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image


def test_runtime_has_the_node_tools_and_the_entrypoint() -> None:
    runtime = DOCKERFILE.split("AS runtime", 1)[1]
    for package in ("util-linux", "mount", "e2fsprogs", "xfsprogs", "libudev1"):
        assert re.search(rf"\b{re.escape(package)}\b", runtime), package
    assert "COPY --from=builder /dist/*.whl" in runtime
    assert 'ENTRYPOINT ["csi-oxide"]' in runtime
    assert re.search(r"^USER 65532", runtime, re.MULTILINE)


def test_dockerignore_keeps_the_build_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    for needed in ("csi_oxide", "proto", "pyproject.toml", "README.md"):
        assert needed not in ignored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_wheel_installs_and_runs_in_a_fresh_environment(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
    )
    wheels = list(dist.glob("csi_oxide-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])], check=True
    )
    version = subprocess.run(
        [str(bin_dir / "csi-oxide"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"csi-oxide {__version__}"
    port = _free_port()
    env_file = tmp_path / "sim.env"
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("OXIDE_", "VIRTUAL"))}
    log = (tmp_path / "sim.log").open("wb")
    sim = subprocess.Popen(
        [
            str(bin_dir / "csi-oxide"),
            "sim",
            "--listen",
            f"127.0.0.1:{port}",
            "--env-file",
            str(env_file),
        ],
        env=clean_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not env_file.exists():
            assert sim.poll() is None, (tmp_path / "sim.log").read_text()
            assert time.monotonic() < deadline, "the installed simulator did not start"
            time.sleep(0.1)
        values = dict(
            line.removeprefix("export ").split("=", 1)
            for line in env_file.read_text().splitlines()
            if line.startswith("export ")
        )
        token = values["OXIDE_TOKEN"].strip("'")
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/disks?project=csi",
            headers={"authorization": f"Bearer {token}", "api-version": "2026060800.0.0"},
        )
        assert answer.status_code == 200
        assert answer.json()["items"] == []
    finally:
        sim.terminate()
        sim.wait(10)
        log.close()
