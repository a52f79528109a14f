"""Every test's time limit (pytest-timeout, ``timeout_method = "signal"``), made safe for Trio.

pytest-timeout's signal method raises from the SIGALRM handler in whatever frame
happens to run. Inside a Trio run that is usually the run loop itself: the run
dies half-way, its thread-local state stays behind (every later Trio test then
fails with "Attempted to call run() from inside a run()"), and the processes the
test started are neither killed nor waited for. So when the alarm finds a Trio
run in progress, this plugin makes that run crash the way Trio supports: an
exception from a ``run_sync_soon`` callback cancels every task, so nurseries
unwind and processes are killed and reaped. The test is reported as timed out.

Code outside a Trio run (a plain test, a guest-mode run between two ticks) is
interrupted by raising :class:`TimeLimitExceeded` in it. That is a
``BaseException``: ``except Exception`` in the code under test and Hypothesis's
shrinker both let it through, as they would a ``KeyboardInterrupt``. The alarm
repeats every :data:`REPEAT_SECONDS` until the test is over, so a run that ignores
its cancellation (a shielded wait) is interrupted again, the hard way (which
leaves that run's state behind: later Trio tests in the session then fail too,
but the session ends instead of stalling).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import pytest
import pytest_timeout
import trio

REPEAT_SECONDS = 10.0
_TRIO_CORE = os.path.join(os.path.dirname(trio.__file__), "_core", "")


class TimeLimitExceeded(BaseException):
    """Raised in a test that ran past its time limit."""


class _Alarm:
    def __init__(self, item: pytest.Item, settings: Any) -> None:
        self.item = item
        self.limit = float(settings.timeout)
        self.detect_debugger = not settings.disable_debugger_detection
        self.fired = False
        self.crashed_runs: list[trio.lowlevel.TrioToken] = []

    def on_alarm(self, signum: int, frame: FrameType | None) -> None:
        __tracebackhide__ = True
        if self.detect_debugger and pytest_timeout.is_debugging():
            return  # someone is stepping through the test (pytest-timeout does the same)
        self.fired = True
        signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS)
        try:
            token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            token = None
        if token is not None and token not in self.crashed_runs:
            # Signal-safe by design; the callback runs inside the run, between tasks.
            self.crashed_runs.append(token)
            token.run_sync_soon(self._crash_run)
            return
        # No Trio run here, or one still going REPEAT_SECONDS after it was told to
        # crash (a shielded wait): the hard way.
        raise TimeLimitExceeded(self.message)

    def _crash_run(self) -> None:
        _print_trio_tasks(self.item, self.limit)
        raise TimeLimitExceeded(self.message)

    @property
    def message(self) -> str:
        return (f"Timeout (>{self.limit:g}s): the test ran past its time limit (pytest-timeout; "
                "raise it for one test with @pytest.mark.timeout(seconds))")


def _print_trio_tasks(item: pytest.Item, limit: float) -> None:
    """Where each task of the run is parked: the first thing one wants to know of a hang."""
    writer = item.config.get_terminal_writer()
    writer.sep("+", f"Timeout (>{limit:g}s) in {item.nodeid}: Trio tasks")
    root = trio.lowlevel.current_root_task()
    pending = [root] if root is not None else []
    while pending:
        task = pending.pop()
        writer.line(f"task {task.name}:")
        for frame, lineno in task.iter_await_frames():
            if _TRIO_CORE in frame.f_code.co_filename:
                continue
            writer.line(f"    {frame.f_code.co_filename}:{lineno} in {frame.f_code.co_name}")
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    writer.sep("+")


_ALARM = pytest.StashKey[_Alarm]()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method
    alarm = _Alarm(item, settings)
    item.stash[_ALARM] = alarm
    signal.signal(signal.SIGALRM, alarm.on_alarm)
    signal.setitimer(signal.ITIMER_REAL, alarm.limit)
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    if item.stash.get(_ALARM, None) is None:
        return None
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    __tracebackhide__ = True
    try:
        result = yield
    except BaseException as exc:
        alarm = item.stash.get(_ALARM, None)
        if alarm is None or not alarm.fired:
            raise
        if isinstance(exc, TimeLimitExceeded):  # interrupted the hard way: show where
            raise pytest.fail.Exception(alarm.message) from exc
        # A crashed Trio run raises TrioInternalError around a tree of groups: noise.
        # Where each task was parked is in the captured output.
        raise pytest.fail.Exception(
            f"{alarm.message}; its Trio run was cancelled (where its tasks were parked: see "
            "the captured stdout)", pytrace=False) from None
    alarm = item.stash.get(_ALARM, None)
    if alarm is not None and alarm.fired:
        pytest.fail(alarm.message + "; the test swallowed the interruption", pytrace=False)
    return result


__all__ = ["TimeLimitExceeded", "pytest_runtest_call", "pytest_timeout_cancel_timer",
           "pytest_timeout_set_timer"]
