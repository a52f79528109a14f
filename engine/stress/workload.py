"""The stress runner's clients: the workload mix, and what each call did.

One *call* here is one checkout plus one command on the leased worker, so the
checkout wait and the call itself are measured apart. Every call is counted
when it starts and again when it ends with a result or an exception; a call
still running when the runner gives up waiting is *hung*.

Cooperative cancellation: a ``cancel`` call gives up on a long ``sleep`` of
one of its sessions mid-call (``trio.move_on_after``), a ``timeout`` call lets
its call timeout expire; either way the worker is drained and must come back
with the session's state, which the session's next calls check (its programs
are still there). Each epoch counts the calls given up on it.

Sessions: each client owns a few sessions and uses them one call at a time.
The client remembers which worker (pid) each session is bound to, from the
lease that served it, so it knows independently of the pool which sessions'
state died with a worker. An *epoch* is one binding: it starts when a call of
an unbound session gets a worker, and ends when that session's state is
reported lost (``SessionLost``).
"""

from __future__ import annotations

import logging
import random
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from engine.errors import CallTimeout, EngineError, SessionLost
from engine.stress.chaos import CRASH_CODE, DeathLedger
from engine.telemetry import LatencyHistogram

if TYPE_CHECKING:
    from engine.pool.lease import Lease
    from engine.pool.pool import Pool

logger = logging.getLogger("engine.stress")

KINDS = ("anon", "session", "slow", "fail", "crash", "hang", "garbage", "cancel", "timeout")
FAULT_KINDS = frozenset({"crash", "hang", "garbage"})
# The commands each kind sends (the default app's, engine.workers.programs):
# an app under test must serve them, or every call of the kind would fail.
COMMANDS_OF_KIND: dict[str, tuple[str, ...]] = {
    "anon": ("echo", "cpu"), "session": ("create_program", "execute_program", "list_programs"),
    "slow": ("sleep",), "fail": ("fail",), "crash": ("crash",), "hang": ("hang",),
    "garbage": ("garbage",), "cancel": ("sleep",), "timeout": ("sleep",)}


def missing_commands(mix: Mapping[str, float],
                     served: Sequence[str]) -> dict[str, list[str]]:
    """The mix's kinds (with a weight) whose commands the app does not serve:
    kind -> the commands it lacks."""
    have = set(served)
    return {kind: lacking for kind, weight in mix.items() if weight
            if (lacking := [c for c in COMMANDS_OF_KIND.get(kind, ()) if c not in have])}
#: Calls whose caller gives up mid-call (cancelled, or its timeout), on a session.
ABANDON_KINDS = frozenset({"cancel", "timeout"})
#: The quick calls: their latency is the pool's overhead plus a little work, so
#: they feed the headline latency and the charts. Slow calls (a sleep) and
#: fault calls are reported per kind only: their latency is the sleep's or the
#: fault's.
MEASURED_KINDS = frozenset({"anon", "session", "fail"})
_BIN_SAMPLES = 256  # latencies kept per time bin (reservoir), for the charts


@attrs.frozen
class WorkloadSettings:
    mix: Mapping[str, float]
    call_timeout: float
    checkout_timeout: float
    hang_timeout: float
    slow_seconds: float
    cpu_n: int
    sessions_per_client: int
    payload_bytes: int
    #: cancel and timeout calls: how long the abandoned sleep would take, and
    #: how far into it its caller gives up.
    abandon_sleep: float = 2.0
    abandon_after: float = 0.05


class Reservoir:
    """A uniform sample of at most ``size`` values, plus the exact count and max."""

    __slots__ = ("max", "samples", "seen", "size")

    def __init__(self, size: int = _BIN_SAMPLES) -> None:
        self.size = size
        self.seen = 0
        self.max = 0.0
        self.samples: list[float] = []

    def add(self, value: float, rng: random.Random) -> None:
        self.seen += 1
        self.max = max(self.max, value)
        if len(self.samples) < self.size:
            self.samples.append(value)
        else:
            j = rng.randrange(self.seen)
            if j < self.size:
                self.samples[j] = value


@attrs.define
class TimeBin:
    """Calls that ended within one time bin of the run."""

    ok: int = 0
    failed: int = 0
    call: Reservoir = attrs.Factory(Reservoir)
    wait: Reservoir = attrs.Factory(Reservoir)


class Recorder:
    """Counts, latency histograms and a time series of every call."""

    def __init__(self, bin_width: float, rng: random.Random) -> None:
        self.bin_width = bin_width
        self.rng = rng
        self.t0 = 0.0
        self.started = 0
        self.ended = 0
        self.in_flight = 0
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.checkout = LatencyHistogram()
        self.call = LatencyHistogram()
        self.call_by_kind: dict[str, LatencyHistogram] = {k: LatencyHistogram() for k in KINDS}
        self.bins: list[TimeBin] = []
        self.wrong: list[str] = []
        self.untyped: list[str] = []
        self.affinity_breaks: list[str] = []

    def start(self, now: float) -> None:
        self.t0 = now

    def begin(self) -> None:
        self.started += 1
        self.in_flight += 1

    def end(self, kind: str, outcome: str, now: float, wait: float | None,
            latency: float | None) -> None:
        self.ended += 1
        self.in_flight -= 1
        self.outcomes[(kind, outcome)] += 1
        if wait is not None:
            self.checkout.record(wait)
        if latency is not None:
            self.call_by_kind[kind].record(latency)
            if kind in MEASURED_KINDS:
                self.call.record(latency)
        b = self._bin(now)
        if outcome == "ok":
            b.ok += 1
        else:
            b.failed += 1
        if latency is not None and kind in MEASURED_KINDS:
            b.call.add(latency, self.rng)
        if wait is not None:
            b.wait.add(wait, self.rng)

    def _bin(self, now: float) -> TimeBin:
        index = max(0, int((now - self.t0) / self.bin_width))
        while len(self.bins) <= index:
            self.bins.append(TimeBin())
        return self.bins[index]

    @property
    def succeeded(self) -> int:
        return sum(n for (_, outcome), n in self.outcomes.items() if outcome == "ok")

    @property
    def failed(self) -> int:
        return self.ended - self.succeeded

    def failures_by_type(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, outcome), n in self.outcomes.items():
            if outcome != "ok":
                out[outcome] += n
        return dict(out.most_common())

    def note_untyped(self, exc: BaseException) -> None:
        """Keep the first few distinct tracebacks (the same bug repeats)."""
        text = "".join(traceback.format_exception(exc))
        if len(self.untyped) < 10 and text not in self.untyped:
            self.untyped.append(text)


@attrs.define
class Epoch:
    """One binding of a session to one worker."""

    session: str
    number: int
    worker_id: str | None
    pid: int | None
    lost_observed: int = 0
    lost_phase: str | None = None  # "run" or "verify"
    seen_before_lost: bool = True  # False: the pool bound it, but we never got the lease
    given_up: int = 0  # calls of this epoch given up mid-call (cancel, timeout)


@attrs.define
class SessionState:
    name: str
    epoch: Epoch | None = None
    programs: list[str] = attrs.Factory(list)
    created: int = 0


class SessionBook:
    """Every epoch of every session, for the sessions-lost invariant."""

    def __init__(self) -> None:
        self.epochs: list[Epoch] = []
        self.sessions: list[SessionState] = []
        self.duplicate_losses: list[str] = []

    def new_session(self, name: str) -> SessionState:
        state = SessionState(name)
        self.sessions.append(state)
        return state

    def bind(self, state: SessionState, worker_id: str | None, pid: int | None) -> Epoch:
        epoch = Epoch(state.name, len(self.epochs) + 1, worker_id, pid)
        self.epochs.append(epoch)
        state.epoch = epoch
        state.programs = []
        return epoch

    def lost(self, state: SessionState, exc: SessionLost, phase: str,
             pid_of_worker: Mapping[str, int]) -> None:
        epoch = state.epoch
        if epoch is None:
            # The pool bound the session to a worker that died before our lease
            # reached us (grant, then death, then SessionLost): an epoch we
            # never saw, known only from the error.
            previous = [e for e in self.epochs if e.session == state.name]
            if previous and previous[-1].worker_id == exc.worker_id \
                    and previous[-1].lost_observed:
                self.duplicate_losses.append(
                    f"session {state.name!r}: SessionLost for worker {exc.worker_id} "
                    "reported twice")
            epoch = Epoch(state.name, len(self.epochs) + 1, exc.worker_id,
                          pid_of_worker.get(exc.worker_id or ""), seen_before_lost=False)
            self.epochs.append(epoch)
        epoch.lost_observed += 1
        epoch.lost_phase = phase
        state.epoch = None
        state.programs = []


class Workload:
    """What the clients share: the pool, the settings and the ledgers."""

    def __init__(self, pool: Pool, settings: WorkloadSettings, recorder: Recorder,
                 ledger: DeathLedger, book: SessionBook, pid_of_worker: Mapping[str, int],
                 budget: int | None) -> None:
        self.pool = pool
        self.settings = settings
        self.recorder = recorder
        self.ledger = ledger
        self.book = book
        self.pid_of_worker = pid_of_worker
        self.budget = budget
        self.stopping = False
        kinds = [k for k in KINDS if settings.mix.get(k, 0) > 0]
        self._kinds = kinds
        self._weights = [settings.mix[k] for k in kinds]

    def take_ticket(self) -> bool:
        """May a client start another call? (duration not over, budget left)"""
        if self.stopping:
            return False
        if self.budget is not None and self.recorder.started >= self.budget:
            self.stopping = True
            return False
        return True

    async def client(self, index: int, seed: int) -> None:
        rng = random.Random(seed)
        sessions = [self.book.new_session(f"c{index}-s{k}")
                    for k in range(self.settings.sessions_per_client)]
        while self.take_ticket():
            kind = rng.choices(self._kinds, self._weights)[0]
            uses_session = kind == "session" or kind in ABANDON_KINDS
            state = rng.choice(sessions) if uses_session and sessions else None
            await self.one_call(kind, rng, state)

    async def one_call(self, kind: str, rng: random.Random,
                       state: SessionState | None = None, phase: str = "run") -> str:
        """Run one call and record it. Returns the outcome ("ok" or an error type).

        Cancellation is not recorded: a call cancelled because the runner gave
        up on it stays in flight, which is how hung calls are counted.
        """
        rec = self.recorder
        settings = self.settings
        rec.begin()
        started = trio.current_time()
        wait: float | None = None
        latency: float | None = None
        outcome = "ok"
        try:
            async with self.pool.checkout(session=state.name if state else None,
                                          timeout=settings.checkout_timeout) as lease:
                wait = trio.current_time() - started
                called = trio.current_time()
                if kind in ABANDON_KINDS:
                    command = "sleep"
                    problem = await self._give_up(kind, lease, state)
                    latency = trio.current_time() - called
                else:
                    command, args, timeout, check = self._plan(kind, rng, lease, state)
                    try:
                        result = await lease.call(command, args, timeout=timeout)
                    finally:
                        latency = trio.current_time() - called
                        if kind in FAULT_KINDS:
                            self.ledger.mark_time(lease.pid, kind, trio.current_time())
                    problem = check(result)
                if problem is not None:
                    outcome = "WrongResult"
                    if len(rec.wrong) < 20:
                        rec.wrong.append(f"{kind} {command}: {problem}")
        except SessionLost as exc:
            outcome = type(exc).__name__
            assert state is not None
            self.book.lost(state, exc, phase, self.pid_of_worker)
        except EngineError as exc:
            outcome = type(exc).__name__
        except Exception as exc:
            outcome = f"untyped:{type(exc).__name__}"
            rec.note_untyped(exc)  # the report prints the first tracebacks
            logger.debug("stress call %s ended with an untyped error", kind, exc_info=True)
        rec.end(kind, outcome, trio.current_time(), wait, latency)
        return outcome

    async def _give_up(self, kind: str, lease: Lease, state: SessionState | None) -> str | None:
        """A long sleep on the session's worker, given up mid-call: cancelled
        (``cancel``) or past its timeout (``timeout``). None if it went as planned."""
        settings = self.settings
        if state is not None:
            self._note_session(lease, state).given_up += 1
        args = {"seconds": settings.abandon_sleep}
        if kind == "timeout":
            try:
                result = await lease.call("sleep", args, timeout=settings.abandon_after)
            except CallTimeout:
                return None
            return f"a {settings.abandon_sleep:g} s sleep with a {settings.abandon_after:g} s " \
                   f"timeout answered {result!r}"
        with trio.move_on_after(settings.abandon_after) as scope:
            result = await lease.call("sleep", args, timeout=settings.call_timeout)
        if scope.cancelled_caught:
            return None
        return f"a {settings.abandon_sleep:g} s sleep cancelled after " \
               f"{settings.abandon_after:g} s answered {result!r}"

    def _note_session(self, lease: Lease, state: SessionState) -> Epoch:
        """The session's epoch (a new one if it was unbound), checking affinity."""
        if state.epoch is None:
            return self.book.bind(state, lease.worker_id, lease.pid)
        if state.epoch.pid != lease.pid:
            self.recorder.affinity_breaks.append(
                f"session {state.name!r} bound to pid {state.epoch.pid} was served by "
                f"pid {lease.pid}")
        return state.epoch

    # --- what each kind sends and how its answer is checked -------------------------

    def _plan(self, kind: str, rng: random.Random, lease: Lease,
              state: SessionState | None) -> tuple[str, Any, float | None, Any]:
        settings = self.settings
        timeout: float | None = settings.call_timeout
        if kind == "anon":
            if rng.random() < 0.75:
                payload = {"n": rng.randrange(1 << 30), "pad": "x" * settings.payload_bytes}
                return "echo", payload, timeout, _expect_equal(payload)
            n = settings.cpu_n
            return "cpu", {"n": n}, timeout, _expect_key("n", n)
        if kind == "slow":
            seconds = settings.slow_seconds
            return "sleep", {"seconds": seconds}, timeout, _expect_key("slept", seconds)
        if kind == "fail":
            return "fail", {"message": "stress"}, timeout, _never_ok
        if kind == "session":
            assert state is not None
            return self._session_plan(rng, lease, state)
        # Fault kinds. The first claim on a worker decides the cause of its death;
        # if a kill got there first the fault call simply meets a dead worker.
        self.ledger.claim(lease.pid, kind, slot=lease.slot, worker_id=lease.worker_id,
                          at=trio.current_time())
        if kind == "crash":
            self.pool.expect_death(lease.worker_id)  # counted, not logged per crash
            return "crash", {"code": CRASH_CODE}, timeout, _never_ok
        if kind == "hang":
            return "hang", {}, settings.hang_timeout, _never_ok
        # "garbage!" read as a length prefix is ~1.7 GB: a ProtocolError at once.
        return "garbage", {"data": "garbage!" * 4}, timeout, _never_ok

    def _session_plan(self, rng: random.Random, lease: Lease,
                      state: SessionState) -> tuple[str, Any, float | None, Any]:
        timeout = self.settings.call_timeout
        self._note_session(lease, state)
        if not state.programs or (len(state.programs) < 5 and rng.random() < 0.2):
            state.created += 1
            program_id = f"p{state.created}"
            args = {"id": program_id, "signature": {"inputs": ["a", "b"], "outputs": ["s"]},
                    "handler": "sum"}
            programs = state.programs

            def created(result: Any) -> str | None:
                if not isinstance(result, dict) or result.get("id") != program_id:
                    return f"create_program answered {result!r}"
                programs.append(program_id)
                return None

            return "create_program", args, timeout, created
        if rng.random() < 0.7:
            program_id = rng.choice(state.programs)
            a, b = rng.randrange(1000), rng.randrange(1000)
            args = {"id": program_id, "inputs": {"a": a, "b": b}}
            return "execute_program", args, timeout, _expect_equal({"outputs": {"s": a + b}})
        expected = len(state.programs)

        def listed(result: Any) -> str | None:
            if not isinstance(result, dict) or result.get("total_count") != expected:
                return f"list_programs expected {expected} programs, got {result!r}"[:300]
            return None

        return "list_programs", {}, timeout, listed


def _expect_equal(expected: Any) -> Any:
    def check(result: Any) -> str | None:
        if result != expected:
            return f"expected {expected!r}, got {result!r}"[:300]
        return None
    return check


def _expect_key(key: str, value: Any) -> Any:
    def check(result: Any) -> str | None:
        if not isinstance(result, dict) or result.get(key) != value:
            return f"expected {key}={value!r}, got {result!r}"[:300]
        return None
    return check


def _never_ok(result: Any) -> str | None:
    return f"a fault call answered {result!r} instead of failing"[:300]
