"""run_sync: any picklable function on the supervised pool (issue 14).

Layer 3: real workers. Functions live in tests/apps/run_sync_functions.py (the
workers import them by name). Blocking functions announce that they started
on a FIFO and the tests wait for that line, never for a sleep; bounds on wall
time are generous hang guards or ratios.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import engine
from engine.errors import (
    ArgumentTypeError,
    CallTimeout,
    PickleNotAllowed,
    RemoteError,
    RemoteTraceback,
    RequestTooLarge,
    WorkerCrashed,
)
from tests.apps import run_sync_functions as fns
from tests.leaks import child_pids, pid_alive
from tests.pool.test_cancellation import StartMarker

pytestmark = pytest.mark.layer3

GUARD = 30.0  # real seconds: a hang fails the test; never a timing assertion
APP = "engine.workers.bare"


class Fifo(StartMarker):
    """A FIFO a function writes ``started <tag>`` lines to (or reads a line from)."""

    def write_line(self) -> None:
        os.write(self._keep, b"go\n")


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Fifo]:
    fifo = Fifo(tmp_path, "marker")
    yield fifo
    fifo.close()


@pytest.fixture
def release(tmp_path: Path) -> Iterator[Fifo]:
    fifo = Fifo(tmp_path, "release")
    yield fifo
    fifo.close()


@pytest.fixture(autouse=True)
def default_pool_of_two() -> Iterator[None]:
    engine.configure_default_pool(size=2, worker_output="discard")
    yield
    engine.configure_default_pool()


# --- the call ------------------------------------------------------------------------


async def test_returns_the_value_and_consecutive_calls_reuse_one_worker() -> None:
    with trio.fail_after(GUARD):
        assert await engine.run_sync(fns.add, 1, 2) == 3
        pids = {await engine.run_sync(fns.pid) for _ in range(5)}
        assert len(pids) == 1
        assert pids <= set((await engine.current_default_pool()).worker_pids())


async def test_the_function_sees_the_parents_sys_path() -> None:
    with trio.fail_after(GUARD):
        assert await engine.run_sync(fns.sys_path) == [os.fsdecode(p) for p in sys.path]


async def test_functools_partial_with_keyword_arguments() -> None:
    with trio.fail_after(GUARD):
        assert await engine.run_sync(functools.partial(fns.add, 1, c=100), 10) == 111


@pytest.mark.parametrize("value", [
    b"\x00\xffbytes", bytearray(b"ba"), {1, 2, 3}, frozenset({"a"}), (1, (2, 3)),
    {1: "one", (2, 3): b"two", None: 1.5}, [b"x", {4}], float("nan"), 2**200,
])
async def test_values_round_trip_unchanged(value: object) -> None:
    with trio.fail_after(GUARD):
        back = await engine.run_sync(fns.identity, value)
    assert type(back) is type(value)
    if value == value:  # NaN is not equal to itself
        assert back == value
    else:
        assert repr(back) == repr(value)


async def test_100_mb_of_bytes_round_trip() -> None:
    value = os.urandom(1024) * (100 * 1024)
    with trio.fail_after(GUARD * 2):
        back = await engine.run_sync(fns.identity, value)
    assert len(back) == len(value) and back == value


async def test_a_mib_to_stdout_and_stderr_in_one_call_returns() -> None:
    with trio.fail_after(GUARD):
        assert await engine.run_sync(fns.loud, 1024 * 1024) == 1024 * 1024
        assert await engine.run_sync(fns.add, 2, 2) == 4  # the protocol is intact


# --- errors --------------------------------------------------------------------------


async def test_the_functions_exception_has_its_own_type_and_args() -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(ValueError) as caught:
            await engine.run_sync(fns.raise_value_error, "bad", 42)
        assert type(caught.value) is ValueError
        assert caught.value.args == ("bad", 42)
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        printed = "".join(traceback.format_exception(caught.value))
        assert "in raise_value_error" in printed and "run_sync_functions.py" in printed

        with pytest.raises(fns.CustomError) as custom:
            await engine.run_sync(fns.raise_custom, 7, "detail")
        assert (custom.value.code, custom.value.detail) == (7, "detail")


async def test_an_exception_that_cannot_be_pickled_keeps_its_name_and_message() -> None:
    with trio.fail_after(GUARD):
        with pytest.raises(RemoteError) as caught:
            await engine.run_sync(fns.raise_unpicklable, "held a lock")
        assert caught.value.type == "Unpicklable"
        assert caught.value.remote_message == "held a lock"
        assert "in raise_unpicklable" in str(caught.value.__cause__)
        # Why it is not an Unpicklable here is said (new-user audit).
        [note] = caught.value.__notes__
        assert note.startswith("engine: the function raised Unpicklable, passed on as "
                               "RemoteError because it could not be pickled in the worker")


async def test_unpicklable_arguments_raise_typeerror_before_anything_is_sent() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            calls = pool.metrics().counters.get("calls_ok", 0)
            with pytest.raises(TypeError) as caught:
                await pool.run_sync(fns.identity, lambda: None)
            assert isinstance(caught.value, ArgumentTypeError)
            assert "cannot be pickled" in str(caught.value)
            assert pool.metrics().counters.get("calls_ok", 0) == calls  # nothing was sent
            assert await pool.run_sync(fns.pid) == before


async def test_a_value_that_is_not_callable_is_refused_before_anything_is_sent() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            calls = pool.metrics().counters.get("calls_ok", 0)
            with pytest.raises(ArgumentTypeError, match="42 is not callable"):
                await pool.run_sync(42)  # type: ignore[arg-type]  # pickles, but is no function
            assert pool.metrics().counters.get("calls_ok", 0) == calls
            assert await pool.run_sync(fns.pid) == before


@pytest.mark.parametrize("fn", [fns.asynchronous, fns.asynchronous_generator])
async def test_an_async_function_is_refused_and_none_of_it_runs(
        fn: Callable[..., object], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ran = tmp_path / "ran"
    args = (str(ran),) if fn is fns.asynchronous else ()
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1) as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(TypeError, match=f"{fn.__name__} is asynchronous") as caught:
                await pool.run_sync(fn, *args)
            assert "await it in the parent" in str(caught.value)
            assert await pool.run_sync(fns.pid) == before  # the worker lives
    assert not ran.exists()  # the coroutine's body never ran
    assert "never awaited" not in capfd.readouterr().err  # it was closed in the worker


async def test_a_function_reading_stdin_gets_eof_not_the_request_pipe() -> None:
    # Before the worker moved its requests off fd 0, input() blocked on the
    # request pipe (a hang: kill_on_cancel lets the guard end it).
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(EOFError):
                await pool.run_sync(input, kill_on_cancel=True)
            assert await pool.run_sync(fns.read_stdin, kill_on_cancel=True) == ""
            assert await pool.run_sync(fns.pid) == before  # no frame was lost


async def test_sys_exit_and_keyboardinterrupt_in_the_function_are_the_callers() -> None:
    # As trio.to_thread.run_sync: raised in the caller as themselves. The
    # worker does not exit: it keeps serving, with its sessions.
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            await pool.run_sync(fns.remember, "kept", session="s")
            before = await pool.run_sync(fns.pid)
            with pytest.raises(SystemExit) as exited:
                await pool.run_sync(fns.exit_with, 3)
            assert exited.value.code == 3
            assert "carries on" in "".join(getattr(exited.value, "__notes__", []))
            with pytest.raises(KeyboardInterrupt, match="raised by the function"):
                await pool.run_sync(fns.raise_keyboard_interrupt)
            assert await pool.run_sync(fns.pid) == before
            assert await pool.run_sync(fns.recall, session="s") == "kept"


async def test_an_unpicklable_result_raises_its_error_and_the_worker_lives() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(TypeError, match="lock"):
                await pool.run_sync(fns.return_lock)
            assert await pool.run_sync(fns.pid) == before


async def test_the_pickle_frame_limit_is_configurable() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard",
                                    max_pickle_frame_size=64 * 1024) as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(RequestTooLarge, match="max_pickle_frame_size"):
                await pool.run_sync(fns.identity, b"x" * 100_000)
            with pytest.raises(RemoteError, match="max_pickle_frame_size") as caught:
                await pool.run_sync(bytes, 100_000)  # a small call, a large result
            assert caught.value.type == "ResultTooLarge"
            assert await pool.run_sync(fns.pid) == before


async def test_a_function_that_kills_its_worker_raises_workercrashed_and_is_replaced() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(WorkerCrashed) as caught:
                await pool.run_sync(os._exit, 3)
            assert caught.value.exit_code == 3
            await pool.wait_ready(1, timeout=GUARD)
            assert await pool.run_sync(fns.pid) != before


async def test_a_worker_without_pickle_refuses_and_stays_untouched() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, allow_pickle=False,
                                    worker_output="discard") as pool:
            before = (await pool.call("ping"))["pid"]
            with pytest.raises(PickleNotAllowed, match="allow_pickle=True"):
                await pool.run_sync(fns.pid)
            assert (await pool.call("ping"))["pid"] == before


# --- cancellation ----------------------------------------------------------------------


class CancellableCall:
    """One call in its own task and cancel scope (see :func:`cancellable`):
    ``got`` receives its value, then "cancelled" or "not cancelled" once the
    task's next checkpoint has run."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.got: list[object] = []


@asynccontextmanager
async def cancellable(call: Callable[[], Awaitable[object]]) -> AsyncIterator[CancellableCall]:
    """Start ``call`` in a task; the block cancels it when it likes; leaving
    the block waits for the task."""
    handle = CancellableCall()

    async def caller() -> None:
        with handle.scope:
            handle.got.append(await call())
            await trio.lowlevel.checkpoint()
        handle.got.append("cancelled" if handle.scope.cancelled_caught else "not cancelled")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        yield handle


async def test_a_cancelled_scope_reserves_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ran"
    children = child_pids(settle=0)
    with trio.fail_after(GUARD):
        with trio.CancelScope() as scope:
            scope.cancel()
            await engine.run_sync(fns.touch, str(path))
        assert scope.cancelled_caught
        assert child_pids(settle=0) == children  # no default pool was started
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            await pool.wait_ready()
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.run_sync(fns.touch, str(path))
            assert scope.cancelled_caught
            assert pool.statistics().leases == 0
    assert not path.exists()


async def test_by_default_cancellation_waits_for_the_function(marker: Fifo,
                                                              release: Fifo) -> None:
    with trio.fail_after(GUARD):
        async with cancellable(lambda: engine.run_sync(
                fns.wait_for_release, marker.path, "w1", release.path)) as call:
            await marker.wait("w1")
            call.scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert call.got == []  # still waiting for the function
            release.write_line()
    assert call.got == ["released w1", "cancelled"]


async def test_a_long_wait_after_a_cancel_says_why(marker: Fifo, release: Fifo) -> None:
    """A cancel (a Ctrl-C, say) that the default run_sync does not act on
    while its function runs: after a second of waiting, a warning says why
    and what to pass instead (new-user audit: the wait looked like a hang)."""
    noticed = trio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "was cancelled while its function runs" in record.getMessage():
                seen.append(record)
                noticed.set()

    seen: list[logging.LogRecord] = []
    handler = Catch(logging.WARNING)
    logging.getLogger("engine.pool").addHandler(handler)
    try:
        with trio.fail_after(GUARD):
            async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
                async with cancellable(lambda: pool.run_sync(
                        fns.wait_for_release, marker.path, "n1", release.path)) as call:
                    await marker.wait("n1")
                    call.scope.cancel()
                    await noticed.wait()  # the function is still running
                    assert call.got == []
                    release.write_line()
                assert call.got == ["released n1", "cancelled"]
    finally:
        logging.getLogger("engine.pool").removeHandler(handler)
    [record] = seen
    assert "pass kill_on_cancel=True to kill its worker at once instead" in record.getMessage()


async def test_cancelled_while_its_large_argument_is_written_the_call_completes() -> None:
    """Default (kill_on_cancel=False): a cancel that lands while the request is
    still being written (20 MiB through a 64 KiB pipe) or read back does not cut
    the call: it completes on the same worker, and the caller's scope sees the
    cancel at its next checkpoint."""
    big = b"x" * (20 * 2**20)
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            async with cancellable(lambda: pool.run_sync(len, big)) as call:
                await trio.testing.wait_all_tasks_blocked()
                assert not call.got  # the call is under way
                call.scope.cancel()
            assert call.got == [len(big), "cancelled"]
            assert await pool.run_sync(fns.pid) == before
            assert pool.statistics().restarts == 0


async def test_kill_on_cancel_kills_the_worker_at_once_and_the_pool_replaces_it(
        marker: Fifo) -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            victim = await pool.run_sync(fns.pid)
            elapsed: list[float] = []
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await pool.run_sync(fns.sleep_after_announcing, marker.path, "k1",
                                            GUARD * 10, kill_on_cancel=True)
                    elapsed.append(trio.current_time() - cancelled_at)
                    assert scope.cancelled_caught

                nursery.start_soon(caller)
                await marker.wait("k1")
                cancelled_at = trio.current_time()
                scope.cancel()
            # Promptly: the function would sleep for GUARD * 10 seconds.
            assert elapsed[0] < GUARD / 10
            await pool.wait_ready(1, timeout=GUARD)
            replacement = await pool.run_sync(fns.pid)
            assert replacement != victim and not pid_alive(victim)


async def test_kill_on_cancel_before_the_call_starts_keeps_the_worker() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.run_sync(fns.pid, kill_on_cancel=True)
            assert await pool.run_sync(fns.pid) == before


async def test_a_timeout_interrupts_the_function_and_keeps_the_worker(marker: Fifo) -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=1, worker_output="discard") as pool:
            before = await pool.run_sync(fns.pid)
            with pytest.raises(CallTimeout):
                await pool.run_sync(fns.sleep_after_announcing, marker.path, "t1",
                                    GUARD * 10, timeout=0.5)
            await pool.wait_ready(1, timeout=GUARD)
            assert await pool.run_sync(fns.pid) == before


async def test_the_limiter_bounds_concurrent_calls(marker: Fifo, release: Fifo) -> None:
    limiter = trio.CapacityLimiter(1)
    spans: list[tuple[float, float]] = []
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                async def one() -> None:
                    spans.append(await engine.run_sync(fns.interval, 0.05, limiter=limiter))
                nursery.start_soon(one)
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    # Without a limiter, the default (one per worker) runs both workers at once:
    # each function waits for a line that is written only once both started.
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            for tag in ("a", "b"):
                nursery.start_soon(engine.run_sync, fns.wait_for_release, marker.path, tag,
                                   release.path)
            await marker.wait("a")
            await marker.wait("b")
            release.write_line()
            release.write_line()


async def test_a_limiter_that_is_not_one_is_a_clear_typeerror() -> None:
    # limiter=4 raised AttributeError: 'int' object has no attribute 'acquire_nowait'
    with trio.fail_after(GUARD):
        with pytest.raises(TypeError, match=r"trio\.CapacityLimiter \(say"):
            await engine.run_sync(fns.pid, limiter=4)  # type: ignore[arg-type]
        assert await engine.run_sync(fns.add, 1, 2) == 3  # the pool is unharmed


# --- sessions ----------------------------------------------------------------------------


async def test_a_function_reaches_its_sessions_state() -> None:
    with trio.fail_after(GUARD):
        async with engine.open_pool(app=APP, size=2, worker_output="discard") as pool:
            assert await pool.run_sync(fns.remember, "a's", session="a") == "a"
            await pool.run_sync(fns.remember, "b's", session="b")
            assert await pool.run_sync(fns.recall, session="a") == "a's"
            assert await pool.run_sync(fns.recall, session="b") == "b's"
            assert await pool.run_sync(fns.recall) is None
    with pytest.raises(RuntimeError, match="only inside a function"):
        fns.recall()


# --- the default pool's life ---------------------------------------------------------------


def test_the_default_pool_ends_with_the_run_and_leaves_no_process() -> None:
    pids: list[int] = []

    async def main() -> None:
        with trio.fail_after(GUARD * 2):  # a loaded machine starts workers slowly
            await engine.run_sync(fns.add, 1, 1)
            pool = await engine.current_default_pool()
            pids.extend(pool.worker_pids())  # the one that served, at least
            assert pool.config.size == 2

    trio.run(main)
    assert pids
    assert not any(pid_alive(pid) for pid in pids)
    assert not child_pids(settle=0)


def test_called_from_asyncio_the_engine_says_it_needs_a_trio_run() -> None:
    # anyio's default backend is asyncio: Trio's own error there was
    # "must be called from async context" (an AttributeError for open_pool).
    import asyncio

    async def call_run_sync() -> None:
        await engine.run_sync(fns.pid)

    async def open_a_pool() -> None:
        async with engine.open_pool(size=1):
            pass  # pragma: no cover - refused before

    for main, what in ((call_run_sync, "engine.run_sync"), (open_a_pool, "engine.open_pool")):
        with pytest.raises(RuntimeError, match=f"{what} runs inside a Trio run") as caught:
            asyncio.run(main())
        assert 'backend="trio"' in str(caught.value)
    assert not child_pids()  # nothing was started


def test_configure_default_pool_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="size"):
        engine.configure_default_pool(size=0)
    with pytest.raises(ValueError, match="unknown PoolConfig field"):
        engine.configure_default_pool(sise=2)


async def test_configure_default_pool_refuses_once_the_run_has_one() -> None:
    with trio.fail_after(GUARD):
        await engine.run_sync(fns.add, 1, 1)
    with pytest.raises(RuntimeError, match="before the run's first run_sync"):
        engine.configure_default_pool(size=3)


SCRIPT = '''
import engine, trio

class Point:
    def __init__(self, x):
        self.x = x

def double(point):
    return Point(point.x * 2)

async def main():
    engine.configure_default_pool(size=1, worker_output="discard")
    print((await engine.run_sync(double, Point(21))).x)

if __name__ == "__main__":
    trio.run(main)
'''


async def run_script(path: Path, text: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``text`` as a main script (``python path``) that imports engine."""
    await trio.Path(path).write_text(text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(engine.__file__).parent.parent), os.environ.get("PYTHONPATH"))
        if p)}
    with trio.fail_after(GUARD):
        return await trio.run_process([sys.executable, str(path)], capture_stdout=True,
                                      capture_stderr=True, env=env, check=False)


async def test_functions_and_classes_of_the_parents_main_script(tmp_path: Path) -> None:
    done = await run_script(tmp_path / "script.py", SCRIPT)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "42"


UNGUARDED = """
import engine, trio


def double(x):
    return 2 * x


async def main():
    print(await engine.run_sync(double, 21))


trio.run(main)  # no `if __name__ == "__main__":` guard
"""


async def test_a_main_script_without_the_guard_is_told_what_to_do(tmp_path: Path) -> None:
    """The worker runs the parent's script to find ``double``; without the guard
    the script starts its own pool there. That is refused with the fix in the
    message (a new user got 59 lines ending in "No module named '__mp_main__'")."""
    done = await run_script(tmp_path / "unguarded.py", UNGUARDED)
    err = done.stderr.decode()
    assert done.returncode != 0 and not done.stdout
    last = err.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: a run_sync worker ran the parent's main script ("), err
    assert 'under `if __name__ == "__main__":`' in last
    assert "__mp_main__" not in err.split("RuntimeError:")[-1]
