"""The core install (trio, trio-util, attrs) works without the extras.

Hypothesis comes with ``engine[testing]``, rich with ``engine[cli]``. A fresh
virtualenv per test would be slow, so each test runs a fresh interpreter in
which the extra's package is blocked: ``sys.modules[name] = None`` makes every
import of it fail as if it were not installed.
"""

from __future__ import annotations

import inspect
import json
import os
import pty
import subprocess
import sys

import pytest

import engine.testing
from tests.imports import ENGINE, REPO, all_imports, modules

# Modules that cannot work without an extra; everything else must import without both.
NEEDS_EXTRA = {
    **{f"engine.testing.{name}": "testing" for name in engine.testing.NEEDS_HYPOTHESIS},
    "engine.stress.live": "cli",  # the live view is rich; the command falls back to plain text
}
# `python -m engine` would run the command.
NOT_IMPORTED = {"engine.__main__"}


def kit_part(name: str) -> str:
    """The module itself, or for a module inside a package of the kit
    (``engine.testing.machine.base``) that package: what NEEDS_HYPOTHESIS lists."""
    return ".".join(name.split(".")[:3]) if name.startswith("engine.testing.") else name


def python_without(blocked: list[str], code: str, *args: str,
                   **kwargs: object) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=90, check=False,
                          **kwargs)  # type: ignore[call-overload]


@pytest.mark.layer1
def test_every_module_but_the_extras_own_imports_without_hypothesis_and_rich() -> None:
    names = sorted(set(modules(ENGINE)) - NOT_IMPORTED)
    proc = python_without(["hypothesis", "rich"], f"""
import importlib, json
failed = {{}}
for name in {names!r}:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = str(exc)
import engine
engine.open_pool, engine.Pool, engine.PoolConfig, engine.Retry, engine.WorkerCrashed
print(json.dumps(failed))
""")
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout)
    assert {kit_part(name) for name in failed} == set(NEEDS_EXTRA), failed
    for name, message in failed.items():
        if NEEDS_EXTRA[kit_part(name)] == "testing":
            assert f"{kit_part(name)} needs Hypothesis" in message
            assert "pip install 'engine[testing]'" in message


def kit_module(name: str) -> str:
    """The kit's submodule that ``engine.testing.<name>`` comes from."""
    value = getattr(engine.testing, name)
    module = value.__name__ if inspect.ismodule(value) else value.__module__
    return kit_part(str(module)).rpartition(".")[2]


@pytest.mark.layer1
def test_the_test_kit_without_hypothesis_names_the_extra_for_the_parts_that_need_it() -> None:
    proc = python_without(["hypothesis"], """
import json
import engine.testing
result = {}
for name in engine.testing.__all__:
    try:
        getattr(engine.testing, name)
        result[name] = "ok"
    except ImportError as exc:
        result[name] = str(exc)
print(json.dumps(result))
""")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    needs = engine.testing.NEEDS_HYPOTHESIS
    # Fakes, faults, fixtures and the driver work; the rest says what to install.
    assert {"FakeWorkerFactory", "Script", "inject_fault", "start_test_pool",
            "wait_for_pool_ready", "TrioDriver"} <= {n for n, r in result.items() if r == "ok"}
    for name, outcome in result.items():
        if kit_module(name) in needs:
            assert "pip install 'engine[testing]'" in outcome, (name, outcome)
        else:
            assert outcome == "ok", (name, outcome)


@pytest.mark.layer1
def test_needs_hypothesis_lists_exactly_the_kit_modules_that_import_it() -> None:
    found = all_imports(ENGINE)
    needs = {imp.source for imp in found
             if imp.runs_on_import and imp.top_level_name == "hypothesis"}
    # ... and whatever imports those, within the kit.
    while True:
        more = {imp.source for imp in found if imp.runs_on_import and imp.target in needs}
        if more <= needs:
            break
        needs |= more
    # A package of the kit is listed once, for all of its modules.
    assert {kit_part(name) for name in needs} \
        == {f"engine.testing.{name}" for name in engine.testing.NEEDS_HYPOTHESIS}


@pytest.mark.layer1
def test_campaign_without_hypothesis_is_one_clear_line_and_exit_2() -> None:
    proc = python_without(["hypothesis"], "from engine.cli import main\nsys.exit(main())",
                          "campaign", "--app", "myapp", "--minutes", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "engine campaign: needs Hypothesis, which this install lacks: "
        "pip install 'engine[testing]'"]
    assert proc.stdout == ""


STRESS = ("stress", "--workers", "1", "--clients", "2", "--calls", "30", "--seed", "1")
RUN_CLI = "from engine.cli import main\nsys.exit(main())"


@pytest.mark.layer3
def test_stress_without_rich_prints_a_plain_report() -> None:
    proc = python_without(["rich"], RUN_CLI, *STRESS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("engine stress: PASS  app=engine.workers.programs workers=1")
    assert "Invariants" in lines and any(line.startswith("  ok  every call ended")
                                         for line in lines)
    assert "[bold" not in proc.stdout and "[/]" not in proc.stdout  # no rich markup leaks
    assert "live display" not in proc.stderr  # not a terminal: nothing was asked for


@pytest.mark.layer3
def test_stress_on_a_terminal_without_rich_says_the_live_view_needs_the_cli_extra() -> None:
    # On a terminal the live view is asked for (unless --quiet).
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys\nsys.modules['rich'] = None\n" + RUN_CLI,
             *STRESS], cwd=REPO, stdout=follower, stderr=subprocess.PIPE, text=True)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
        _, err = proc.communicate(timeout=90)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, shown.decode(errors="replace") + err
    assert "the live display needs rich: pip install 'engine[cli]'" in err
    assert b"engine stress: PASS" in shown
