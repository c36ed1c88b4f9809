"""The simulator's import graph, read from the source with ``ast``: it models Oxide on its own
(no import of the driver's understanding of Oxide, not even through another module) and its
modules import each other without a cycle. Every import counts: module level, inside functions and
under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import csi_oxide
import csi_oxide_lab

PACKAGE_DIR = Path(csi_oxide.__file__).resolve().parent
LAB_DIR = Path(csi_oxide_lab.__file__).resolve().parent
# The two packages of the distribution: the driver and its lab (one source root).
PACKAGES = {"csi_oxide": PACKAGE_DIR, "csi_oxide_lab": LAB_DIR}
FORBIDDEN = (
    "csi_oxide.oxide",
    "csi_oxide.controller",
    "csi_oxide.node",
    "csi_oxide.server",
    "csi_oxide.contract",
)


def module_file(module: str) -> Path | None:
    """The source file of a module of either package (None for anything else or a missing one)."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = PACKAGES[parts[0]].joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool) -> set[str]:
    """Every module ``source`` (the module ``module``) imports. ``from P import N`` counts as an
    import of ``P.N`` when that is a module, otherwise of ``P``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if module_file(sub) is not None else base)
    return found


def graph(modules: set[str]) -> dict[str, set[str]]:
    """What each module of ``modules``, and every module they reach, imports of the two
    packages."""
    edges: dict[str, set[str]] = {}
    todo = sorted(modules)
    while todo:
        name = todo.pop()
        if name in edges:
            continue
        path = module_file(name)
        assert path is not None, name
        targets = {
            m
            for m in imported_modules(path.read_text(), name, is_package=path.name == "__init__.py")
            if module_file(m) is not None
        }
        edges[name] = targets
        todo.extend(targets - edges.keys())
    return edges


def sim_modules() -> set[str]:
    return {module_name(p) for p in (LAB_DIR / "sim").glob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as a path whose last element equals its first, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found is not None:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found is not None:
                return found
    return None


def test_the_simulator_does_not_import_the_drivers_understanding_of_oxide() -> None:
    edges = graph(sim_modules())
    reached = set(edges) | {m for targets in edges.values() for m in targets}
    bad = sorted(m for m in reached if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    importers = {m: sorted(src for src, t in edges.items() if m in t) for m in bad}
    assert bad == [], f"the simulator reaches the driver's modules: {importers}"


def test_no_import_cycle_among_the_simulator_modules() -> None:
    sim = sim_modules()
    edges = graph(sim)
    inner = {m: {t for t in targets if t in sim} for m, targets in edges.items() if m in sim}
    assert find_cycle(inner) is None, find_cycle(inner)


# ---- the checks themselves can fail ----


def test_a_forbidden_import_is_seen_however_it_is_written() -> None:
    for source in (
        "import csi_oxide.oxide.types",
        "from csi_oxide.oxide.names import is_uuid",
        "from csi_oxide.contract import volumes",
        "def f():\n    from csi_oxide.server import errors\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from csi_oxide.node import fs\n",
    ):
        found = imported_modules(source, "csi_oxide_lab.sim.x.y", is_package=False)
        assert any(m.startswith(FORBIDDEN) for m in found), source


def test_a_forbidden_module_reached_through_another_module_is_seen() -> None:
    edges = graph({"csi_oxide.wiring"})  # the composition root reaches everything
    assert "csi_oxide.oxide.types" in edges or any(
        "csi_oxide.oxide.types" in t for t in edges.values()
    )


@pytest.mark.parametrize(
    ("edges", "cyclic"),
    [
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
    ],
)
def test_find_cycle(edges: dict[str, set[str]], cyclic: bool) -> None:
    found = find_cycle(edges)
    assert (found is not None) == cyclic
    if found is not None:
        assert found[0] == found[-1]
        assert all(b in edges[a] for a, b in itertools.pairwise(found))
