"""The public test kit itself: fakes, faults, driver, fixtures, profiles, campaign."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import settings

import engine.testing
from engine import discovery, open_pool
from engine.client.shapes import parse_program_list
from engine.errors import (
    CallTimeout,
    PoolTimeout,
    ProtocolError,
    RemoteError,
    WorkerCrashed,
    WorkerStartError,
)
from engine.process.handle import SpawnRequest
from engine.testing.campaign import main as campaign_main
from engine.testing.campaign import run_campaign
from engine.testing.driver import DriverError, Stalled, TrioDriver
from engine.testing.fakes import FakeWorker, FakeWorkerFactory, Script
from engine.testing.faults import inject_fault
from engine.testing.fixtures import start_test_pool, wait_for_pool_ready
from engine.testing.profiles import load_profile, scaled

REQUEST = SpawnRequest(worker_id="fake-0.1", app="fake", start_timeout=5.0)


# --- fake workers (layer 2) ------------------------------------------------------------


@pytest.mark.layer2
async def test_fake_speaks_the_protocol_and_keeps_session_state(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory()
    async with factory(REQUEST) as worker:
        assert worker.hello.worker_id == "fake-0.1" and "echo" in worker.hello.commands
        assert await worker.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert (await worker.call("ping"))["worker_id"] == "fake-0.1"
        await worker.call("create_program", {"id": "p"}, session="s")
        assert [p["id"] for p in (await worker.call("list_programs", session="s"))["programs"]] \
            == ["p"]
        assert (await worker.call("list_programs", session="other"))["total_count"] == 0
        with pytest.raises(RemoteError, match="boom"):
            await worker.call("fail", {"message": "boom"})
        with pytest.raises(RemoteError, match="UnknownCommand"):
            await worker.call("nope")
        assert worker.is_alive() and not worker.dirty
    assert worker.reaped and worker.exit_info is not None
    assert worker.exit_info.exit_code == 0  # shutdown + stdin EOF: a clean exit
    assert factory.workers == [worker] and factory.unreaped == []


@pytest.mark.layer2
async def test_kill_is_immediate_and_wakes_the_call_in_flight(
        autojump_clock: trio.testing.MockClock) -> None:
    async with FakeWorkerFactory()(REQUEST) as worker:
        outcome: list[BaseException] = []

        async def hang() -> None:
            try:
                await worker.call("hang")
            except WorkerCrashed as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang)
            await trio.testing.wait_all_tasks_blocked()
            started = trio.current_time()
            worker.kill()
            assert not worker.is_alive()
        assert trio.current_time() == started  # woken at once, no time passed
        assert len(outcome) == 1 and outcome[0].signal == 9
        assert worker.exit_info is not None and worker.exit_info.signal == 9


@pytest.mark.layer2
@pytest.mark.parametrize(("script", "match"), [
    (Script(crash_before_hello=3), "exited with code 3 before its hello"),
    (Script(bad_hello=True), "bad hello"),
    (Script(start_delay=10.0), "no hello within start_timeout=5s"),
])
async def test_failed_starts_are_worker_start_errors(
        script: Script, match: str, autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(script)
    with pytest.raises(WorkerStartError, match=match):
        async with factory(REQUEST):
            pytest.fail("the worker must not start")
    assert factory.unreaped == [] and not factory.workers[0].is_alive()


@pytest.mark.layer2
async def test_start_delay_and_crash_after_hello_follow_the_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script(start_delay=2.0, crash_after=3.0, crash_code=9))
    before = trio.current_time()
    async with factory(REQUEST) as worker:
        assert trio.current_time() - before == pytest.approx(2.0)
        info = await worker.wait_exited()
        assert info.exit_code == 9
        assert trio.current_time() - before == pytest.approx(5.0)
        with pytest.raises(WorkerCrashed, match="exited with code 9"):
            await worker.call("ping")


@pytest.mark.layer2
@pytest.mark.parametrize(("mode", "error"), [
    ("wrong_id", ProtocolError), ("garbage", ProtocolError), ("truncated", WorkerCrashed),
    ("crash", WorkerCrashed), ("hang", CallTimeout),
])
async def test_reply_modes(mode: Any, error: type[Exception],
                           autojump_clock: trio.testing.MockClock) -> None:
    async with FakeWorkerFactory(Script(reply_mode=mode))(REQUEST) as worker:
        with pytest.raises(error):
            await worker.call("echo", [1], timeout=1.0)
        assert worker.dirty or not worker.is_alive()


@pytest.mark.layer2
async def test_per_command_faults_leave_other_commands_alone(
        autojump_clock: trio.testing.MockClock) -> None:
    async with FakeWorkerFactory(Script(faults={"ping": "garbage"}))(REQUEST) as worker:
        assert await worker.call("echo", 1) == 1
        with pytest.raises(ProtocolError):
            await worker.call("ping")


@pytest.mark.layer2
@pytest.mark.parametrize("shape", ["map", "legacy"])
async def test_list_programs_as_map_or_legacy_list_normalise_alike(
        shape: Any, autojump_clock: trio.testing.MockClock) -> None:
    async with FakeWorkerFactory(Script(program_list=shape))(REQUEST) as worker:
        for program_id in ("a", "b"):
            await worker.call("create_program", {"id": program_id}, session="s")
        answer = await worker.call("list_programs", session="s")
    assert isinstance(answer, dict if shape == "map" else list)
    parsed = parse_program_list(answer)
    assert [p.id for p in parsed.programs] == ["a", "b"] and parsed.total_count == 2


@pytest.mark.layer2
async def test_factory_plan_scripts_the_next_spawns_of_a_pool(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory()
    factory.plan.append(Script(crash_before_hello=3))
    async with open_pool(worker_factory=factory, size=1, restart_backoff=(0.01, 0.1, 1.0)) \
            as pool:
        await wait_for_pool_ready(pool, 1, timeout=10)
        assert pool.statistics().start_failures == 1
        assert [w.script.crash_before_hello for w in factory.workers] == [3, None]
    assert factory.unreaped == [] and factory.alive == []


# --- fault injection (layer 2) ---------------------------------------------------------


@pytest.mark.layer2
async def test_kill_before_handoff_serves_the_waiter_with_another_worker(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory()
    async with start_test_pool(worker_factory=factory, size=2) as pool:
        with inject_fault("kill_before_handoff", times=1) as fault:
            answer = await pool.call("ping")
        assert fault.fired == 1 and fault.still_alive == 0
        killed = fault.worker_ids[0]
        assert answer["worker_id"] != killed
        assert not factory.worker(killed).is_alive()
        await wait_for_pool_ready(pool, 2, timeout=10)  # the dead one was replaced
        assert killed not in [w.worker_id for w in pool.inspect().live_workers()]


@pytest.mark.layer2
async def test_before_handoff_action_sees_the_selected_worker(
        autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[int, str]] = []
    async with start_test_pool(worker_factory=FakeWorkerFactory(), size=1) as pool:
        with inject_fault("before_handoff",
                          action=lambda p, slot, w: seen.append((slot, w.worker_id))):
            async with pool.checkout() as lease:
                assert seen == [(lease.slot, lease.worker_id)]


@pytest.mark.layer1
def test_inject_fault_rejects_misuse() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        with inject_fault("somewhere"):
            pass
    with pytest.raises(ValueError, match="needs an action"):
        with inject_fault("before_handoff"):
            pass
    with pytest.raises(ValueError, match="needs pool="):
        with inject_fault("kill_after_grant"):
            pass
    with inject_fault("kill_before_handoff"):
        with pytest.raises(RuntimeError, match="already injected"):
            with inject_fault("kill_before_handoff"):
                pass
    with inject_fault("kill_before_handoff"):  # the first one was cleaned up
        pass


# --- fixtures (layer 2) -----------------------------------------------------------------


@pytest.mark.layer2
async def test_start_test_pool_is_eager_named_registered_and_ready(
        autojump_clock: trio.testing.MockClock) -> None:
    async with start_test_pool(worker_factory=FakeWorkerFactory()) as pool:
        assert pool.name is not None and pool.name.startswith("test-pool-")
        assert discovery.whereis(pool.name) is pool
        assert pool.statistics().ready == 2 == pool.config.size
    assert pool.closed and discovery.whereis(pool.name) is None


@pytest.mark.layer2
async def test_wait_for_pool_ready_waits_for_a_replacement(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory()
    async with start_test_pool(worker_factory=factory, size=1) as pool:
        factory.plan.append(Script(start_delay=4.0))
        worker = pool.inspect().slots[0].worker
        assert isinstance(worker, FakeWorker)
        started = trio.current_time()
        worker.kill()
        ready = await wait_for_pool_ready(pool, 1, timeout=10)
        assert ready != [worker.worker_id]
        assert trio.current_time() - started >= 4.0  # it really waited for the slow start


@pytest.mark.layer2
async def test_wait_for_pool_ready_times_out_naming_the_start_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script(crash_before_hello=3))
    async with open_pool(worker_factory=factory, size=1) as pool:
        with pytest.raises(PoolTimeout, match="exited with code 3"):
            await wait_for_pool_ready(pool, 1, timeout=2)


# --- the guest-mode driver (layer 2) ----------------------------------------------------


@pytest.mark.layer2
def test_driver_pumps_spawned_tasks_and_moves_virtual_time() -> None:
    driver = TrioDriver(clock=trio.testing.MockClock())
    driver.start()

    async def later(x: int) -> int:
        await trio.sleep(5)
        return x * 2

    task = driver.spawn(later, 21)
    driver.pump()
    assert not task.done and driver.idle and driver.now() == 0
    driver.advance(4.9)
    assert not task.done
    driver.advance(0.2)
    assert task.done and task.result == 42
    blocked = driver.spawn(trio.Event().wait)
    with pytest.raises(Stalled):
        driver.pump(until=lambda: blocked.done)
    blocked.cancel()
    driver.pump()
    assert blocked.done and blocked.cancelled
    driver.close()
    assert driver.finished


@pytest.mark.layer2
def test_driver_records_task_errors_and_reraises_a_crash_of_the_run() -> None:
    class Crash(BaseException):
        pass

    driver = TrioDriver(clock=trio.testing.MockClock())
    driver.start()

    async def fails() -> None:
        raise ValueError("recorded, the run goes on")

    async def crashes() -> None:
        raise Crash

    failed = driver.spawn(fails)
    driver.pump()
    assert isinstance(failed.exception, ValueError)
    with pytest.raises(ValueError):
        _ = failed.result
    driver.spawn(crashes)
    with pytest.raises(BaseExceptionGroup) as caught:
        driver.close()
    assert caught.group_contains(Crash)


@pytest.mark.layer2
def test_driver_holds_a_pool_open_between_rules() -> None:
    driver = TrioDriver(clock=trio.testing.MockClock())
    driver.start()
    factory = FakeWorkerFactory()
    handle = driver.enter_handle(open_pool(worker_factory=factory, size=2))
    pool = handle.value
    driver.pump()
    assert pool.statistics().ready == 2
    call = driver.spawn(pool.call, "echo", [1])
    driver.pump()
    assert call.result == [1]
    handle.exit()
    assert pool.closed and factory.unreaped == []
    driver.close()


@pytest.mark.layer1
def test_driver_refuses_an_autojumping_clock_and_early_use() -> None:
    with pytest.raises(ValueError, match="without autojump"):
        TrioDriver(clock=trio.testing.MockClock(autojump_threshold=0))
    driver = TrioDriver()
    with pytest.raises(DriverError):
        driver.spawn(trio.sleep, 0)
    driver.close()  # never started: nothing to do


# --- public names and profiles (layer 1) ------------------------------------------------


@pytest.mark.layer1
def test_public_names_resolve() -> None:
    for name in engine.testing.__all__:
        assert getattr(engine.testing, name) is not None
    assert engine.testing.FakeWorkerFactory is FakeWorkerFactory
    with pytest.raises(AttributeError):
        _ = engine.testing.nothing_here  # type: ignore[attr-defined]


@pytest.mark.layer1
def test_profiles_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
        monkeypatch.setenv("CI", "true")
        assert load_profile() == "ci"
        assert settings.default is not None and settings.default.derandomize
        monkeypatch.delenv("CI")
        assert load_profile() == "dev"
        monkeypatch.setenv("HYPOTHESIS_PROFILE", "campaign")
        assert load_profile() == "campaign"
        assert scaled(max_examples=10).max_examples == 1000
        with pytest.raises(ValueError, match="unknown Hypothesis profile"):
            load_profile("no-such-profile")
    finally:
        monkeypatch.undo()
        load_profile()  # back to what the session uses


# --- campaigns (layer 3: real workers) ---------------------------------------------------


@pytest.mark.layer3
def test_campaign_passes_on_the_default_app() -> None:
    lines: list[str] = []
    result = run_campaign("engine.workers.programs", minutes=0.03, size=1, seed=7, batch=3,
                          steps=6, out=lines.append)
    assert result.passed and result.failure is None
    assert result.examples >= 3 and result.steps >= result.examples
    assert lines[-1].startswith(f"passed: {result.examples} examples, {result.steps} steps")


@pytest.mark.layer3
def test_campaign_reports_a_broken_app_with_its_step_sequence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    app = f"campaign_bad_echo_{os.getpid()}"
    (tmp_path / f"{app}.py").write_text(textwrap.dedent("""
        from engine.workers.app import App

        app = App("bad_echo")

        @app.command("echo")
        def echo(args, ctx):
            return {"wrapped": args}  # not the echo convention: the campaign notices
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.syspath_prepend(str(tmp_path))
    code = campaign_main(["--app", app, "--minutes", "0.2", "--size", "1", "--seed", "1",
                          "--batch", "20", "--steps", "8", "--commands", "echo",
                          "--no-shrink"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "found a failure" in out and "call 'echo': echoed" in out
    assert "state.checkout(" in out or "state.call(" in out
    sys.modules.pop(app, None)


@pytest.mark.layer3
def test_campaign_of_an_app_that_cannot_start_says_so_at_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the app's name: the cause (the import error) at once, exit 3,
    nothing run; it used to run examples against a pool that never became
    ready and report the driver's time-out after 80 s (new-user audit)."""
    code = campaign_main(["--app", "no_such_campaign_app", "--minutes", "1", "--size", "1"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "app 'no_such_campaign_app' cannot start, so nothing was run" in out
    assert "No module named 'no_such_campaign_app'" in out
    assert "examples" not in out  # no batch ran: the cause comes first, not a time-out


@pytest.mark.layer1
def test_campaign_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert campaign_main([]) == 2
    assert "--app" in capsys.readouterr().err
    assert campaign_main(["--app", "x", "--minutes", "0"]) == 2


@pytest.mark.layer1
def test_a_script_refuses_what_it_could_not_do() -> None:
    """A misspelt fault mode used to be accepted and ignored, so a test of "my
    code survives fault X" passed with no fault; an app-style handler failed
    only when called, with an unrelated error (second new-user audit)."""
    with pytest.raises(ValueError, match=r"Script.reply_mode='bogus' is not a reply mode; "
                                         r"the modes: crash, fragmented, garbage, hang"):
        Script(reply_mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Script.faults\['ping'\]='crsh' is not a reply mode"):
        Script(faults={"ping": "crsh"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"Script.start_delay must be >= 0 seconds, got -1"):
        Script(start_delay=-1)

    def app_style(args: Any, ctx: Any) -> Any:
        return args

    with pytest.raises(TypeError, match=r"Script.handlers\['add'\] must be `async def "
                                        r"handler\(ctx, args\)`.*an app's `def handler"):
        Script(handlers={"add": app_style})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="on_abandon"):
        Script(on_abandon="sometimes")  # type: ignore[arg-type]
    assert Script(faults={"ping": "garbage"}, start_delay=0.5).faults == {"ping": "garbage"}


@pytest.mark.layer3
async def test_the_kit_reports_an_app_that_cannot_start_at_once() -> None:
    """start_test_pool raised PoolTimeout after 20 s for an unimportable app,
    and pool_machine a DriverTimeout after a minute of settling (second
    new-user audit): both now give the pool's AppStartFailed, with its cause."""
    from engine.errors import AppStartFailed

    with trio.fail_after(30):
        with pytest.raises(AppStartFailed, match="No module named 'no_such_kit_app'"):
            async with start_test_pool(app="no_such_kit_app"):
                pass


@pytest.mark.layer3
def test_a_pool_machine_of_an_app_that_cannot_start_says_why() -> None:
    from hypothesis.stateful import run_state_machine_as_test

    from engine.errors import AppStartFailed
    from engine.testing.machine import pool_machine

    machine = pool_machine(workers="real", app="no_such_machine_app", sizes=(1,))
    with pytest.raises(AppStartFailed, match="No module named 'no_such_machine_app'"):
        run_state_machine_as_test(machine, settings=settings(
            max_examples=1, stateful_step_count=2, deadline=None, database=None))


@pytest.mark.layer1
def test_pool_machine_checks_its_arguments_and_calls_a_users_app_commands() -> None:
    """An app of yours has its declared commands called by default (a user's
    suite passed without ever reaching their handlers), and bad arguments
    fail when the machine is made, not at its first example (second new-user
    audit)."""
    from engine.testing.machine import pool_machine

    assert pool_machine(workers="real", app="myapp").call_declared is True
    assert pool_machine(workers="fake").call_declared is False  # the default app
    assert pool_machine(workers="real", app="myapp", call_declared=False).call_declared is False
    with pytest.raises(ValueError, match="unknown PoolConfig field"):
        pool_machine(bogus=1)
    with pytest.raises(ValueError, match=r"sizes must be pool sizes \(integers >= 1\)"):
        pool_machine(sizes=(0,))
    with pytest.raises(ValueError, match=r"PoolConfig\.cancel_grace"):
        pool_machine(cancel_grace=-1)
