"""The pool through a launcher prefix, standing in for ``ssh host`` (layer 3).

``tests/apps/launcher.sh`` execs its argv, like most remote launchers do at the
far end; a second launcher keeps a shell *between* the pool and Python, like a
launcher that does not exec. Either way calls work, crashes are detected, and
closing the pool leaves no process behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

import engine
from engine.errors import AppStartFailed, WorkerCrashed
from tests.leaks import pid_alive

pytestmark = pytest.mark.layer3

LAUNCHER = str(Path(__file__).resolve().parents[1] / "apps" / "launcher.sh")
# A shell that stays in between: it runs Python as its child and exits with its status.
SHELL_IN_BETWEEN = ("sh", "-c", '"$@"; exit $?', "sh")
HANG_GUARD = 20.0
READY = 10.0


def test_launcher_script_is_executable() -> None:
    assert os.access(LAUNCHER, os.X_OK)


async def test_exec_launcher_calls_crashes_and_close() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, launcher=(LAUNCHER,)) as pool:
            await pool.wait_ready(2, timeout=READY)
            launched = set(pool.worker_pids())
            pythons = {(await pool.call("ping"))["pid"]}
            async with pool.checkout() as lease:
                pythons.add((await lease.call("ping"))["pid"])
                assert await lease.call("echo", [1, 2]) == [1, 2]
            # exec: the launcher's process became the Python worker.
            assert pythons <= launched
            with pytest.raises(WorkerCrashed) as info:
                await pool.call("crash", {"code": 7})
            assert info.value.exit_code == 7
            await pool.wait_ready(2, timeout=READY)
            assert pool.statistics().crashes == 1
            launched.update(pool.worker_pids())
        assert not [p for p in launched | pythons if pid_alive(p)]


async def test_launcher_that_stays_in_between() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, launcher=SHELL_IN_BETWEEN) as pool:
            await pool.wait_ready(2, timeout=READY)
            launchers = set(pool.worker_pids())
            async with pool.checkout() as lease:
                python = (await lease.call("ping"))["pid"]
                # The pool signals the launcher; Python is a process further down.
                assert python not in launchers and lease.pid == python
            pythons = {python}

            # Kill the Python behind the launcher in the middle of a call.
            async def kill_when_busy() -> None:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                os.kill(python, signal.SIGKILL)

            errors: list[WorkerCrashed] = []
            async with trio.open_nursery() as nursery, pool.checkout() as lease:
                # Most recently used first: the same worker again.
                assert lease.pid == python
                nursery.start_soon(kill_when_busy)
                try:
                    await lease.call("sleep", {"seconds": 30})
                except WorkerCrashed as exc:
                    errors.append(exc)
            assert len(errors) == 1
            # The shell reports its child's death as exit status 128 + 9.
            assert errors[0].exit_code == 128 + signal.SIGKILL
            await pool.wait_ready(2, timeout=READY)
            launchers.update(pool.worker_pids())
            for _ in range(4):
                pythons.add((await pool.call("ping"))["pid"])
        assert not [p for p in launchers | pythons if pid_alive(p)]


async def test_launcher_that_cannot_run_is_a_start_failure() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, launcher=("/nonexistent/launcher",),
                                    restart_backoff=(0.05, 0.1, 1.0)) as pool:
            with pytest.raises(AppStartFailed, match=r"^could not execute .*check the launcher"):
                await pool.wait_ready(1, timeout=0.5)
            assert pool.statistics().start_failures >= 1
