"""A pool whose workers run through ssh, against a real sshd (layer 3).

Every test names its pool with ``marker`` and ends with no process carrying
it (the fixture checks /proc). The orphan cases measure how long a remote
worker outlives what ended it (printed with ``-s`` as ``[outlive]`` lines):

* the pool closes: the shutdown command and stdin EOF for an idle worker, the
  local ssh killed for a busy one;
* the local ssh client is killed: the far end loses its connection;
* the process running the pool is SIGKILLed: its ssh clients live on, and
  only stdin EOF reaches the busy workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import engine
from engine import telemetry
from engine.errors import PickleNotAllowed, SessionLost, WorkerCrashed, WorkerStartError
from engine.pool.lifecycle import WorkerState
from engine.stress.chaos import DeathLedger, kill_random_worker
from engine.testing.sshd import LoopbackSshd
from tests.leaks import pid_alive
from tests.remote.conftest import REPO, processes_with, record_outlive, seconds_until_gone

pytestmark = pytest.mark.layer3

HANG_GUARD = 30.0
READY = 20.0
# A remote worker must not outlive what ended it by more than this (the
# watchdog's stdin grace is 0.5 s; ssh and sshd tear down in milliseconds).
OUTLIVE_LIMIT = 3.0
NODE = os.uname().nodename

Launch = Callable[..., engine.Launcher]


async def test_calls_sessions_and_where_workers_run(launcher: Launch, marker: str) -> None:
    """One local slot and one remote slot: calls, sessions with affinity, health
    checks and recycling work through ssh, and introspection says which is which."""
    ssh = launcher()
    remote_probe = trio.Event()

    def on_health(event: Any, measurements: Any, metadata: Any) -> None:
        if metadata.get("pool") == marker and metadata.get("slot") == 1:
            remote_probe.set()

    telemetry.attach(f"test-{marker}", [telemetry.HEALTH_OK], on_health)
    try:
        with trio.fail_after(HANG_GUARD):
            async with engine.open_pool(size=2, name=marker, launchers=[(), ssh],
                                        health_interval=0.05, max_calls_per_worker=6) as pool:
                await pool.wait_ready(2, timeout=READY)
                slots = pool.inspect().slots
                local, remote = slots
                assert (local.remote, remote.remote) == (False, True)
                assert remote.remote_launcher == "ssh 127.0.0.1" == ssh.label
                assert local.host == remote.host == NODE  # the far end is this machine
                # The remote worker's pid is its host's; the pool's process is ssh.
                assert remote.os_pid is not None and remote.os_pid != remote.pid
                assert remote.local_pid == remote.os_pid and local.local_pid == local.pid
                assert sorted(pool.worker_pids()) == sorted([local.os_pid, remote.os_pid])
                stats = pool.statistics()
                assert stats.hosts == ((NODE, 2),) and stats.remote == 1

                # A session on the remote worker keeps its state there. A new
                # session binds to the free worker with the fewest sessions; a
                # health probe (every 0.05 s) may hold one worker for a moment,
                # so bind sessions until each worker has one, each try once
                # both are READY (not merely live: a soak run under load bound
                # 50 sessions in a row to one worker while the other was busy
                # with probes or being replaced).
                session_on: dict[int, str] = {}
                for n in range(50):
                    if len(session_on) == 2:
                        break
                    await pool.wait_until(
                        lambda v: all(s.state is WorkerState.READY for s in v.slots))
                    async with pool.checkout(session=f"s{n}") as lease:
                        session_on.setdefault(lease.slot, f"s{n}")
                assert sorted(session_on) == [0, 1]
                on_remote = session_on[1]
                program = {"id": "up", "signature": {"inputs": ["a"], "outputs": ["b"]},
                           "handler": "upper"}
                await pool.call("create_program", program, session=on_remote)
                for text in ("x", "yz"):
                    answer = await pool.call("execute_program",
                                             {"id": "up", "inputs": {"a": text}},
                                             session=on_remote)
                    assert answer == {"outputs": {"b": text.upper()}}
                async with pool.checkout(session=on_remote) as lease:
                    assert lease.slot == 1 and lease.pid == remote.pid
                    assert (await lease.call("ping"))["pid"] == remote.pid
                assert (await pool.call("list_programs", session=session_on[0]))[
                    "total_count"] == 0  # the local worker never saw it

                # Health probes reach the remote worker (they run on idle workers).
                await remote_probe.wait()

                # Recycling: max_calls_per_worker retires the remote worker (its
                # session is lost with it) and its replacement starts through ssh.
                generation = pool.inspect().slots[1].generation
                with pytest.raises(SessionLost):
                    for _ in range(10):
                        await pool.call("echo", 1, session=on_remote)
                view = await pool.wait_until(
                    lambda v: v.slots[1].generation > generation
                    and v.slots[1].state is WorkerState.READY)
                assert view.slots[1].remote and view.slots[1].pid != remote.pid
                pool.check_invariants()
            assert not processes_with(marker), "a worker outlived aclose()"
    finally:
        telemetry.detach(f"test-{marker}")


async def _replaced(pool: engine.Pool, before: Any) -> Any:
    """Wait until the slot of ``before`` (a SlotView) runs a new, ready worker."""
    return (await pool.wait_until(
        lambda v: v.slots[before.index].generation > before.generation
        and v.slots[before.index].state is WorkerState.READY)).slots[before.index]


async def test_a_remote_crash_says_what_ssh_reported(launcher: Launch, marker: str) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, name=marker, launcher=launcher()) as pool:
            await pool.wait_ready(1, timeout=READY)
            first = pool.inspect().slots[0]
            with pytest.raises(WorkerCrashed) as crash:
                await pool.call("crash", {"code": 7})
            error = crash.value
            # ssh passes the remote command's exit status on.
            assert error.exit_code == 7 and error.launcher == "ssh 127.0.0.1"
            assert error.host == NODE
            message = str(error)
            assert "a remote worker started through 'ssh 127.0.0.1'" in message
            assert "reported the remote command's exit status 7" in message

            # A remote worker killed by a signal: ssh says 255, as for its own
            # failures, and the report says that 255 can mean either.
            second = await _replaced(pool, first)
            remote_pid = second.pid
            assert remote_pid is not None

            async def kill_remote_when_busy() -> None:
                # Runs once pool.call below waits for its reply: the slot is busy.
                assert pool.inspect().slots[0].state is WorkerState.BUSY
                os.kill(remote_pid, signal.SIGKILL)  # only possible: the far end is here

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_remote_when_busy)
                with pytest.raises(WorkerCrashed) as crash:
                    await pool.call("sleep", {"seconds": 60})
            assert crash.value.exit_code == 255
            assert "status 255: ssh's own failure" in str(crash.value)
            await _replaced(pool, second)  # so the crash is counted
            assert pool.statistics().crashes == 2


async def _first_start_failure(launcher: engine.Launcher, marker: str) -> WorkerStartError:
    """Open a pool of one through ``launcher`` and return its first start failure
    (told by the pool's exit telemetry, not by waiting for a time-out)."""
    failed = trio.Event()

    def on_exit(event: Any, measurements: Any, metadata: Any) -> None:
        if metadata.get("pool") == marker and metadata["reason"].startswith("start failed"):
            failed.set()

    telemetry.attach(f"test-{marker}", [telemetry.WORKER_EXIT], on_exit)
    try:
        async with engine.open_pool(size=1, name=marker, launcher=launcher,
                                    restart_backoff=(5.0, 5.0, 0.0)) as pool:
            await failed.wait()
            error = pool.inspect().last_start_error
    finally:
        telemetry.detach(f"test-{marker}")
    assert isinstance(error, WorkerStartError)
    return error


async def test_start_failures_through_ssh_are_reported(sshd: LoopbackSshd, launcher: Launch,
                                                       marker: str) -> None:
    with trio.fail_after(HANG_GUARD):
        # ssh cannot connect: its own failure (255), its stderr in the report.
        options = list(sshd.client_options)
        options[options.index("-p") + 1] = "1"
        error = await _first_start_failure(launcher(options=tuple(options)), marker)
        assert error.exit_code == 255 and error.launcher == "ssh 127.0.0.1"
        assert "status 255: ssh's own failure" in str(error)
        assert "Connection refused" in str(error)

        # The interpreter is missing at the far end: the status of the command there.
        error = await _first_start_failure(launcher(python="/nonexistent/python3"), marker)
        assert error.exit_code == 127
        assert "reported the remote command's exit status 127" in str(error)
        assert "/nonexistent/python3" in str(error)  # the far end's stderr, through ssh


class _Blocking(logging.Handler):
    """Wakes a test when a worker's stderr line says it entered ``block``
    (with ``worker_output="log"``, the pool logs each line at INFO)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # Called in the Trio thread: the pool's stderr drain logs the line.
        if "] blocking in " in record.getMessage():
            self.entered.set()


@contextlib.contextmanager
def _watching_blocks() -> Iterator[_Blocking]:
    seen = _Blocking()
    worker_log = logging.getLogger("engine.worker")
    level = worker_log.level
    worker_log.setLevel(logging.INFO)
    worker_log.addHandler(seen)
    try:
        yield seen
    finally:
        worker_log.removeHandler(seen)
        worker_log.setLevel(level)


async def _busy_remote_pool(pool: engine.Pool, nursery: trio.Nursery,
                            seen: _Blocking) -> None:
    """Start a ``block`` call and return once the worker is inside the handler."""
    async def call_block() -> None:
        # The worker's end (the test's doing) or the pool's close ends the call.
        with pytest.raises((WorkerCrashed, engine.PoolClosed)):
            await pool.call("block", {})

    nursery.start_soon(call_block)
    await seen.entered.wait()


async def test_killing_the_local_ssh_ends_the_remote_worker(launcher: Launch,
                                                            marker: str) -> None:
    with _watching_blocks() as seen, trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, name=marker, launcher=launcher(),
                                    app="tests.apps.busy_marker", worker_output="log",
                                    call_timeout=None) as pool:
            await pool.wait_ready(1, timeout=READY)
            slot = pool.inspect().slots[0]
            assert slot.local_pid is not None and slot.pid is not None
            remote_pid = slot.pid
            with telemetry.capture([telemetry.WORKER_EXIT]) as exits:
                async with trio.open_nursery() as nursery:
                    await _busy_remote_pool(pool, nursery, seen)
                    os.kill(slot.local_pid, signal.SIGKILL)
                    outlive = await seconds_until_gone(f"{marker}-0.1", OUTLIVE_LIMIT)
                record_outlive("local ssh client SIGKILLed, remote worker busy", outlive)
                assert not pid_alive(remote_pid)
                # The slot is rebuilt through ssh (so the exit was reported).
                replacement = await _replaced(pool, slot)
            assert replacement.remote
            assert exits and exits[0].metadata["signal"] == signal.SIGKILL


async def test_closing_the_pool_ends_idle_and_busy_remote_workers(launcher: Launch,
                                                                  marker: str) -> None:
    with _watching_blocks() as seen, trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            async with engine.open_pool(size=2, name=marker, launcher=launcher(),
                                        app="tests.apps.busy_marker", worker_output="log",
                                        call_timeout=None, shutdown_grace=0.1) as pool:
                await pool.wait_ready(2, timeout=READY)
                assert len(processes_with(marker)) == 4  # 2 ssh clients, 2 workers
                await _busy_remote_pool(pool, nursery, seen)
            # aclose() waited for the local ssh clients; the far end follows.
            outlive = await seconds_until_gone(marker, OUTLIVE_LIMIT)
    record_outlive("pool closed (one idle, one busy remote worker)", outlive)


# The process that runs the pool in the SIGKILL test: two busy remote workers.
PARENT = """
import json, sys, trio, engine

spec = json.loads(sys.argv[1])

async def main():
    launcher = engine.Launcher.ssh("127.0.0.1", **spec["ssh"])
    async with engine.open_pool(size=2, name=spec["name"], launcher=launcher,
                                app="tests.apps.busy_marker", call_timeout=None) as pool:
        await pool.wait_ready(2, timeout=20)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.call, "block", {})

trio.run(main)
"""


async def test_sigkill_of_the_pools_process_ends_busy_remote_workers(
        sshd: LoopbackSshd, marker: str) -> None:
    spec = {"name": marker,
            "ssh": {"options": list(sshd.client_options), "python": sys.executable,
                    "workdir": str(REPO), "env": {"PYTHONPATH": str(REPO)}}}
    with trio.fail_after(HANG_GUARD):
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", PARENT, json.dumps(spec)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert parent.stderr is not None
        try:
            # The workers' "blocking in" lines, forwarded to the parent's stderr.
            text = b""
            while text.count(b"blocking in ") < 2:
                chunk = await parent.stderr.receive_some(4096)
                assert chunk, f"the pool's process ended early: {text.decode()}"
                text += chunk
            # 2 ssh clients, 2 workers (and the parent: its argv names the pool)
            assert len(set(processes_with(marker)) - {parent.pid}) == 4
            parent.send_signal(signal.SIGKILL)
            await parent.wait()
            outlive = await seconds_until_gone(marker, OUTLIVE_LIMIT)
        finally:
            if parent.returncode is None:
                parent.kill()
                await parent.wait()
            await parent.stderr.aclose()
    record_outlive("pool's process SIGKILLed, 2 busy remote workers", outlive)


async def test_chaos_signals_the_local_launcher_not_the_remote_pid(launcher: Launch,
                                                                   marker: str) -> None:
    """The stress runner's killer must never signal a remote pid: it kills the
    local ssh (a signal death of ssh); had it hit the remote interpreter, ssh
    would have exited 255."""
    with trio.fail_after(HANG_GUARD), telemetry.capture([telemetry.WORKER_EXIT]) as exits:
        async with engine.open_pool(size=1, name=marker, launcher=launcher()) as pool:
            await pool.wait_ready(1, timeout=READY)
            slot = pool.inspect().slots[0]
            ledger = DeathLedger()
            injection = kill_random_worker(pool, ledger, random.Random(0))
            assert injection is not None and injection.pid == slot.pid  # named as the pool does
            await pool.wait_until(lambda v: v.slots[0].generation > slot.generation
                                  and v.slots[0].state is WorkerState.READY)
    crashed = [e.metadata for e in exits if e.metadata["reason"].startswith("crashed")]
    assert crashed and crashed[0]["signal"] == signal.SIGKILL


async def test_the_stress_runner_with_chaos_on_a_pool_spread_over_hosts(
        launcher: Launch, marker: str) -> None:
    """Chaos kills the local ssh of remote workers, the runner's /proc checks
    skip remote pids, and every death is explained: the report is ok."""
    from engine.stress.runner import StressConfig, run_stress

    config = StressConfig(workers=2, clients=4, duration=3.0, seed=5, kill_every=0.6,
                          mix={"anon": 60, "session": 30},
                          pool_options={"launchers": [(), launcher()], "name": marker,
                                        "worker_output": "discard"})
    with trio.fail_after(HANG_GUARD * 2):
        report = await run_stress(config)
    failed = [i for i in report["invariants"] if not i["ok"]]
    assert report["ok"], failed
    assert report["deaths"]["injected"]["kill"] >= 2


async def test_the_stress_runner_knows_remote_sessions_live_on(launcher: Launch,
                                                               marker: str) -> None:
    """No chaos: every session stays bound to the remote worker, which the
    runner must count as alive by its own pid (not the local ssh's)."""
    from engine.stress.runner import StressConfig, run_stress

    config = StressConfig(workers=1, clients=2, duration=1.0, seed=7,
                          mix={"anon": 1, "session": 3},
                          pool_options={"launcher": launcher(), "name": marker,
                                        "worker_output": "discard"})
    with trio.fail_after(HANG_GUARD):
        report = await run_stress(config)
    assert report["ok"], [i for i in report["invariants"] if not i["ok"]]
    assert report["sessions"]["epochs"] > 0 and report["sessions"]["worker_died"] == 0


async def test_a_cancelled_call_on_a_remote_worker_keeps_it(launcher: Launch, marker: str,
                                                            tmp_path: Path) -> None:
    """Cooperative cancellation through ssh: the abandon frame alone reaches the
    worker (no signal crosses ssh, and none may be sent to the local ssh), its
    watchdog interrupts the handler, and the worker comes back with its pid,
    its launcher and its sessions."""
    from tests.pool.test_cancellation import StartMarker, block_then_cancel

    started = StartMarker(tmp_path)
    try:
        with trio.fail_after(HANG_GUARD), telemetry.capture([telemetry.WORKER_DRAINED]) as seen:
            async with engine.open_pool(size=1, name=marker, launcher=launcher(),
                                        app="tests.apps.cancellable") as pool:
                await pool.wait_ready(1, timeout=READY)
                before = pool.inspect().slots[0]
                await pool.call("remember", "b's state", session="b")
                await block_then_cancel(pool, started, "r1", session="a")
                assert await pool.call("recall", session="b") == "b's state"
                after = pool.inspect().slots[0]
                assert (after.pid, after.os_pid, after.generation) == \
                    (before.pid, before.os_pid, before.generation)
        [event] = [e.metadata for e in seen]
        assert event["outcome"] == "clean" and event["reason"] == "abandoned request cancelled"
    finally:
        started.close()


async def test_run_sync_needs_an_opt_in_for_workers_through_a_launcher(
        launcher: Launch, marker: str) -> None:
    """Unpickling runs code: a worker started through a Launcher serves JSON
    only (run_sync raises PickleNotAllowed and the worker is untouched), unless
    the pool's config says allow_pickle=True."""
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, name=f"{marker}a", launcher=launcher()) as pool:
            await pool.wait_ready(1, timeout=READY)
            before = (await pool.call("ping"))["pid"]
            with pytest.raises(PickleNotAllowed, match="allow_pickle=True"):
                await pool.run_sync(os.getpid)
            assert (await pool.call("ping"))["pid"] == before
        async with engine.open_pool(size=1, name=f"{marker}b", launcher=launcher(),
                                    allow_pickle=True) as pool:
            await pool.wait_ready(1, timeout=READY)
            assert await pool.run_sync(os.getpid) == (await pool.call("ping"))["pid"]
            assert await pool.run_sync(bytes, b"\x00\xff" * 100_000) == b"\x00\xff" * 100_000


@pytest.mark.layer3
def test_a_loopback_sshd_directory_can_be_used_again(tmp_path: Path) -> None:
    """The second run in the same directory failed in ssh-keygen (its keys
    were there already; second new-user audit): each run makes fresh keys."""
    from engine.testing.sshd import SshdUnavailable, loopback_sshd

    keys = []
    for _ in range(2):
        try:
            with loopback_sshd(tmp_path) as server:
                keys.append((tmp_path / "client_key.pub").read_text())
                assert server.port > 0
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
    assert keys[0] != keys[1]  # fresh keys each time
