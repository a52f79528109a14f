"""A caller's bad per-call timeouts (layer 2): refused before anything is
reserved, with the same rules as the pool's own settings (found by a new-user
audit: ``timeout=-1`` said the worker was killed, NaN meant no timeout,
``"5"`` raised a bare TypeError from inside the pool, and
``checkout_timeout=0`` blamed starting workers while two sat idle)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import engine
from engine.testing.fakes import FakeWorkerFactory

pytestmark = pytest.mark.layer2

BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"timeout": -1}, ValueError, "timeout must be a positive number of seconds or None "
                                  "(the pool's call_timeout), got -1"),
    ({"timeout": 0}, ValueError, "got 0"),
    ({"timeout": math.nan}, ValueError, "got nan"),
    ({"timeout": "5"}, TypeError, "timeout must be a number of seconds or None (the pool's "
                                  "call_timeout), got str '5'"),
    ({"timeout": True}, TypeError, "got bool True"),
    ({"checkout_timeout": 0}, ValueError, "checkout_timeout must be a positive number of "
                                          "seconds or None (the pool's checkout_timeout)"),
    ({"checkout_timeout": -1.5}, ValueError, "got -1.5"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
async def test_a_bad_timeout_is_refused_before_a_worker_or_a_session_is_touched(
        kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    factory = FakeWorkerFactory()
    with trio.fail_after(10):
        async with engine.open_pool(worker_factory=factory, size=2) as pool:
            await pool.wait_ready(2)
            with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
                await pool.call("echo", 1, session="s", **kwargs)
            # Nothing was reserved: no request sent, no session bound.
            assert all(not w.requests for w in factory.workers)
            assert "s" not in pool.inspect().bindings
            assert await pool.call("echo", 2, session="s") == 2


async def test_checkout_and_run_sync_and_lease_calls_check_theirs_too() -> None:
    factory = FakeWorkerFactory()
    with trio.fail_after(10):
        async with engine.open_pool(worker_factory=factory, size=1) as pool:
            await pool.wait_ready()
            with pytest.raises(ValueError, match=r"^timeout must be a positive .*checkout_timeout"):
                async with pool.checkout(timeout=0):
                    pass
            with pytest.raises(ValueError, match=r"^timeout must .*call_timeout\), got -2"):
                await pool.run_sync(abs, -1, timeout=-2)
            async with pool.checkout() as lease:
                with pytest.raises(TypeError, match="got list"):
                    await lease.call("echo", 1, timeout=[1])  # type: ignore[arg-type]
                assert await lease.call("echo", 3) == 3  # the lease is still good
            assert pool.statistics().restarts == 0


async def test_a_pool_called_from_another_trio_run_refuses_at_once() -> None:
    """A thread that runs its own trio.run and calls the pool: refused before
    anything is touched, saying how to call from a thread (it used to raise a
    bare AssertionError, then hang; new-user audit), and the right way works."""
    factory = FakeWorkerFactory()
    errors: list[str] = []
    with trio.fail_after(10):
        async with engine.open_pool(worker_factory=factory, size=1) as pool:
            await pool.wait_ready()

            def thread() -> object:
                for attempt in (lambda: pool.call("ping"), lambda: pool.wait_ready()):
                    try:
                        trio.run(attempt)
                    except RuntimeError as exc:
                        errors.append(str(exc))
                return trio.from_thread.run(pool.call, "echo", 5)

            assert await trio.to_thread.run_sync(thread) == 5
            assert await pool.call("echo", 6) == 6
            assert pool.statistics().restarts == 0
    assert len(errors) == 2 and all("belongs to the Trio run that opened it" in e
                                    and "trio.from_thread.run(pool.call" in e for e in errors)
