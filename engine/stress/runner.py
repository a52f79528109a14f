"""The stress-test runner: load a pool, break it on purpose, check it held up.

``engine stress`` (see :mod:`engine.cli`) is the operator's front end. A run has
four phases:

1. **start**: open a pool of the chosen app and wait until every worker is ready;
2. **load**: N clients call the pool back to back with a weighted mix of calls
   (:mod:`engine.stress.workload`) while, optionally, a killer task SIGKILLs a
   random worker at a fixed rate and fault calls crash, hang or garble workers
   (:mod:`engine.stress.chaos`);
3. **verify**: stop the load, wait for the pool to recover, call every session
   still bound once more so each lost session is observed, compare the deaths
   we caused with the deaths the pool reported;
4. **close**: close the pool and check that no worker process is left.

:func:`run_stress` returns a JSON-ready report (:mod:`engine.stress.report`)
whose ``invariants`` say whether the pool held up.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from engine import telemetry
from engine.errors import EngineError, PoolTimeout, SessionLost
from engine.pool.config import make_config
from engine.pool.pool import Pool, open_pool
from engine.process.launch import Launcher
from engine.process.procfs import child_pids
from engine.stress.chaos import DeathLedger, WorkerWatch, run_killer, wait_gone
from engine.stress.report import RunFacts, build_report
from engine.stress.workload import (
    KINDS,
    Recorder,
    SessionBook,
    SessionState,
    Workload,
    WorkloadSettings,
    missing_commands,
)

__all__ = ["DEFAULT_MIX", "KINDS", "LiveStatus", "StressConfig", "parse_mix", "run_stress"]

DEFAULT_MIX: Mapping[str, float] = {"anon": 60, "session": 30, "slow": 10, "fail": 0,
                                    "crash": 0, "hang": 0, "garbage": 0, "cancel": 0,
                                    "timeout": 0}
#: What ``--chaos`` adds for kinds the mix does not mention.
CHAOS_MIX: Mapping[str, float] = {"crash": 0.1, "hang": 0.05, "garbage": 0.05,
                                  "cancel": 1.0, "timeout": 1.0}
CHAOS_KILL_EVERY = 0.5

_run_ids = itertools.count(1)


def parse_mix(text: str) -> dict[str, float]:
    """Parse ``anon=60,session=30,...`` into weights. Raises ValueError saying why."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"mix entry {part!r} must look like KIND=WEIGHT")
        if name not in KINDS:
            raise ValueError(f"unknown call kind {name!r} in mix; known: {', '.join(KINDS)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weight of {name!r} must be a number, got {value!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {value!r}")
        mix[name] = weight
    return mix


def _check_mix(instance: Any, attribute: attrs.Attribute[Any], value: Mapping[str, float]) \
        -> None:
    unknown = set(value) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown call kind(s) in mix: {', '.join(sorted(unknown))}")
    if not any(w > 0 for w in value.values()):
        raise ValueError("mix: at least one kind needs a weight above 0")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class StressConfig:
    """One stress run. Times in seconds. Invalid values raise ValueError."""

    app: str = "engine.workers.programs"
    workers: int = attrs.field(default=4, validator=_positive)
    clients: int = attrs.field(default=16, validator=_positive)
    duration: float | None = attrs.field(default=10.0, validator=_positive)
    calls: int | None = attrs.field(default=None, validator=_positive)
    kill_every: float | None = attrs.field(default=None, validator=_positive)
    mix: Mapping[str, float] = attrs.field(factory=lambda: dict(DEFAULT_MIX),
                                           validator=_check_mix)
    call_timeout: float = attrs.field(default=5.0, validator=_positive)
    checkout_timeout: float = attrs.field(default=5.0, validator=_positive)
    hang_timeout: float = attrs.field(default=0.25, validator=_positive)
    slow_seconds: float = attrs.field(default=0.05, validator=_positive)
    #: cancel and timeout calls: a sleep this long, given up this far into it.
    abandon_sleep: float = attrs.field(default=2.0, validator=_positive)
    abandon_after: float = attrs.field(default=0.05, validator=_positive)
    cpu_n: int = attrs.field(default=2000, validator=_positive)
    payload_bytes: int = 64
    sessions_per_client: int = 2
    start_timeout: float = attrs.field(default=10.0, validator=_positive)
    restart_backoff: tuple[float, float] | None = None
    #: Any other PoolConfig fields, applied last (e.g. {"healthy_period": 1.0}).
    pool_options: Mapping[str, Any] = attrs.field(factory=dict)
    seed: int | None = None
    recovery_timeout: float = attrs.field(default=30.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.duration is None and self.calls is None:
            raise ValueError("give a duration or a number of calls")
        if self.sessions_per_client < 0 or self.payload_bytes < 0:
            raise ValueError("sessions_per_client and payload_bytes must be >= 0")
        if self.sessions_per_client == 0 and self.mix.get("session", 0) > 0:
            raise ValueError("the session kind needs sessions: --sessions 0 leaves it none; "
                             "give --sessions 1 or more, or drop it from --mix (session=0)")
        gives_up = any(self.mix.get(kind, 0) > 0 for kind in ("cancel", "timeout"))
        if gives_up and self.abandon_after >= min(self.abandon_sleep, self.call_timeout):
            # Only the cancel and timeout kinds give a call up mid-way.
            raise ValueError(
                f"the cancel and timeout kinds give a call up {self.abandon_after:g}s into "
                f"a {self.abandon_sleep:g}s sleep, so the call timeout "
                f"(--call-timeout, {self.call_timeout:g}s) must be longer than "
                f"{self.abandon_after:g}s; raise it, or drop those kinds from --mix")
        if self.hang_timeout >= self.call_timeout and self.mix.get("hang", 0) > 0:
            # A hang call's own timeout must fire first, or it would look like
            # any other slow call.
            raise ValueError("hang_timeout must be shorter than call_timeout")

    @property
    def call_limit(self) -> float:
        """Longest a correct call can take: past this it counts as hung."""
        return self.checkout_timeout + max(self.call_timeout, self.hang_timeout) + 5.0

    def pool_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {
            "app": self.app, "size": self.workers, "call_timeout": self.call_timeout,
            "checkout_timeout": self.checkout_timeout, "start_timeout": self.start_timeout,
            "max_waiters": max(1000, self.clients * 2), "shutdown_grace": 1.0,
            "seed": self.seed,
        }
        if self.restart_backoff is not None:
            low, high = self.restart_backoff
            overrides["restart_backoff"] = (low, high, 1.0)
        overrides.update(self.pool_options)
        return overrides

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["mix"] = dict(self.mix)
        out["pool_options"] = {k: v if isinstance(v, int | float | str | bool) or v is None
                               else repr(v) for k, v in self.pool_options.items()}
        return out


@attrs.frozen
class LiveStatus:
    """What the live display shows, refreshed a few times a second."""

    phase: str
    elapsed: float
    progress: float  # 0..1
    started: int
    succeeded: int
    failed: int
    in_flight: int
    throughput: float  # calls/s over the last second or so
    call_p50: float
    call_p99: float
    checkout_p99: float
    ready: int
    size: int
    injected: int
    detected: int
    restarts: int
    failures: Mapping[str, int]


class StressSetupError(EngineError):
    """The pool never became ready, so there was nothing to stress."""


class _Run:
    """State of one run; the phases are its methods."""

    def __init__(self, config: StressConfig,
                 on_status: Callable[[LiveStatus], None] | None) -> None:
        self.config = config
        self.on_status = on_status
        self.seed = config.seed if config.seed is not None else random.randrange(1 << 31)
        self.rng = random.Random(self.seed)
        pool_config = make_config(None, config.pool_overrides())
        self.watch = WorkerWatch(frozenset(
            slot for slot in range(pool_config.size)
            if isinstance(pool_config.launcher_for(slot), Launcher)))
        self.ledger = DeathLedger()
        self.book = SessionBook()
        duration = config.duration or 0.0
        self.bin_width = 0.25 if duration <= 120 else duration / 480
        self.recorder = Recorder(self.bin_width, random.Random(self.rng.random()))
        self.samples: list[tuple[float, int, int, int, int]] = []
        self.phase = "starting"
        self.t0 = 0.0
        self.load_end = 0.0
        self.clients_done_at = 0.0
        self.hung = 0
        self.facts: dict[str, Any] = {}
        self._rate_mark = (0.0, 0)  # (time, calls ended) of the last rate sample

    def _check_commands(self, pool: Pool) -> None:
        """Refuse an app that lacks the commands of the mix: every call of those
        kinds would fail, and a run of failures is no test of the pool."""
        workers = pool.inspect().live_workers()
        if not workers or workers[0].hello is None:
            return
        missing = missing_commands(dict(self.config.mix), workers[0].hello.commands)
        if missing:
            lacking = "; ".join(f"{kind} needs {', '.join(repr(c) for c in commands)}"
                                for kind, commands in missing.items())
            raise StressSetupError(
                f"app {self.config.app!r} does not serve the commands of the call mix "
                f"({lacking}): every such call would fail. The stress runner tests the "
                "pool with the default app's commands (engine.workers.programs): run it "
                "with that app (the default), or with an app module that serves these "
                "commands too")

    async def run(self) -> dict[str, Any]:
        handler_id = f"engine.stress-{next(_run_ids)}"
        telemetry.attach(handler_id, [telemetry.WORKER_EVENTS], self.watch.handle)
        children_before = child_pids()
        started = trio.current_time()
        try:
            async with open_pool(**self.config.pool_overrides()) as pool:
                self.watch.pool_label = pool.label
                try:
                    await pool.wait_ready(self.config.workers,
                                          timeout=self.config.start_timeout * 2)
                except EngineError as exc:
                    raise StressSetupError(f"the pool never became ready: {exc}") from exc
                self._check_commands(pool)
                self.facts["start_seconds"] = trio.current_time() - started
                await self._load(pool)
                await self._verify(pool)
                self.watch.shutdown_started = trio.current_time()
                self.phase = "closing"
                self._status(pool)
            self.facts["close_seconds"] = trio.current_time() - self.watch.shutdown_started
            await self._after_close(children_before)
        finally:
            telemetry.detach(handler_id)
        return build_report(self._run_facts())

    # --- phase 2: load -------------------------------------------------------------

    async def _load(self, pool: Pool) -> None:
        config = self.config
        settings = WorkloadSettings(
            mix=config.mix, call_timeout=config.call_timeout,
            checkout_timeout=config.checkout_timeout, hang_timeout=config.hang_timeout,
            slow_seconds=config.slow_seconds, cpu_n=config.cpu_n,
            sessions_per_client=config.sessions_per_client, payload_bytes=config.payload_bytes,
            abandon_sleep=config.abandon_sleep, abandon_after=config.abandon_after)
        self.workload = Workload(pool, settings, self.recorder, self.ledger, self.book,
                                 self.watch.pid_of_worker, config.calls)
        self.t0 = trio.current_time()
        self.recorder.start(self.t0)
        self.phase = "load"
        clients_done = trio.Event()
        client_scope = trio.CancelScope()
        stop_chaos = trio.Event()

        async def clients() -> None:
            with client_scope:
                async with trio.open_nursery() as nursery:
                    for i in range(config.clients):
                        nursery.start_soon(self.workload.client, i, self.rng.randrange(1 << 31))
            self.clients_done_at = trio.current_time()
            clients_done.set()

        async with trio.open_nursery() as nursery:
            if config.kill_every is not None:
                nursery.start_soon(run_killer, pool, self.ledger, config.kill_every,
                                   random.Random(self.rng.random()), stop_chaos)
            nursery.start_soon(self._sample, pool, clients_done)
            nursery.start_soon(clients)
            hung_scope = trio.CancelScope()
            nursery.start_soon(self._watchdog, client_scope, clients_done, hung_scope)
            if config.duration is not None:
                with trio.move_on_at(self.t0 + config.duration):
                    await clients_done.wait()
            else:
                await clients_done.wait()
            self.workload.stopping = True
            self.load_end = trio.current_time()
            stop_chaos.set()
            self.phase = "draining"
            await clients_done.wait()
            hung_scope.cancel()
        self.facts["in_flight_after_load"] = self.recorder.in_flight

    async def _watchdog(self, client_scope: trio.CancelScope, clients_done: trio.Event,
                        own_scope: trio.CancelScope) -> None:
        """Cancel the clients if a call runs past the longest legitimate duration.

        The recorder has no per-call start times, so a call is judged hung when
        no call at all ended for ``call_limit`` while some were in flight.
        """
        limit = self.config.call_limit
        with own_scope:
            last = (self.recorder.ended, trio.current_time())
            while not clients_done.is_set():
                await trio.sleep(0.5)
                now = trio.current_time()
                if self.recorder.ended != last[0] or self.recorder.in_flight == 0:
                    last = (self.recorder.ended, now)
                elif now - last[1] > limit:
                    self.hung = self.recorder.in_flight
                    client_scope.cancel()
                    return

    async def _sample(self, pool: Pool, clients_done: trio.Event) -> None:
        """Pool state once per time bin (for the charts) and the live display."""
        next_at = self.t0
        tick = min(0.25, self.bin_width)
        while not clients_done.is_set():
            now = trio.current_time()
            stats = pool.statistics()
            self.samples.append((now - self.t0, stats.ready, stats.busy,
                                 stats.starting, stats.waiting))
            self._status(pool)
            next_at += tick
            with trio.move_on_at(next_at):
                await clients_done.wait()

    def _status(self, pool: Pool) -> None:
        if self.on_status is None:
            return
        rec = self.recorder
        now = trio.current_time()
        config = self.config
        if config.duration is not None:
            progress = min(1.0, (now - self.t0) / config.duration) if self.t0 else 0.0
        else:
            progress = min(1.0, rec.started / (config.calls or 1))
        if self.phase in ("draining", "verifying", "closing"):
            progress = 1.0
        # Throughput over roughly the last second: the mark moves once a second.
        mark_t, mark_n = self._rate_mark
        rate = (rec.ended - mark_n) / (now - mark_t) if mark_t and now > mark_t else 0.0
        if not mark_t or now - mark_t >= 1.0:
            self._rate_mark = (now, rec.ended)
        stats = pool.statistics()
        call = rec.call.snapshot()
        self.on_status(LiveStatus(
            phase=self.phase, elapsed=now - self.t0 if self.t0 else 0.0, progress=progress,
            started=rec.started, succeeded=rec.succeeded, failed=rec.failed,
            in_flight=rec.in_flight, throughput=rate, call_p50=call.p50, call_p99=call.p99,
            checkout_p99=rec.checkout.snapshot().p99, ready=stats.ready, size=stats.size,
            injected=len(self.ledger.injections), detected=len(self.watch.deaths()),
            restarts=stats.restarts, failures=rec.failures_by_type()))

    # --- phase 3: verify -------------------------------------------------------------

    async def _verify(self, pool: Pool) -> None:
        self.phase = "verifying"
        self._status(pool)
        config = self.config
        began = trio.current_time()
        try:
            await pool.wait_ready(config.workers, timeout=config.recovery_timeout)
            self.facts["recovered"] = True
        except PoolTimeout:
            self.facts["recovered"] = False
        self.facts["recovery_seconds"] = trio.current_time() - began
        # The killed processes are reaped by the pool; give the kernel a moment
        # so /proc agrees before deciding which workers are dead.
        # Only workers of this host can be looked up in /proc.
        self.facts["injected_still_alive"] = sorted(
            await wait_gone(set(self.ledger.injections) - self.watch.remote_pids, 5.0))
        probes: dict[str, int] = {}
        for state in self.book.sessions:
            if state.epoch is not None:
                outcome = await self._probe(pool, state)
                probes[outcome] = probes.get(outcome, 0) + 1
        self.facts["probes"] = probes
        # The workers' own pids (their hellos'), as sessions and the ledger
        # name them: worker_pids() gives the processes spawned here, which for
        # a remote worker (or a launcher that stays in between) is another pid.
        self.facts["live_pids"] = sorted(slot.pid for slot in pool.inspect().slots
                                         if slot.worker is not None and slot.pid is not None)
        self.facts["statistics"] = attrs.asdict(pool.statistics())
        self.facts["expected_deaths"] = pool.metrics().counters.get("expected_deaths", 0)
        try:
            pool.check_invariants()
            self.facts["core_invariants"] = None
        except AssertionError as exc:
            self.facts["core_invariants"] = str(exc) or "AssertionError"

    async def _probe(self, pool: Pool, state: SessionState) -> str:
        """Call a bound session once more: SessionLost if its worker died."""
        epoch = state.epoch
        assert epoch is not None
        try:
            async with pool.checkout(session=state.name,
                                     timeout=self.config.checkout_timeout) as lease:
                if lease.pid != epoch.pid:
                    self.recorder.affinity_breaks.append(
                        f"probe: session {state.name!r} bound to pid {epoch.pid} was "
                        f"served by pid {lease.pid}")
                answer = await lease.call("ping", timeout=self.config.call_timeout)
                if not isinstance(answer, dict) or answer.get("pid") != epoch.pid:
                    self.recorder.wrong.append(
                        f"probe: ping of session {state.name!r} answered {answer!r}")
            return "alive"
        except SessionLost as exc:
            self.book.lost(state, exc, "verify", self.watch.pid_of_worker)
            return "SessionLost"
        except EngineError as exc:
            return type(exc).__name__

    # --- phase 4: after close -----------------------------------------------------------

    async def _after_close(self, children_before: set[int]) -> None:
        seen = set(self.watch.pids_seen)
        seen.update(e.pid for e in self.book.epochs if e.pid is not None)
        seen -= self.watch.remote_pids  # their host's pids: /proc here knows nothing of them
        # Workers are waited for before aclose() returns; the short settle only
        # absorbs /proc lag.
        left = await wait_gone(seen, 2.0)
        zombies = (child_pids() - children_before) & seen
        self.facts["pids_seen"] = len(seen)
        self.facts["left_after_close"] = sorted(left)
        self.facts["unreaped_after_close"] = sorted(zombies)

    def _run_facts(self) -> RunFacts:
        return RunFacts(
            config=self.config.as_dict(), seed=self.seed, t0=self.t0,
            load_end=self.load_end, clients_done_at=self.clients_done_at,
            bin_width=self.bin_width, recorder=self.recorder, ledger=self.ledger,
            watch=self.watch, book=self.book, samples=self.samples, hung=self.hung,
            facts=self.facts)


async def run_stress(config: StressConfig,
                     on_status: Callable[[LiveStatus], None] | None = None) -> dict[str, Any]:
    """Run one stress test and return its report (a JSON-ready dict).

    ``report["ok"]`` is True when every invariant held. Raises
    :class:`StressSetupError` when the pool cannot start at all.
    """
    return await _Run(config, on_status).run()
