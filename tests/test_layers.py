"""The layers of docs/design.md ("one seam per outside system") as lint: ruff's banned-api
(TID251 in pyproject.toml) refuses gRPC, HTTP and subprocesses outside the one layer that owns each.

Run against ruff itself, with the project's configuration: a forbidden import fails lint, every
exempt file needs its exemption, and (since an exemption is per file, not per library) an exempt
file uses only the library its layer owns.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each exempt file may use: its layer's own library, nothing else (the architecture, stated).
GRPC = {"grpc", "csi_oxide._csi", "csi_oxide._pluginregistration"}
# Connections opened by hand: the driver's one HTTP client, its own carrier over asyncio's
# streams, and the guest's byte bridge (httpx and aiohttp stay banned everywhere: no file of the
# packages may use them).
CONNECTIONS = {"asyncio.open_connection"}
SUBPROCESS = {
    "subprocess",
    "asyncio.subprocess",
    "asyncio.create_subprocess_exec",
    "asyncio.create_subprocess_shell",
}
OWNED = {
    "csi_oxide/server/*.py": GRPC,
    "csi_oxide_lab/demo.py": GRPC,
    "csi_oxide/oxide/transport.py": CONNECTIONS,
    "csi_oxide_lab/guest/bridge.py": CONNECTIONS,
    "csi_oxide/node/exec.py": SUBPROCESS,
    "csi_oxide_lab/harness.py": SUBPROCESS,
    "csi_oxide_lab/sim/runner.py": SUBPROCESS,
    "csi_oxide_lab/guest/vm.py": SUBPROCESS,
}


def source_files() -> list[Path]:
    """Every source file of the distribution's two packages, the driver and its lab."""
    return sorted([*ROOT.glob("csi_oxide/**/*.py"), *ROOT.glob("csi_oxide_lab/**/*.py")])


def banned_names(source: str, filename: str) -> set[str]:
    """The banned names ruff reports for ``source`` linted as ``filename`` (TID251 only)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--select",
            "TID251",
            "--output-format",
            "json",
            "--stdin-filename",
            filename,
            "-",
        ],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    # "`grpc` is banned: ..." -> grpc
    return {d["message"].split("`")[1] for d in json.loads(done.stdout)}


def exempt_globs() -> list[str]:
    """The csi_oxide files pyproject.toml exempts from TID251."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignores = config["tool"]["ruff"]["lint"]["per-file-ignores"]
    return [
        glob
        for glob, codes in ignores.items()
        if glob.startswith(("csi_oxide/", "csi_oxide_lab/")) and "TID251" in codes
    ]


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("import grpc", "grpc"),
        ("from csi_oxide._csi import csi_pb2", "csi_oxide._csi"),
        ("import httpx", "httpx"),
        ("import aiohttp", "aiohttp"),
        ("import asyncio\nasyncio.open_connection('h', 1)", "asyncio.open_connection"),
        ("import subprocess", "subprocess"),
        (
            "import asyncio\nasyncio.create_subprocess_exec('mkfs')",
            "asyncio.create_subprocess_exec",
        ),
    ],
)
@pytest.mark.parametrize(
    "where", ["csi_oxide/controller/probe.py", "csi_oxide/node/probe.py", "csi_oxide/probe.py"]
)
def test_a_forbidden_import_fails_lint(line: str, name: str, where: str) -> None:
    assert banned_names(line + "\n", where) == {name}


def test_the_owning_layer_may_import_its_library() -> None:
    assert banned_names("import grpc\n", "csi_oxide/server/probe.py") == set()
    opens = "import asyncio\nasyncio.open_connection('h', 1)\n"
    assert banned_names(opens, "csi_oxide/oxide/transport.py") == set()
    assert banned_names("import subprocess\n", "csi_oxide_lab/harness.py") == set()


def test_exemptions_are_the_stated_ones() -> None:
    assert sorted(exempt_globs()) == sorted(OWNED)


@pytest.mark.parametrize("glob", sorted(OWNED))
def test_each_exempt_file_needs_its_exemption_and_uses_only_its_library(glob: str) -> None:
    files = [p for p in source_files() if fnmatch.fnmatch(str(p.relative_to(ROOT)), glob)]
    assert files, f"{glob} matches no file: drop the exemption"
    for path in files:
        # Linted under a name without exemptions: what it would be refused.
        used = banned_names(path.read_text(), "csi_oxide/layer_probe.py")
        rel = path.relative_to(ROOT)
        assert used, f"{rel} uses nothing its exemption allows: drop the exemption"
        assert used <= OWNED[glob], f"{rel} uses {sorted(used - OWNED[glob])} outside its layer"


def test_no_file_of_the_packages_imports_an_http_library() -> None:
    """The driver has one HTTP client, its own carrier, and the lab ships in the same wheel with
    the driver's dependencies only: no module of either imports httpx (nor its transport,
    httpcore) or aiohttp, not even in a function or under TYPE_CHECKING, where an exempt file's
    lint would not look."""
    for path in source_files():
        used = {n for n in imports_of(path) if n.split(".")[0] in ("httpx", "httpcore", "aiohttp")}
        assert not used, f"{path.relative_to(ROOT)} imports {sorted(used)}"


def imports_of(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from M import N`` counts as M and M.N)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


# The driver's only ways into the lab: the command line hands ``sim`` and ``demo`` over.
DRIVER_INTO_THE_LAB = {
    "csi_oxide.cli": {
        "csi_oxide_lab.sim",
        "csi_oxide_lab.sim.cli",
        "csi_oxide_lab.demo",
        "csi_oxide_lab.demo.main",
    }
}


def lab_imports(path: Path) -> set[str]:
    return {n for n in imports_of(path) if n == "csi_oxide_lab" or n.startswith("csi_oxide_lab.")}


def test_the_driver_imports_nothing_of_the_lab_but_its_two_commands() -> None:
    for path in sorted(ROOT.glob("csi_oxide/**/*.py")):
        module = module_of(path)
        used = lab_imports(path) - DRIVER_INTO_THE_LAB.get(module, set())
        assert not used, f"{module} imports {sorted(used)} of the lab"
    assert lab_imports(ROOT / "csi_oxide/cli.py") == DRIVER_INTO_THE_LAB["csi_oxide.cli"]


def test_a_driver_import_of_the_lab_is_seen(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from csi_oxide_lab.harness import Harness\n")
    assert lab_imports(probe) == {"csi_oxide_lab.harness", "csi_oxide_lab.harness.Harness"}


def test_nothing_in_the_lab_imports_the_test_support() -> None:
    """``csi_oxide_lab.testing`` (and what only it uses: the in-process requests of
    ``csi_oxide_lab.asgi``, the simulator's in-process helpers) serve tests, benchmarks and
    scripts only: the simulator, the guest rack, the demo and the harness run without them."""
    support = {"csi_oxide_lab.testing", "csi_oxide_lab.asgi", "csi_oxide_lab.sim.inprocess"}
    for path in source_files():
        module = module_of(path)
        if module in support:
            continue
        used = support & imports_of(path)
        assert not used, f"{module} imports {sorted(used)}"


# ---- the node plugin never reaches the Oxide layer ----

# What the node plugin runs: its data path, and the server modules and shared parts it serves
# with. (The command line and wiring import the controller's side only in its modes; the running
# processes are checked in tests/test_footprint.py.)
NODE_SIDE = {
    "csi_oxide.server.node",
    "csi_oxide.server.app",
    "csi_oxide.server.identity",
    "csi_oxide.server.liveness",
    "csi_oxide.server.registration",
    "csi_oxide.daemon.metrics",
    "csi_oxide.daemon.health",
    "csi_oxide.contract.nodeid",
}
NOT_FOR_THE_NODE = (
    "csi_oxide.oxide",
    "csi_oxide.controller",
    "csi_oxide.server.controller",
    "csi_oxide_lab",
)


def forbidden_reach(start: set[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """The ``forbidden`` modules (a package and all under it) that ``start`` imports, directly or
    through other modules (any import counts: in a function, under TYPE_CHECKING), each with
    the modules that import it."""
    from tests.lab.sim.test_imports import graph

    edges = graph(start)
    reached = set(edges) | {m for targets in edges.values() for m in targets}
    bad = sorted(m for m in reached if any(m == f or m.startswith(f + ".") for f in forbidden))
    return {m: sorted(src for src, targets in edges.items() if m in targets) for m in bad}


def test_the_node_side_imports_neither_the_oxide_layer_nor_the_controller() -> None:
    from tests.lab.sim.test_imports import PACKAGE_DIR, module_name

    node = {module_name(p) for p in (PACKAGE_DIR / "node").glob("*.py")}
    assert "csi_oxide.node.ops" in node
    found = forbidden_reach(node | NODE_SIDE, NOT_FOR_THE_NODE)
    assert found == {}, f"the node side reaches (module: its importers) {found}"


def test_a_node_side_import_of_the_oxide_layer_is_seen() -> None:
    # wiring builds both sides, so it reaches both; through it, the check sees the Oxide layer.
    found = forbidden_reach({"csi_oxide.wiring"}, NOT_FOR_THE_NODE)
    assert "csi_oxide.oxide.client" in found
    assert "csi_oxide.wiring" in found["csi_oxide.controller.ops"]


def test_no_module_of_the_package_imports_in_a_circle() -> None:
    from tests.lab.sim.test_imports import find_cycle, graph, module_name

    generated = {"_csi", "_pluginregistration"}
    modules = {module_name(p) for p in source_files() if not generated & set(p.parts)}
    edges = graph(modules)
    inner = {m: {t for t in ts if t in modules} for m, ts in edges.items() if m in modules}
    assert len(inner) > 50  # the whole package was read
    assert find_cycle(inner) is None, find_cycle(inner)


# ---- the per-volume guard: in the ops layer of both services, never in a servicer ----

# What a servicer module may take from csi_oxide.daemon.inflight: the call's deadline, handed
# down by the interceptor. Never the guard itself.
SERVER_MAY_USE_FROM_INFLIGHT = {"rpc_deadline", "current_deadline"}
# Where an InFlight is built: wiring (the daemon) and the test support.
BUILDS_GUARDS = {"csi_oxide/wiring.py", "csi_oxide_lab/testing.py"}


def guard_uses(source: str) -> set[str]:
    """What ``source`` uses of the per-volume guard: names imported from csi_oxide.daemon.inflight
    beyond the deadline helpers, and any mention of ``InFlight`` or an ``inflight`` attribute."""
    used: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "csi_oxide.daemon.inflight":
            used |= {a.name for a in node.names} - SERVER_MAY_USE_FROM_INFLIGHT
        elif isinstance(node, ast.Import):
            used |= {a.name for a in node.names if a.name == "csi_oxide.daemon.inflight"}
        elif isinstance(node, ast.Name) and node.id == "InFlight":
            used.add("InFlight")
        elif isinstance(node, ast.Attribute) and "inflight" in node.attr.lower():
            used.add(node.attr)
    return used


def test_a_servicer_that_takes_a_guard_is_caught() -> None:
    assert guard_uses("from csi_oxide.daemon.inflight import InFlight\n") == {"InFlight"}
    assert guard_uses("import csi_oxide.daemon.inflight\n") == {"csi_oxide.daemon.inflight"}
    assert guard_uses("async def f(self):\n    await self._inflight.run([], '', g())\n") == {
        "_inflight"
    }
    assert guard_uses("from csi_oxide.daemon.inflight import rpc_deadline\n") == set()


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csi_oxide/server/*.py"))
)
def test_no_servicer_takes_the_per_volume_guard(path: str) -> None:
    """Both services take their guard in the ops layer (ControllerOps, NodeOps), which also
    checks the volume IDs; the server layer parses, validates and makes one call."""
    assert guard_uses((ROOT / path).read_text()) == set(), path


def test_the_guard_is_built_only_in_wiring() -> None:
    builders = set()
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "InFlight"
            ):
                builders.add(str(path.relative_to(ROOT)))
    assert builders == BUILDS_GUARDS
