"""The repository stands alone: every document the code, the configuration and the docs point at
is in it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from tests import skips

ROOT = Path(__file__).resolve().parent.parent

# A path to a Markdown document or to the published API document, as code and config cite them.
_CITED = re.compile(r"[A-Za-z0-9_./-]*(?:[A-Za-z0-9_-]+\.md|oxide-api\.json)\b")
# A Markdown link's target (not a web address, not an in-page anchor).
_LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s#]+)(?:#[^)]*)?\)")
_SOURCES = ("csi_oxide", "tests", "scripts", "deploy", "pyproject.toml", "Makefile", "Dockerfile")


def _tracked() -> list[Path]:
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        skips.unavailable(f"not a git checkout: {done.stderr.strip()}")
    return [ROOT / line for line in done.stdout.splitlines() if (ROOT / line).is_file()]


def _exists(cited: str, files: list[Path]) -> bool:
    """Whether ``cited`` names a file of the repository: a path from its top (or from
    ``csi_oxide/``), or a bare file name that some file has."""
    cited = cited.lstrip("./")
    if "/" in cited:
        return any(
            rel == cited or rel.endswith("/" + cited)
            for rel in (path.relative_to(ROOT).as_posix() for path in files)
        )
    return any(path.name == cited for path in files)


def test_every_document_cited_in_code_and_config_exists() -> None:
    files = _tracked()
    sources = [p for p in files if p.relative_to(ROOT).parts[0] in _SOURCES]
    sources = [p for p in sources if p.suffix not in (".json", ".md") and p != Path(__file__)]
    missing = [
        f"{path.relative_to(ROOT)}: {cited}"
        for path in sources
        for cited in set(_CITED.findall(path.read_text(errors="replace")))
        if not _exists(cited, files)
    ]
    assert missing == []


def test_every_link_in_the_docs_resolves() -> None:
    files = _tracked()
    docs = [p for p in files if p.suffix == ".md" and p.relative_to(ROOT).parts[0] != "tests"]
    assert ROOT / "README.md" in docs
    missing = [
        f"{path.relative_to(ROOT)}: {target}"
        for path in docs
        for target in _LINK.findall(path.read_text())
        if not (path.parent / target).exists()
    ]
    assert missing == []


def test_the_cli_reference_is_the_clis_own_help() -> None:
    spec = importlib.util.spec_from_file_location("gen_cli_doc", ROOT / "scripts/gen_cli_doc.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (ROOT / "docs" / "cli.md").read_text() == generator.render(), (
        "docs/cli.md differs from the CLI's --help: run python scripts/gen_cli_doc.py"
    )


@pytest.mark.parametrize(
    "text", ["see NOWHERE-NOTES.md", "in docs/nowhere.md", "[x](gone.md)", "(oxide/oxide-api.json)"]
)
def test_a_dangling_reference_is_found(text: str) -> None:
    files = _tracked()
    cited = _CITED.findall(text)
    links = _LINK.findall(text)
    assert any(not _exists(c, files) for c in cited) or any(
        not (ROOT / target).exists() for target in links
    )
