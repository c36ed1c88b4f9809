"""The one skip rule (``tests/skips.py``): in development a test that cannot run here skips with
its reason; in CI (``CI`` set) one that CI must run fails instead, a missing tool included; the
opt-in modules stay skipped with their reason unless their variable is set, CI or not."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from csi_oxide.host import tools
from tests import conftest, skips

ROOT = Path(__file__).resolve().parents[1]
NO_SUCH_TOOL = "csi-oxide-no-such-tool"


@pytest.fixture
def dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")


@pytest.mark.parametrize(
    ("value", "meant"),
    [("true", True), ("1", True), ("yes", True), ("", False), ("0", False), ("false", False)],
)
def test_ci_is_any_value_of_ci_that_does_not_turn_it_off(
    monkeypatch: pytest.MonkeyPatch, value: str, meant: bool
) -> None:
    monkeypatch.setenv("CI", value)
    assert skips.in_ci() is meant


@pytest.mark.usefixtures("dev")
def test_in_development_an_unavailable_prerequisite_skips_with_its_reason() -> None:
    with pytest.raises(pytest.skip.Exception, match="needs the moon"):
        skips.unavailable("needs the moon")


@pytest.mark.usefixtures("ci")
def test_in_ci_an_unavailable_prerequisite_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match="needs the moon; CI is set"):
        skips.unavailable("needs the moon")


@pytest.mark.usefixtures("dev")
def test_in_development_a_missing_tool_skips_naming_it_and_how_to_get_it() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped:
        skips.need_tools("sh", NO_SUCH_TOOL, install="apt-get install it")
    assert str(skipped.value) == (
        f"needs {NO_SUCH_TOOL}, which is not installed here (apt-get install it)"
    )


@pytest.mark.usefixtures("ci")
def test_in_ci_a_missing_tool_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match=f"needs {NO_SUCH_TOOL}.*CI is set"):
        skips.need_tools(NO_SUCH_TOOL)


@pytest.mark.usefixtures("ci")
def test_installed_tools_pass_in_ci_too() -> None:
    skips.need_tools("sh")  # no exception


def test_sbin_tools_are_found_off_a_users_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the node finds them: a Debian user's PATH lacks /usr/sbin (losetup, blkid, mkfs.*)."""
    monkeypatch.setattr(tools, "SBIN_DIRS", ("/bin",))
    monkeypatch.setenv("PATH", "/nowhere")
    assert skips.missing_tools("sh", NO_SUCH_TOOL) == [NO_SUCH_TOOL]


@pytest.mark.usefixtures("ci")
def test_the_what_ci_is_not_asked_for_skips_in_ci_too() -> None:
    with pytest.raises(pytest.skip.Exception, match="no sidecars"):
        skips.skip("no sidecars")
    mark = skips.skip_if("no qemu")
    assert mark.args == (True,) and mark.kwargs["reason"] == "no qemu"
    assert skips.skip_if(None).args == (False,)


@pytest.mark.parametrize("ci_value", ["", "true"])
def test_an_opt_in_module_is_skipped_unless_its_variable_is_set_ci_or_not(
    monkeypatch: pytest.MonkeyPatch, ci_value: str
) -> None:
    monkeypatch.setenv("CI", ci_value)
    monkeypatch.delenv("CSI_OXIDE_SOMETHING", raising=False)
    gate = skips.opt_in("CSI_OXIDE_SOMETHING", "make something runs it")
    assert gate.args == (True,)
    assert gate.kwargs["reason"] == "opt-in: make something runs it (CSI_OXIDE_SOMETHING=1)"
    monkeypatch.setenv("CSI_OXIDE_SOMETHING", "1")
    assert skips.opt_in("CSI_OXIDE_SOMETHING", "x").args == (False,)


class _Item:
    """What ``pytest_runtest_setup`` asks of a test item: its marks."""

    def __init__(self, *marks: pytest.Mark) -> None:
        self.marks = marks

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((m for m in self.marks if m.name == name), None)

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [m for m in self.marks if m.name == name]

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks = (*self.marks, mark.mark)


def _setup(*marks: pytest.MarkDecorator) -> None:
    conftest.pytest_runtest_setup(_Item(*(m.mark for m in marks)))  # type: ignore[arg-type]


@pytest.mark.parametrize("ci_value", ["", "true"])
def test_the_root_mark_skips_without_root_in_development_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci_value: str
) -> None:
    monkeypatch.setenv("CI", ci_value)
    monkeypatch.setattr(skips, "root_reason", lambda: "needs root (loop devices, mkfs, mount)")
    expected = pytest.fail.Exception if ci_value else pytest.skip.Exception
    with pytest.raises(expected, match="needs root"):
        _setup(pytest.mark.root)
    _setup()  # an unmarked test runs anywhere
    monkeypatch.setattr(skips, "root_reason", lambda: None)
    _setup(pytest.mark.root)  # root here: it runs


@pytest.mark.parametrize("ci_value", ["", "true"])
def test_the_tools_mark_skips_without_the_tool_in_development_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, ci_value: str
) -> None:
    monkeypatch.setenv("CI", ci_value)
    expected = pytest.fail.Exception if ci_value else pytest.skip.Exception
    with pytest.raises(expected, match=f"needs {NO_SUCH_TOOL}"):
        _setup(pytest.mark.tools("sh", NO_SUCH_TOOL))
    _setup(pytest.mark.tools("sh"))


@pytest.mark.parametrize("ci_value", ["", "true"])
def test_in_development_marked_tests_are_skipped_at_collection_and_in_ci_they_are_kept(
    monkeypatch: pytest.MonkeyPatch, ci_value: str
) -> None:
    """Skipped at collection, the skip is reported at the test; in CI the test is kept, to
    fail at its set-up."""
    monkeypatch.setenv("CI", ci_value)
    monkeypatch.setattr(skips, "root_reason", lambda: None)
    lacking = _Item(pytest.mark.tools(NO_SUCH_TOOL).mark)
    fine = _Item(pytest.mark.root.mark, pytest.mark.tools("sh").mark)
    conftest.pytest_collection_modifyitems([lacking, fine])  # type: ignore[list-item]
    added = [m for m in lacking.marks if m.name == "skip"]
    if ci_value:
        assert added == []
    else:
        assert [m.kwargs["reason"] for m in added] == [skips.tools_reason([NO_SUCH_TOOL])]
    assert [m.name for m in fine.marks] == ["root", "tools"]


def test_the_root_reason_names_what_is_missing() -> None:
    reason = skips.root_reason()
    if reason is not None:
        assert reason.startswith("needs ")


PROBE = """
import pytest

from tests import skips


@pytest.mark.tools("{tool}")
def test_marked_with_a_missing_tool():
    pass


def test_unavailable_inside():
    skips.unavailable("no widget here")


@skips.opt_in("CSI_OXIDE_PROBE_OPT_IN", "make probe runs it")
def test_opt_in():
    raise AssertionError("an opt-in test ran without its variable")


def test_runs():
    pass
"""


@pytest.mark.parametrize("ci_value", ["", "true"])
def test_a_run_reports_skips_with_reasons_in_development_and_failures_in_ci(
    tmp_path: Path, ci_value: str
) -> None:
    """End to end, in a pytest of its own with this suite's conftest: the summary a developer
    and CI see."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    root: r\n    tools(*names): t\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE.format(tool=NO_SUCH_TOOL)))
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": python_path, "CI": ci_value}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"),
            *("-p", "no:randomly", "-rsfE", "-q", "--rootdir", str(tmp_path)),
            *("-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_probe.py")),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert "opt-in: make probe runs it (CSI_OXIDE_PROBE_OPT_IN=1)" in out, out + done.stderr
    if ci_value:
        assert done.returncode == 1, out
        assert re.search(r"(?m)^(ERROR|FAILED) .*test_marked_with_a_missing_tool", out), out
        assert "test_unavailable_inside - Failed: no widget here; CI is set" in out, out
        assert "1 passed, 1 skipped" in out and "1 failed" in out and "1 error" in out, out
    else:
        assert done.returncode == 0, out
        assert f"needs {NO_SUCH_TOOL}, which is not installed here" in out, out
        assert "no widget here" in out
        assert "1 passed, 3 skipped" in out, out


# Ways of skipping that bypass the rule. Built from pieces so that this file does not match.
_BYPASSES = re.compile(
    "|".join(
        [
            r"pytest\.skip\(",
            "skip" + "if",
            "importor" + "skip",
            r"pytest\.mark\.skip\b",
            r"environ(?:\.get)?\(\s*[\"']CI[\"']|environ\[[\"']CI[\"']\]",
            "CSI_OXIDE_REQUIRE" + "_SANITY",
        ]
    )
)


def test_no_test_skips_on_its_own() -> None:
    """Every skip goes through ``tests/skips.py`` (or the ``root`` and ``tools`` marks, which
    ``tests/conftest.py`` applies with it): a test that skips by itself would skip quietly in CI
    too."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if (
            path.name in ("skips.py", "conftest.py", "test_skips.py")
            and path.parent == ROOT / "tests"
        ):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _BYPASSES.search(line) and "pytest.skip.Exception" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
