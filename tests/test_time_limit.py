"""Every test runs under a time limit, and a hung test fails without stalling or breaking the run.

The limit comes from pyproject (pytest-timeout); :mod:`tests.time_limit` makes it
end a hung Trio test through Trio, so the processes it started are killed and
reaped and the next Trio test still runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.imports import REPO

HANGING_TESTS = '''
import os
import sys
import time

import trio

PID_FILE = os.path.join(os.path.dirname(__file__), "child.pid")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


async def test_hangs_in_trio_with_a_child_process() -> None:
    async with trio.open_nursery() as nursery:
        child = await nursery.start(trio.run_process, SLEEPER)
        with open(PID_FILE, "w") as f:
            f.write(str(child.pid))
        await trio.sleep_forever()


async def test_trio_still_works_and_the_child_was_reaped() -> None:
    await trio.lowlevel.checkpoint()
    with open(PID_FILE) as f:
        pid = int(f.read())
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # already reaped by Trio when the hung test was cancelled
    raise AssertionError(f"child {pid} of the timed-out test was not reaped")


def test_hangs_outside_trio() -> None:
    while True:
        time.sleep(0.05)


def test_the_run_goes_on() -> None:
    trio.run(trio.lowlevel.checkpoint)
'''


@pytest.mark.layer1
def test_every_test_has_a_time_limit(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) > 0
    assert pytestconfig.getini("timeout_method") == "signal"


@pytest.mark.layer3
def test_a_hung_test_fails_and_the_run_goes_on(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING_TESTS)
    (tmp_path / "conftest.py").write_text(
        "from tests.time_limit import (pytest_runtest_call, pytest_timeout_cancel_timer,\n"
        "                              pytest_timeout_set_timer)\n")
    (tmp_path / "pytest.ini").write_text(textwrap.dedent("""\
        [pytest]
        trio_mode = true
        timeout = 1
        timeout_method = signal
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=90, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 failed, 2 passed" in out, out
    summary = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert [line.partition(" - ")[0] for line in summary] == [
        "FAILED test_hanging.py::test_hangs_in_trio_with_a_child_process",
        "FAILED test_hanging.py::test_hangs_outside_trio"], out
    assert "Timeout (>1s): the test ran past its time limit" in out
    assert "its Trio run was cancelled" in out
    # Where the hung Trio test was parked, for whoever debugs it.
    assert "Trio tasks" in out and "in test_hangs_in_trio_with_a_child_process" in out
