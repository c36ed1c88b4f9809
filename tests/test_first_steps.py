"""A newcomer's first steps, as a user without root: ``csi-oxide --help`` and ``csi-oxide demo``
(what ``make demo`` runs once its virtual environment exists), from a copy of the checkout that
user can read. A documented command that fails fails this test.

As root the commands run as ``nobody`` (``setpriv``, else ``runuser``); as any other user, as that
user. The copy is a virtual environment made with a Python of the same version that the user can
run, whose path holds a copy of ``csi_oxide`` and ``csi_oxide_lab`` and, for the third-party
packages, this environment's site-packages (read, never written). Where no such Python or no way
to switch user exists, the test skips and says which.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import csi_oxide
import csi_oxide_lab
from tests import skips

USER = "nobody"
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class Newcomer:
    """How to run a command as the unprivileged user, and the copy's ``csi-oxide``."""

    prefix: tuple[str, ...]
    env: dict[str, str]
    csi_oxide: Path

    def run(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        argv = [*self.prefix, str(self.csi_oxide), *args]
        return subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )


def _switch_user() -> tuple[tuple[str, ...], pwd.struct_passwd | None]:
    """The command prefix that drops to ``USER`` (empty: already unprivileged), and the user."""
    if os.geteuid() != 0:
        return (), None
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        skips.unavailable(f"no user {USER!r} on this machine to run the first steps as")
    if setpriv := shutil.which("setpriv"):
        ids = (f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups")
        return (setpriv, *ids), user
    if runuser := shutil.which("runuser"):
        return (runuser, "-u", USER, "--"), user
    skips.unavailable(
        "neither setpriv nor runuser is installed: cannot run as an unprivileged user"
    )


def _python_for(prefix: tuple[str, ...]) -> str:
    """A Python of this version that the user behind ``prefix`` can run."""
    candidates = [
        os.path.realpath(sys.executable),
        shutil.which(f"python{VERSION}") or "",
        f"/usr/bin/python{VERSION}",
    ]
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    for python in dict.fromkeys(c for c in candidates if c):
        # Through a shell, as the demo starts its processes: setpriv's own exec can reach a
        # program in a folder that the user's processes cannot.
        argv = [*prefix, "/bin/sh", "-c", '"$0" -c "$1"', python, probe]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip() == VERSION:
            return python
    skips.unavailable(f"no Python {VERSION} that user {USER!r} can run (tried {candidates})")


def _copy(base: Path, python: str) -> Path:
    """The copy: a venv whose path holds a copy of the package and this venv's packages; its
    ``csi-oxide`` command."""
    venv = base / ".venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    for package in (csi_oxide, csi_oxide_lab):  # the distribution's two packages
        source = Path(str(package.__file__)).resolve().parent
        shutil.copytree(
            source, base / "src" / source.name, ignore=shutil.ignore_patterns("__pycache__")
        )
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "first_steps.pth").write_text(f"{base / 'src'}\n{sysconfig.get_path('purelib')}\n")
    command = venv / "bin" / "csi-oxide"
    command.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom csi_oxide.cli import main\n"
        "sys.exit(main())\n"
    )
    command.chmod(0o755)
    return command


def _own_folder(path: Path, user: pwd.struct_passwd | None) -> str:
    path.mkdir()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    return str(path)


@pytest.fixture(scope="module")
def newcomer() -> Iterator[Newcomer]:
    prefix, user = _switch_user()
    python = _python_for(prefix)
    # Not pytest's tmp_path: its parents are private to the user running the tests.
    base = Path(tempfile.mkdtemp(prefix="csi-oxide-first-steps-", dir="/tmp"))
    try:
        base.chmod(0o755)
        command = _copy(base, python)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": _own_folder(base / "home", user),
            "TMPDIR": _own_folder(base / "tmp", user),
            "LANG": "C.UTF-8",
        }
        yield Newcomer(prefix, env, command)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_help_answers(newcomer: Newcomer) -> None:
    done = newcomer.run("--help")
    assert done.returncode == 0, done.stdout + done.stderr
    for command in ("serve", "sim", "demo", "doctor"):
        assert command in done.stdout


def test_the_demo_runs_to_its_end(newcomer: Newcomer) -> None:
    done = newcomer.run("demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo finished" in done.stdout and "demo FAILED" not in done.stdout
    assert "ControllerExpandVolume to 2 GiB" in done.stdout
    assert "Traceback" not in done.stderr


def test_serving_without_root_says_what_to_do(newcomer: Newcomer) -> None:
    """The default socket folder (/csi) is root's to make: one line, no traceback."""
    if Path("/csi").exists():
        # A fact of the machine (a driver ran here), not something CI is asked to provide.
        skips.skip("/csi exists on this machine: the refusal cannot be shown")
    newcomer.env.update(
        OXIDE_HOST="http://127.0.0.1:9", OXIDE_TOKEN="oxide-token-x", OXIDE_PROJECT="csi"
    )
    done = newcomer.run("serve", "--mode", "controller", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cannot start: the socket's folder /csi cannot be made" in done.stderr
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr
