"""Layer 1: tools/soak-ci, the CI-reliability soak (issue 17): it names every
failing test by its id and fails when any run failed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.imports import REPO

pytestmark = pytest.mark.layer1

TOOL = REPO / "tools" / "soak-ci"


def load_tool() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("soak_ci", str(TOOL))
    spec = importlib.util.spec_from_loader("soak_ci", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_ci", module)  # dataclasses look their module up
    loader.exec_module(module)
    return module


tool = load_tool()


def root_here(tmp_path: Path) -> None:
    """Make ``tmp_path`` the inner run's rootdir, so test ids read
    ``test_soaked::...`` wherever pytest put the temporary directory (without
    an ini file there, the rootdir depended on the invocation and the ids on
    the temporary path: red in a soak, green in a plain run)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")


def test_the_tool_is_executable() -> None:
    assert TOOL.stat().st_mode & 0o111


def test_failures_are_read_from_the_junit_report_as_test_ids(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(textwrap.dedent("""\
        <testsuites><testsuite>
          <testcase classname="tests.test_errors" name="test_fine"/>
          <testcase classname="tests.pool.test_basic" name="test_one[4]">
            <failure message="AssertionError: 3 != 4&#10;more">trace</failure>
          </testcase>
          <testcase classname="tests.pool.test_basic.TestGroup" name="test_two">
            <error message="fixture broke">trace</error>
          </testcase>
        </testsuite></testsuites>"""))
    tests, failures = tool.read_report(report)
    assert tests == 3
    assert failures == [
        ("tests/pool/test_basic.py::test_one[4]", "failure: AssertionError: 3 != 4"),
        ("tests/pool/test_basic.py::TestGroup::test_two", "error: fixture broke"),
    ]


def test_a_missing_report_reads_as_nothing(tmp_path: Path) -> None:
    assert tool.read_report(tmp_path / "absent.xml") == (0, [])


def test_a_red_run_is_reported_with_its_test_id_and_fails_the_soak(tmp_path: Path) -> None:
    # A suite of its own, outside the repository (no conftest): one pass, one fail;
    # "-n 0" (after soak-ci's own "-n auto") keeps xdist from starting workers for it.
    (tmp_path / "test_soaked.py").write_text(
        "def test_green():\n    pass\n\ndef test_red():\n    assert 1 == 2, 'boom'\n")
    root_here(tmp_path)
    done = subprocess.run([sys.executable, str(TOOL), "2", "--python", sys.executable,
                           str(tmp_path / "test_soaked.py"), "-n", "0"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("FAILED test_soaked::test_red  failure: AssertionError: boom") == 2
    assert "run 1/2: RED, 2 tests, 1 failed" in done.stdout
    assert "soak: 2 runs, 0 green, 2 red" in done.stdout
    assert "test_soaked::test_red: failed in run(s) 1, 2" in done.stdout
    assert "test_green" not in done.stdout


def test_green_runs_exit_zero(tmp_path: Path) -> None:
    (tmp_path / "test_soaked.py").write_text("def test_green():\n    pass\n")
    root_here(tmp_path)
    done = subprocess.run([sys.executable, str(TOOL), "1", "--python", sys.executable,
                           str(tmp_path / "test_soaked.py"), "-n", "0"],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "soak: 1 runs, 1 green, 0 red" in done.stdout
