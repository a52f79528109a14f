"""An app that cannot start is reported at once, with its cause (issue 18, point 1).

Layer 2 over fake workers under a MockClock (times are virtual, compared with
``checkout_timeout`` as ratios); layer 3 with a real unimportable app.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

import engine
from engine.errors import AppStartFailed, PoolTimeout, WorkerStartError
from engine.pool.core import PoolCore, WaiterStatus, Wake
from engine.process.handle import SpawnRequest
from engine.testing.fakes import FakeWorkerFactory, Script

HANG_GUARD = 20.0
CHECKOUT = 30.0  # what a user who raised checkout_timeout would wait today
FAILS = Script(crash_before_hello=3)


def slot_of(request: SpawnRequest) -> int:
    return int(request.worker_id.rsplit("-", 1)[1].split(".", 1)[0])


@pytest.mark.layer1
def test_the_core_fails_every_queued_checkout_with_its_own_error() -> None:
    core = PoolCore(2, clock=lambda: 0.0)
    core.start()
    queued = [core.request(timeout=5.0), core.request("s", timeout=5.0)]
    core.take_actions()
    core.fail_queued(lambda: AppStartFailed(last=WorkerStartError("boom"), app="a",
                                            failures=1))
    assert all(w.status is WaiterStatus.FAILED for w in queued)
    assert isinstance(queued[0].error, AppStartFailed)
    assert queued[0].error is not queued[1].error  # each raise owns its traceback
    assert core.take_actions() == [Wake(queued[0].id), Wake(queued[1].id)]
    assert not core.queue
    core.check_invariants()


@pytest.mark.layer2
async def test_a_call_to_a_pool_that_cannot_start_fails_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(FAILS)
    # Retries after 1 s or more: a checkout that waited for one would show it.
    # (No breaker: its open state is tested in test_chaos.)
    async with engine.open_pool(size=2, worker_factory=factory, app="fake_app",
                                checkout_timeout=CHECKOUT, breaker_threshold=1000,
                                restart_backoff=(1.0, 2.0, 0.0)) as pool:
        began = trio.current_time()
        with pytest.raises(AppStartFailed) as info:
            await pool.call("ping")
        assert (trio.current_time() - began) / CHECKOUT < 0.1
        error = info.value
        assert error.app == "fake_app" and error.failures >= 2
        assert isinstance(error.__cause__, WorkerStartError)
        # The message begins with the cause, then the app and what to check.
        assert str(error).startswith(error.__cause__.reason)
        assert "'fake_app'" in str(error) and "check the launcher" in str(error)
        # New checkouts fail at once too, while the pool keeps retrying (the
        # first retry is immediate, the next ones come 1 s or more apart).
        await trio.sleep(0.1)
        began = trio.current_time()
        with pytest.raises(AppStartFailed):
            async with pool.checkout():
                pass  # pragma: no cover - never served
        assert trio.current_time() == began
        with pytest.raises(AppStartFailed):
            await pool.wait_ready()
        assert pool.statistics().start_failures >= 2


@pytest.mark.layer2
async def test_queued_checkouts_fail_when_the_last_start_fails(
        autojump_clock: trio.testing.MockClock) -> None:
    # Slow failures: the checkouts queue first, and fail when the starts do,
    # after one start attempt, not after checkout_timeout.
    factory = FakeWorkerFactory(Script(start_delay=1.0, crash_before_hello=3))
    outcomes: list[BaseException] = []

    async def call(pool: engine.Pool) -> None:
        try:
            await pool.call("ping")
        except AppStartFailed as exc:
            outcomes.append(exc)

    async with engine.open_pool(size=2, worker_factory=factory,
                                checkout_timeout=CHECKOUT) as pool:
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call, pool)
            with pytest.raises(AppStartFailed):
                await pool.wait_ready()
        assert len(outcomes) == 3
        assert (trio.current_time() - began) / CHECKOUT < 0.1
        assert not pool.inspect().queue
        pool.check_invariants()


@pytest.mark.layer2
async def test_a_pool_whose_app_is_fixed_serves_again(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    factory.plan.extend([FAILS, FAILS])  # the first start of each slot fails
    async with engine.open_pool(size=2, worker_factory=factory,
                                restart_backoff=(0.5, 1.0, 0.0)) as pool:
        with pytest.raises(AppStartFailed):
            await pool.call("ping")
        # Supervision goes on: the next starts succeed and the pool recovers.
        await pool.wait_until(lambda view: len(view.live_workers()) == 2)
        assert (await pool.call("ping"))["worker_id"]
        await pool.wait_ready(2)


@pytest.mark.layer2
async def test_one_failing_slot_does_not_fail_checkouts(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(lambda request: FAILS if slot_of(request) == 0
                                else Script(start_delay=0.5))
    async with engine.open_pool(size=2, worker_factory=factory) as pool:
        # Slot 0 failed before slot 1 said hello: the call waits for slot 1.
        assert (await pool.call("ping"))["worker_id"].startswith(f"{pool.label}-1.")
        await pool.wait_ready(1)


@pytest.mark.layer2
async def test_pool_timeout_with_no_busy_worker_does_not_blame_the_calls(
        autojump_clock: trio.testing.MockClock) -> None:
    # Starts slower than the checkout timeout: nobody is busy.
    factory = FakeWorkerFactory(Script(start_delay=10.0))
    async with engine.open_pool(size=1, worker_factory=factory, start_timeout=30.0,
                                checkout_timeout=1.0) as pool:
        with pytest.raises(PoolTimeout) as info:
            await pool.call("ping")
        assert info.value.busy == 0
        assert "shorten the calls" not in str(info.value)
        assert "no worker is busy" in str(info.value)
        with pytest.raises(PoolTimeout) as not_ready:
            await pool.wait_ready(timeout=1.0)
        assert "shorten the calls" not in str(not_ready.value)
        await pool.wait_ready(timeout=20.0)
        # Busy workers: the usual advice.
        async with pool.checkout():
            with pytest.raises(PoolTimeout) as busy:
                await pool.call("ping", checkout_timeout=1.0)
        assert busy.value.busy == 1 and "shorten the calls" in str(busy.value)


@pytest.mark.layer2
async def test_pool_timeout_names_the_last_start_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    # Slot 0 fails, slot 1 is still starting when the checkout times out.
    factory = FakeWorkerFactory(lambda request: FAILS if slot_of(request) == 0
                                else Script(start_delay=10.0))
    async with engine.open_pool(size=2, worker_factory=factory, start_timeout=30.0,
                                checkout_timeout=1.0) as pool:
        with pytest.raises(PoolTimeout) as info:
            await pool.call("ping")
        last = pool.inspect().last_start_error
        assert last is not None
        # The reason, with the worker's last stderr line (the decisive one when
        # the worker said nothing itself: second new-user audit).
        failure = f"{last.reason} (last stderr: {last.stderr_tail[-1]!r})"
        assert info.value.last_start_failure == failure
        assert f"last start failure: {failure}" in str(info.value)
        assert "crashing before its hello (code 3)" in failure
        assert info.value.__cause__ is last


@pytest.mark.layer3
async def test_an_unimportable_app_is_reported_at_once_with_its_cause() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app="no_such_module", size=2,
                                    checkout_timeout=CHECKOUT) as pool:
            began = trio.current_time()
            with pytest.raises(AppStartFailed) as info:
                await pool.call("ping")
            assert (trio.current_time() - began) / CHECKOUT < 0.5
            message = str(info.value)
            assert message.startswith("ModuleNotFoundError: No module named 'no_such_module'")
            assert "app 'no_such_module'" in message and "importable" in message
            assert "shorten" not in message
            assert info.value.remote_type == "ModuleNotFoundError"
            with pytest.raises(AppStartFailed):
                await pool.wait_ready()


@pytest.mark.layer3
async def test_an_app_whose_import_raises_is_reported_with_its_cause() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app="tests.apps.always_fails", size=1) as pool:
            with pytest.raises(AppStartFailed) as info:
                await pool.call("ping")
            assert str(info.value).startswith(
                "RuntimeError: always_fails: this app never starts")
            # Found and imported: its own code failed, so its name is not suspect.
            assert "check the error above, in the code of app 'tests.apps.always_fails'" \
                in str(info.value)
            assert "right module name" not in str(info.value)


@pytest.mark.layer3
async def test_an_app_importing_a_missing_module_is_not_blamed_for_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The advice follows the cause (new-user audit: a found app was told to
    check its module name): a missing dependency is named as such."""
    app = f"app_with_missing_dependency_{os.getpid()}"
    (tmp_path / f"{app}.py").write_text("import no_such_dependency_of_this_app\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers get the parent's sys.path
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=app, size=1) as pool:
            with pytest.raises(AppStartFailed) as info:
                await pool.wait_ready()
    message = str(info.value)
    assert message.startswith(
        "ModuleNotFoundError: No module named 'no_such_dependency_of_this_app'")
    assert f"app '{app}' was found, but a module it imports is not importable" in message
    assert "right module name" not in message
