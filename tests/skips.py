"""The one skip rule of the tests. Every test that cannot run here says so through this module;
no test calls ``pytest.skip``, ``skipif`` or ``importorskip`` itself (``tests/test_skips.py``
checks).

- ``unavailable(reason)``: a prerequisite CI provides (root, loop devices, a system tool,
  csi-sanity, Go, kustomize...). In development the test skips with ``reason``; in CI (``CI`` set,
  as CI systems set it: ``CI=true``) it fails instead, so a CI that silently lost a test does not
  pass. The ``root`` mark (``tests/conftest.py``) and the ``tools`` mark go through it, and so
  does ``need_tools``.
- ``skip(reason)``, ``skip_if(reason)``: what CI is not asked to provide, and skipped with the
  reason everywhere: the opt-in modules' own prerequisites (the qemu guest, the Kubernetes
  cluster and the storage suite have their own make targets), and the few facts of a machine
  that a test cannot change (a container withholding a capability from root).
- ``opt_in(variable, reason)``: the gate of an opt-in module: skipped with the reason unless
  ``variable`` is set, CI or not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from csi_oxide.host import tools

# Values of ``CI`` that do not mean CI (an unset or emptied variable, or one turned off).
_NOT_CI = frozenset({"", "0", "false", "no"})


def in_ci() -> bool:
    """Whether this run is CI's: there, every test that would skip for want of something CI
    provides fails instead."""
    return os.environ.get("CI", "").strip().lower() not in _NOT_CI


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason`` in development; fail in CI, where the test must run."""
    __tracebackhide__ = True  # the skip is reported at its caller
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this test must run here", pytrace=False)
    pytest.skip(reason)


def skip(reason: str) -> NoReturn:
    """Skip with ``reason``, in CI too: only for what CI is not asked to provide (see above)."""
    __tracebackhide__ = True  # the skip is reported at its caller
    pytest.skip(reason)


def skip_if(reason: str | None) -> pytest.MarkDecorator:
    """A mark skipping with ``reason`` when there is one (CI too: as ``skip``)."""
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def opt_in(variable: str, reason: str) -> pytest.MarkDecorator:
    """The gate of an opt-in module: skipped unless ``variable`` is set (to anything but 0)."""
    off = os.environ.get(variable, "").strip() in ("", "0")
    return pytest.mark.skipif(off, reason=f"opt-in: {reason} ({variable}=1)")


def missing_tools(*names: str) -> list[str]:
    """Those of ``names`` that are not installed (looked up as the node looks its tools up:
    ``PATH``, then the sbin folders a Debian user's ``PATH`` lacks)."""
    return [name for name in names if tools.find(name) is None]


def tools_reason(missing: list[str], install: str = "make test installs it as root") -> str:
    """Why a test needing the tools ``missing`` cannot run here."""
    return f"needs {', '.join(missing)}, which is not installed here ({install})"


def need_tools(*names: str, install: str = "make test installs it as root") -> None:
    """``unavailable`` unless every tool of ``names`` is installed."""
    __tracebackhide__ = True
    missing = missing_tools(*names)
    if missing:
        unavailable(tools_reason(missing, install))


def root_reason() -> str | None:
    """Why tests marked ``root`` cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (loop devices, mkfs, mount); CI runs as root"
    if not Path("/dev/loop-control").exists():
        return "needs /dev/loop-control (loop devices)"
    return None
