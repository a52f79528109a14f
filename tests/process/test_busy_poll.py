"""Busy-polling on both ends of a worker's pipe.

The rule itself (when to poll) is :mod:`engine.busy_poll`'s, tested purely in
``tests/test_busy_poll.py``; here each end's mechanics and wiring:

* Layer 1: ``PoolConfig.busy_poll`` validation, the runtime's ``--busy-poll-us``
  option and ``build_argv``, the worker's ``BusyPoller`` (real pipe, fake clock).
* Layer 2: ``PipeTransport``'s spinning (real pipe fds, fake clock).
* Layer 3: real worker subprocesses, with busy-polling off, on by default and
  at its maximum; an idle pool does not poll.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine.busy_poll import DEFAULT_BUSY_POLL, MAX_BUSY_POLL, BusyPollPolicy
from engine.pool.config import PoolConfig, make_config
from engine.process.handle import SpawnRequest
from engine.process.spawn import build_argv
from engine.process.transport import PipeTransport, transport_for
from engine.workers import runtime

HANG_GUARD = 20.0  # generous: turns a hang into a failure, never a timing assertion
READY = 10.0
APP = "engine.workers.programs"


# --- layer 1: configuration and command line -------------------------------------------


@pytest.mark.layer1
@pytest.mark.parametrize("value", [-1, -1e-9, 0.5, MAX_BUSY_POLL * 1.01, float("nan"),
                                   float("inf"), True, False, "x", None])
def test_pool_config_rejects_bad_busy_poll(value: Any) -> None:
    with pytest.raises(ValueError, match="busy_poll"):
        PoolConfig(busy_poll=value)
    with pytest.raises(ValueError, match="busy_poll"):
        make_config(None, {"busy_poll": value})


@pytest.mark.layer1
@pytest.mark.parametrize("value", [0, 0.0, 1e-6, 250e-6, MAX_BUSY_POLL, 0.01])
def test_pool_config_accepts_busy_poll_in_range(value: float) -> None:
    assert PoolConfig(busy_poll=value).busy_poll == value


@pytest.mark.layer1
def test_busy_poll_defaults_agree() -> None:
    assert PoolConfig().busy_poll == DEFAULT_BUSY_POLL
    assert SpawnRequest(worker_id="w", app=APP, start_timeout=1.0).busy_poll \
        == DEFAULT_BUSY_POLL
    assert 0 < DEFAULT_BUSY_POLL <= MAX_BUSY_POLL
    # The parent's cap and the worker's cap are the same number of microseconds.
    assert round(MAX_BUSY_POLL * 1e6) == runtime.MAX_BUSY_POLL_US


@pytest.mark.layer1
@pytest.mark.parametrize(("argv", "seconds"), [
    (["--busy-poll-us", "0"], 0.0),
    (["--busy-poll-us", "250"], 250e-6),
    (["--busy-poll-us=250"], 250e-6),
    (["--busy-poll-us", "10000"], 0.01),
    ([], 0.0),  # absent: off (an old parent that does not pass it)
])
def test_parse_args_busy_poll_in_seconds(argv: list[str], seconds: float) -> None:
    options = runtime.parse_args(["--app", "m", "--worker-id", "w", *argv])
    assert options.busy_poll == pytest.approx(seconds, abs=1e-12)
    assert (options.app, options.worker_id) == ("m", "w")


@pytest.mark.layer1
@pytest.mark.parametrize(("value", "match"), [
    ("-1", "between 0 and 10000"),
    ("10001", "between 0 and 10000"),
    ("abc", "must be an integer"),
    ("2.5", "must be an integer"),
    ("", "needs a value"),
])
def test_parse_args_rejects_bad_busy_poll(value: str, match: str) -> None:
    with pytest.raises(runtime.UsageError, match=match):
        runtime.parse_args(["--app", "m", "--worker-id", "w", "--busy-poll-us", value])


@pytest.mark.layer1
def test_parse_args_rejects_busy_poll_without_value() -> None:
    with pytest.raises(runtime.UsageError, match="busy-poll-us"):
        runtime.parse_args(["--app", "m", "--worker-id", "w", "--busy-poll-us"])


@pytest.mark.layer1
@pytest.mark.parametrize(("busy_poll", "micros"), [
    (0.0, "0"), (DEFAULT_BUSY_POLL, "100"), (250e-6, "250"), (MAX_BUSY_POLL, "10000"),
])
def test_build_argv_passes_busy_poll_in_microseconds(busy_poll: float, micros: str) -> None:
    request = SpawnRequest(worker_id="w-0.1", app=APP, start_timeout=1.0, busy_poll=busy_poll)
    argv = build_argv(request)
    at = argv.index("--busy-poll-us")
    assert argv[at + 1] == micros
    # And the worker's parser takes what the parent passes, back to seconds.
    options = runtime.parse_args(argv[argv.index("--app"):])
    assert options.busy_poll == pytest.approx(busy_poll, abs=1e-12)


# --- layer 1: the worker's BusyPoller ---------------------------------------------------


class FakeClock:
    """A clock that moves only when told to (``now += ...``), or by ``step`` per read."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1000.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


class WorkerWaits:
    """The worker's side of a pipe as ``Worker.serve`` drives it: before each read
    the shared policy decides, and ``BusyPoller`` polls stdin until its time."""

    def __init__(self, read_fd: int, budget: float, clock: FakeClock) -> None:
        # As the runtime builds it: nothing known yet, the first wait does not poll.
        self.policy = BusyPollPolicy(budget, typical_wait=budget, clock=clock)
        self.poller = runtime.BusyPoller(read_fd, self.policy.keep_polling)
        self.polls: list[float | None] = []
        real_poll = self.poller._poll

        def poll(timeout: float | None = None) -> list[tuple[int, int]]:
            self.polls.append(timeout)
            return real_poll(timeout)

        self.poller._poll = poll

    def wait(self) -> None:
        if until := self.policy.begin_wait():
            self.poller.poll_until(until)


def counting_poller(read_fd: int, budget: float,
                    clock: FakeClock) -> tuple[WorkerWaits, list[float | None]]:
    waits = WorkerWaits(read_fd, budget, clock)
    return waits, waits.polls


def one_request(poller: WorkerWaits, clock: FakeClock, pipe: tuple[int, int],
                gap: float) -> None:
    """A request that arrives ``gap`` seconds after the worker went idle.

    Within the budget, the request is there at the first poll (and the wait is
    measured as ``gap``); later, a polling wait polls the empty pipe in four passes
    of a quarter budget each (a CPU of its own: never descheduled), then blocks."""
    read_fd, write_fd = pipe
    budget = poller.policy.budget
    if gap < budget:
        os.write(write_fd, b"r")  # already readable: a poll answers at once
        poller.wait()
        clock.now += gap
    else:
        started = clock.now
        clock.step = budget / 4
        poller.wait()
        clock.step = 0.0
        clock.now = started + gap
        os.write(write_fd, b"r")
    assert os.read(read_fd, 16) == b"r"
    poller.policy.frame_arrived()


@pytest.mark.layer1
def test_busy_poller_sparse_requests_poll_only_on_backed_off_probes(
        pipe: tuple[int, int]) -> None:
    budget = 100e-6
    clock = FakeClock()
    poller, polls = counting_poller(pipe[0], budget, clock)
    polled_on = []
    for n in range(1, 57):
        before = len(polls)
        one_request(poller, clock, pipe, gap=1.0)  # ten thousand budgets apart
        if len(polls) > before:
            polled_on.append(n)
    # The average gap is far above the budget: only the probes poll, each for
    # its budget (four passes); none pays, so each comes twice as many waits
    # after the one before; none of them is taken for contention.
    assert polled_on == [8, 24, 56]
    assert polls == [0] * 12
    assert not poller.policy.contended and poller.policy.deschedules == 0


@pytest.mark.layer1
def test_busy_poller_frequent_requests_poll_from_the_second_wait(
        pipe: tuple[int, int]) -> None:
    budget = 100e-6
    clock = FakeClock()
    poller, polls = counting_poller(pipe[0], budget, clock)
    polled_on = []
    for n in range(1, 13):
        before = len(polls)
        one_request(poller, clock, pipe, gap=budget / 10)
        if len(polls) > before:
            polled_on.append(n)
    # The first wait knows nothing yet (average == budget: no polling); one
    # short gap brings the average under the budget, and every wait polls.
    assert polled_on == list(range(2, 13))
    assert len(polls) == 11  # the request was there: one poll each


@pytest.mark.layer1
def test_busy_poller_measures_its_way_back_after_an_idle_period(
        pipe: tuple[int, int]) -> None:
    budget = 100e-6
    clock = FakeClock()
    poller, polls = counting_poller(pipe[0], budget, clock)
    for _ in range(4):
        one_request(poller, clock, pipe, gap=budget / 10)
    assert polls, "frequent requests poll"
    for _ in range(4):
        one_request(poller, clock, pipe, gap=5.0)  # an idle spell
    before = len(polls)
    one_request(poller, clock, pipe, gap=budget / 10)
    assert len(polls) == before, "right after an idle spell the poller does not spin"
    polled_on = []  # the poller's own wait numbers
    for _ in range(60):
        before = len(polls)
        one_request(poller, clock, pipe, gap=budget / 10)
        if len(polls) > before:
            polled_on.append(poller.policy.waits)
    last = poller.policy.waits
    # Short gaps pull the moving average back under the budget: from some point
    # on every wait polls again; before it, only the probes (every 8th wait) did.
    assert polled_on and polled_on[-1] == last, "the poller never went back to polling"
    resumed = last
    while resumed - 1 in polled_on:
        resumed -= 1
    assert resumed < last - 10
    assert polled_on == [n for n in polled_on if n < resumed and n % 8 == 0] \
        + list(range(resumed, last + 1))
    assert any(n < resumed for n in polled_on), "probes poll during the idle average"


@pytest.mark.layer1
def test_busy_poller_gives_up_after_its_budget_when_nothing_comes(
        pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    step = 2.0 ** -16  # exact binary fractions: the loop bound is deterministic
    budget = 4 * step
    clock = FakeClock()
    poller, polls = counting_poller(pipe[0], budget, clock)
    one_request(poller, clock, pipe, gap=0.0)
    one_request(poller, clock, pipe, gap=0.0)
    assert len(polls) == 1  # polling now (the average gap is under the budget)
    yields: list[None] = []
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(None))
    clock.step = step
    del polls[:]
    poller.wait()  # the pipe is empty: poll until the budget is spent, then return
    assert len(polls) == 4
    # The CPU is yielded between polls, never after the last one.
    assert len(yields) == len(polls) - 1


# --- layer 2: the parent's PipeTransport ------------------------------------------------


@pytest.mark.layer2
@pytest.mark.parametrize("budget", [0.0, 250e-6])
async def test_transport_for_pipes_polls_with_the_budget_given(budget: float) -> None:
    read_fd, write_fd = os.pipe()
    send = trio.lowlevel.FdStream(write_fd)
    receive = trio.lowlevel.FdStream(read_fd)
    try:
        io = transport_for(send, receive, busy_poll=budget)
        assert isinstance(io, PipeTransport)
        if not budget:
            assert io.busy_poll is None  # off: never polls, never reads the clock
        else:
            assert io.busy_poll is not None
            # The parent's first wait (the hello) polls: it starts from 0.
            assert (io.busy_poll.budget, io.busy_poll.typical_wait) == (budget, 0.0)
    finally:
        await send.aclose()
        await receive.aclose()


@pytest.mark.layer2
async def test_pipe_transport_without_a_policy_parks_at_once(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.set_blocking(read_fd, False)
    reader = PipeTransport(write_fd, read_fd)
    got: list[bytes] = []

    async def read() -> None:
        got.append(await reader.read())

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert reader._waiting_on == read_fd  # parked in epoll
            os.write(write_fd, b"reply")
    assert got == [b"reply"]


@pytest.mark.layer2
async def test_pipe_transport_stops_spinning_for_slow_replies(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    os.set_blocking(read_fd, False)
    step = 2.0 ** -16  # a pass on a CPU of its own: well under DESCHEDULED
    budget = 4 * step
    clock = FakeClock(step)
    policy = BusyPollPolicy(budget, clock=clock)
    reader = PipeTransport(write_fd, read_fd, policy)

    # A reply already there: returned at once, no clock read, not a "wait".
    os.write(write_fd, b"ready")
    assert await reader.read() == b"ready"
    assert clock.reads == 0 and policy.waits == 0

    async def slow_reply() -> int:
        """The reply comes long after the reader parked; the clock reads it took."""
        got: list[bytes] = []

        async def read() -> None:
            got.append(await reader.read())

        reads_before = clock.reads
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()  # spun, then parked
            clock.now += 1.0  # the time spent parked
            os.write(write_fd, b"late")
        assert got == [b"late"]
        return clock.reads - reads_before

    reads = [await slow_reply() for _ in range(24)]
    spun = [n for n, r in enumerate(reads, 1) if r > 2]
    # The first wait spins (nothing known yet), finds replies slow, and stops;
    # only the probes spin after that (wait 8, then 16 waits later: the first
    # did not pay).
    assert spun == [1, 8, 24]
    assert policy.typical_wait > budget and policy.waits == 24
    # A spinning read looks at the clock once per pass: it spun for its budget.
    assert reads[0] == reads[7] == reads[23] > 2
    assert {reads[n] for n in range(24) if n + 1 not in spun} == {2}
    assert not policy.contended


# --- layer 2: time_out and the pool timer over fake workers -----------------------------


REQUEST = SpawnRequest(worker_id="fake-0.1", app="fake", start_timeout=5.0)
VIRTUAL_GUARD = 1000.0  # virtual seconds: a deadline that never fires fails, not hangs


# --- layer 3: real workers --------------------------------------------------------------


BUSY_POLLS = [pytest.param(0.0, id="off"), pytest.param(DEFAULT_BUSY_POLL, id="default"),
              pytest.param(MAX_BUSY_POLL, id="max")]


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().split("\0")[:-1]


@pytest.mark.layer3
@pytest.mark.parametrize(("busy_poll", "micros"), [(0.0, "0"), (250e-6, "250")])
async def test_workers_are_started_with_the_pools_busy_poll(busy_poll: float,
                                                            micros: str) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2, busy_poll=busy_poll) as pool:
            await pool.wait_ready(2, timeout=READY)
            pids = pool.worker_pids()
            assert len(pids) == 2
            for pid in pids:
                argv = cmdline(pid)
                assert argv[argv.index("--busy-poll-us") + 1] == micros


@pytest.mark.layer3
@pytest.mark.parametrize("busy_poll", BUSY_POLLS)
async def test_sequential_calls_stay_in_step_through_busy_and_idle_spells(
        busy_poll: float) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=1, busy_poll=busy_poll) as pool:
            await pool.wait_ready(1, timeout=READY)
            [pid] = pool.worker_pids()
            for i in range(300):  # back to back: both sides are in polling mode
                payload = {"i": i, "pad": "x" * (i % 13)}
                assert await pool.call("echo", payload) == payload
            for spell in range(3):
                # The idle period is what is tested: the worker (and the parent)
                # measure long gaps and stop polling; requests are still read.
                await trio.sleep(0.05)
                for i in range(10):
                    assert await pool.call("echo", [spell, i]) == [spell, i]
            # A large reply takes several reads on the parent side.
            big = "y" * 300_000
            assert await pool.call("echo", big) == big
            stats = pool.statistics()
            assert (stats.restarts, stats.crashes) == (0, 0)
            assert pool.worker_pids() == [pid]


@pytest.mark.layer3
async def test_concurrent_calls_with_busy_polling_return_their_own_results() -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(size=2) as pool:
            await pool.wait_ready(2, timeout=READY)
            results: dict[int, list[Any]] = {}

            async def client(n: int) -> None:
                results[n] = [await pool.call("echo", [n, i]) for i in range(50)]

            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(client, n)
            assert results == {n: [[n, i] for i in range(50)] for n in range(4)}
            assert pool.statistics().restarts == 0


@pytest.mark.layer3
def test_runtime_refuses_a_bad_busy_poll_at_start() -> None:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "engine.workers.runtime", "--app", APP, "--worker-id", "w",
         "--busy-poll-us", "99999"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=HANG_GUARD, check=False,
    )
    assert proc.returncode == runtime.EXIT_USAGE
    assert b"busy-poll-us" in proc.stdout + proc.stderr


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


@pytest.mark.layer3
async def test_idle_pool_does_not_busy_poll() -> None:
    # Polling is for frames that come within the budget. After a burst of calls
    # (polling on, on both sides) an idle pool must go quiet: a worker that kept
    # polling would burn about a CPU-second per second, the bound below is a
    # twentieth of that. CPU time, not wall time, so a slow machine can't fail it.
    idle = 1.0
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=APP, size=2, busy_poll=MAX_BUSY_POLL) as pool:
            await pool.wait_ready(2, timeout=READY)
            for i in range(300):
                assert await pool.call("echo", {"i": i}) == {"i": i}
            pids = pool.worker_pids()
            workers_before = {pid: _cpu_ticks(pid) for pid in pids}
            parent_before = os.times()
            await trio.sleep(idle)  # the idle period under test
            parent_after = os.times()
            worker_ticks = {pid: _cpu_ticks(pid) - workers_before[pid] for pid in pids}
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    for pid, ticks in worker_ticks.items():
        assert ticks / ticks_per_second < idle / 20, f"worker {pid} used {ticks} ticks idle"
    parent_cpu = (parent_after.user + parent_after.system) \
        - (parent_before.user + parent_before.system)
    assert parent_cpu < idle / 20, f"the parent used {parent_cpu:.3f} s of CPU while idle"
