"""The public pool state machine: concurrent checkouts, calls, deaths and close.

:class:`PoolMachine` is a Hypothesis ``RuleBasedStateMachine`` that runs one
pool per example inside a :class:`~engine.testing.driver.TrioDriver` (guest mode)
and drives it with synchronous rules:

* checkouts (anonymous or for a session, with a checkout timeout), each a task
  holding its lease until a rule releases or cancels it; pending ones live in
  the ``checkouts`` bundle, so any of them can be cancelled at any point;
* calls on held leases (``ping``, ``echo``, and, when the app has them,
  ``sleep``, ``fail``, ``garbage``, ``crash``, ``hang``, ``create_program``,
  ``list_programs``), checked against what the command must return; and
  calls of *app commands* (named ones the machine does not know, or those
  whose argument shape the hello declares) with arguments drawn from that
  shape, any answer accepted and counted in ``app_calls``;
* deaths: kill a worker (idle, leased, or in the middle of a call), kill the
  worker selected for a hand-off before its check, or after the grant and
  before the waiter takes it (fault injection), cancel a checkout between
  selection and receipt; and the detection window: kill the worker holding a
  session's state and use the session at once, before the pool has noticed
  (``kill_and_use_session``: that call must get SessionLost, and the loss is
  never reported again);
* fake workers only: scripted next starts (slow, crash before or after the
  hello, bad hello, garbage or mis-numbered replies, fragmented replies, legacy
  list answers), killing a worker while it starts, and virtual time;
* ``end_session``, ``close``, and ``aclose()`` cancelled at a random point
  (leaving ``open_pool`` must still end within ``shutdown_grace`` plus the
  time to stop the workers);
* cooperative cancellation: a call cancelled (or timed out) mid-call with a
  handler that gives the request back, or one that never does (``sleep`` with
  ``"stubborn": true``, ``hang``); the caller keeps its lease (its next call
  drains the request first) or lets it go (the pool drains the worker in the
  background). A drained worker comes back with its sessions (fakes: always;
  real workers: unless it died), a stubborn one is killed once
  ``cancel_grace`` has passed, and nobody is granted a draining worker.

After every step it checks the invariants of design section 12: busy + ready +
starting <= size; every waiter queued or served, never both; no worker leased
twice; no dead worker handed over; sessions bound only to live workers, never
lost silently, and each loss reported exactly once (a session call that cost
its worker raises SessionLost from the crash, not the bare crash; a second
SessionLost for the same death is a double report); ``end_session`` never
raises for a worker's death; no waiter kept waiting beside an idle worker; every call
ended with a result or a typed error, and with its own result (every ``sleep``
answers its own, unique, seconds: a stale reply of an abandoned request
reaching a later caller is caught); after close, no process left.

Make a concrete machine with :func:`pool_machine`::

    FakePoolMachine = pool_machine(workers="fake")
    TestFakePool = FakePoolMachine.TestCase

    RealPoolMachine = pool_machine(workers="real", app="myproject.worker:app")

With ``workers="fake"`` time is virtual (a ``MockClock`` moved by the
``advance`` rule) and each step runs until the Trio run is idle; with
``workers="real"`` every process is a real subprocess and the clock is real:
each step runs until nothing is in transit (no worker starting or stopping, no
call in flight, every waiting checkout queued), so use few examples. A failure
message ends with the pool's state (slots, recent transitions), because a run
with real processes may not replay exactly.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from typing import Any, ClassVar, Literal

import attrs
import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from engine import shapes, telemetry
from engine.errors import (
    CallTimeout,
    EngineError,
    PoolClosed,
    ProtocolError,
    RemoteError,
    SessionLost,
    WorkerCrashed,
)
from engine.pool.introspection import PoolView
from engine.pool.lifecycle import WorkerState
from engine.pool.pool import Pool, open_pool
from engine.process.procfs import pid_alive
from engine.testing.driver import ContextHandle, DriverTimeout, TaskHandle, TrioDriver
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.testing.faults import FaultRecord, inject_fault, kill_and_settle
from engine.testing.strategies import from_schema
from engine.workers.app import BUILTIN_COMMANDS

__all__ = ["Checkout", "PoolMachine", "pool_machine"]

S = WorkerState
SESSIONS = st.sampled_from([None, None, "s1", "s2"])
SLOT_PICKS = st.integers(0, 7)
KNOWN_COMMANDS = frozenset({"ping", "echo", "sleep", "fail", "garbage", "crash", "hang",
                            "create_program", "list_programs"})
COMMANDS = st.sampled_from(["ping", "echo", "echo", "sleep", "fail", "garbage", "crash", "hang",
                            "create_program", "list_programs", "list_programs"])
#: Errors a call may end with when its worker died or was found broken.
_DEATH = (WorkerCrashed, ProtocolError, CallTimeout, PoolClosed)

# Scripts a fake worker may be started with (rule ``plan_next_start``).
PLANS: dict[str, Script] = {
    "slow": Script(start_delay=2.0),
    "crash_before_hello": Script(crash_before_hello=3),
    "bad_hello": Script(bad_hello=True),
    "crash_after_hello": Script(crash_after=1.0, crash_code=9),
    "legacy_lists": Script(program_list="legacy"),
    "fragmented_replies": Script(reply_mode="fragmented"),
    "wrong_reply_ids": Script(reply_mode="wrong_id"),
    "garbage_replies": Script(reply_mode="garbage"),
    "truncated_replies": Script(reply_mode="truncated"),
}


@attrs.define(eq=False)
class CallRecord:
    command: str
    args: Any
    timeout: float | None
    worker_id: str
    session: str | None
    broken_before: bool  # the lease's worker was already dead or broken
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    checked: bool = False
    killed_during: bool = False
    closed_during: bool = False
    cancelled: bool = False
    #: How the worker treats the abandon of this call: "yields" or "stubborn".
    abandon: str = "yields"
    #: The lease's previous call was abandoned in flight ("yields"/"stubborn"):
    #: this call first drains it.
    after_abandon: str | None = None
    scope: trio.CancelScope | None = None  # cancels this call only


@attrs.define(eq=False)
class DrainExpected:
    """A lease released with its last call abandoned: its worker drains."""

    worker_id: str
    abandon: str  # "yields" or "stubborn"
    plain: bool  # no scripted fault that could break the drain (fakes)
    outcome: str | None = None  # from the worker.drained event
    reason: str = ""


@attrs.define(eq=False)
class Checkout:
    """One checkout: a task that requests a lease, holds it and makes calls."""

    number: int
    session: str | None
    timeout: float
    handle: TaskHandle[None] | None = None
    phase: Literal["requesting", "holding", "calling", "done"] = "requesting"
    worker: Any = None
    worker_id: str | None = None
    slot: int | None = None
    lease: Any = None
    ops: trio.MemorySendChannel[tuple[str, Any]] | None = None
    calls: list[CallRecord] = attrs.Factory(list)
    error: BaseException | None = None
    received: bool = False
    broken: bool = False
    cancel_at_handoff: bool = False
    settled: bool = False
    one_call: tuple[str, int, Any] | None = None  # make this call, then release
    #: The last call was abandoned in flight ("yields"/"stubborn"): the worker
    #: drains it before the next call, or in the background after release.
    pending_abandon: str | None = None

    def __repr__(self) -> str:
        return f"<checkout {self.number} session={self.session!r} {self.phase}>"


class PoolMachine(RuleBasedStateMachine):
    """The pool state machine; configure it with :func:`pool_machine`."""

    workers: ClassVar[Literal["fake", "real"]] = "fake"
    app: ClassVar[str] = "engine.workers.programs"
    sizes: ClassVar[tuple[int, ...]] = (1, 2, 3)
    max_checkouts: ClassVar[int] = 5
    settle_timeout: ClassVar[float] = 30.0
    checkout_timeouts: ClassVar[tuple[float, ...]] = (0.5, 3.0)
    call_timeout: ClassVar[float] = 1.0
    extra_config: ClassVar[dict[str, Any]] = {}
    #: Known pool bugs to tolerate (each a name below), so a suite can stay green
    #: while a reported bug awaits its fix: "dead_worker_after_grant".
    tolerate: ClassVar[frozenset[str]] = frozenset()
    #: App commands the machine may call (None: all of the app's; ping always).
    #: Named commands the machine does not know are *app commands*: called
    #: with arguments of their declared shape (random JSON if undeclared), any
    #: answer accepted, each outcome counted in :attr:`app_calls`.
    allowed_commands: ClassVar[frozenset[str] | None] = None
    #: Also call, as app commands, every command whose shape the hello declares.
    call_declared: ClassVar[bool] = False
    #: Outcomes of app-command calls on healthy workers over every example:
    #: ``(command, "ok")`` or ``(command, <remote error type>)``.
    app_calls: ClassVar[collections.Counter[tuple[str, str]]]
    #: Totals over every example run by this class (the campaign reports them).
    totals: ClassVar[collections.Counter[str]]

    checkouts = Bundle("checkouts")

    def __init__(self) -> None:
        super().__init__()
        type(self).totals["examples"] += 1
        self.driver: TrioDriver = None  # type: ignore[assignment]
        self.pool: Pool = None  # type: ignore[assignment]
        self.ctx: ContextHandle[Pool] | None = None
        self.factory: FakeWorkerFactory | None = None
        self.numbers = itertools.count(1)
        self.program_ids = itertools.count(1)
        self.active: list[Checkout] = []
        self.violations: list[str] = []
        self.commands: set[str] = {"ping"}
        self.app_commands: list[str] = []
        self.app_args: dict[str, st.SearchStrategy[Any]] = {}
        self.closed = False
        self.fault_cm: Any = None
        self.fault: FaultRecord | None = None
        self.fault_kind: str | None = None
        self.handoff_cancels: list[tuple[int, str, Checkout]] = []
        self.seen: dict[str, Any] = {}  # worker id -> handle, every worker ever used
        self.bound: dict[str, str] = {}  # session -> worker id holding its state (model)
        self.unreported: collections.Counter[str] = collections.Counter()
        self.moved: list[tuple[str, str, str, Checkout]] = []
        self.programs: dict[tuple[str, str | None], set[str]] = {}
        self.real_pids: set[int] = set()
        self.tolerated: collections.Counter[str] = collections.Counter()
        self.drains: list[DrainExpected] = []
        self.drain_events: list[dict[str, Any]] = []
        self.killed_ids: set[str] = set()  # workers a rule killed
        #: Session -> the worker whose death was reported as its loss, until the
        #: session is bound again: a second SessionLost naming that worker is a
        #: double report.
        self.reported_lost: dict[str, str | None] = {}
        self.sleep_ids = itertools.count(1)
        self.telemetry_id: str | None = None

    @property
    def fake(self) -> bool:
        return self.workers == "fake"

    # --- the run -----------------------------------------------------------------------

    @initialize(size_pick=st.integers(0, 5))
    def start_pool(self, size_pick: int) -> None:
        size = self.sizes[size_pick % len(self.sizes)]
        self.driver = TrioDriver(clock=trio.testing.MockClock() if self.fake else None,
                                 timeout=self.settle_timeout)
        self.driver.start()
        config: dict[str, Any] = {
            "app": self.app, "size": size, "checkout_timeout": max(self.checkout_timeouts),
            "call_timeout": self.call_timeout, "restart_backoff": (0.05, 0.5, 1.0),
            "max_restarts": 1000, "restart_cooldown": 0.5, "shutdown_grace": 0.5,
            "start_timeout": 5.0 if self.fake else 30.0, "seed": 0,
            **self.extra_config,
        }
        if self.fake:
            self.factory = FakeWorkerFactory(Script(), grace=0.5)
            config["worker_factory"] = self.factory
        self.ctx = self.driver.enter_handle(open_pool(**config))
        self.pool = self.ctx.value
        label = self.pool.label
        self.telemetry_id = f"pool-machine-{label}"
        telemetry.attach(self.telemetry_id, [telemetry.WORKER_DRAINED],
                         lambda event, measurements, metadata: self.drain_events.append(
                             dict(metadata)) if metadata["pool"] == label else None)
        self.settle()
        schemas: dict[str, Any] = {}
        for slot in self.pool.inspect().slots:
            if slot.worker is not None:
                self.commands = set(slot.worker.hello.commands)
                schemas = slot.worker.hello.schemas
                break
        named: set[str] = set()
        if self.allowed_commands is not None:
            self.commands &= self.allowed_commands
            named = set(self.allowed_commands)
        if self.call_declared:
            named |= set(schemas)
        # Called even when the app lacks them: the UnknownCommand answers are
        # counted, so a campaign naming a wrong command is a finding.
        self.app_commands = sorted(named - KNOWN_COMMANDS - set(BUILTIN_COMMANDS))
        self.commands |= {"ping", *self.app_commands}
        self.app_args = {name: from_schema(schemas.get(name, {})) for name in self.app_commands}

    def teardown(self) -> None:
        try:
            self.disarm_fault()
        finally:
            if self.telemetry_id is not None:
                telemetry.detach(self.telemetry_id)
            if self.driver is not None:
                self.driver.close()
            if self.pool is not None:
                # Deaths this example caused on purpose, for the campaign's summary.
                type(self).totals["expected_deaths"] += \
                    self.pool.metrics().counters.get("expected_deaths", 0)
        if self.factory is not None:
            left = [w.worker_id for w in self.factory.unreaped]
            assert not left, f"fake workers never reaped after close: {left}"
        alive = [pid for pid in self.real_pids if pid_alive(pid)]
        assert not alive, f"worker processes left after close: {alive}"

    def settle(self, until: Any = None) -> None:
        """Let the run go until nothing more happens, then check what happened.

        Fake workers: until the run is idle (virtual time stands still). Real
        workers: until ``until()`` holds and nothing is in transit (:meth:`quiet`).
        """
        type(self).totals["steps"] += 1
        if self.fake:
            self.driver.pump()
        else:
            try:
                self.driver.pump(until=lambda: (until is None or until()) and self.quiet(),
                                 timeout=self.settle_timeout)
            except DriverTimeout as exc:
                raise DriverTimeout(f"the pool did not settle within {self.settle_timeout:g}s "
                                    f"({exc})\n{self.describe()}") from None
        self.after_settle()

    def quiet(self) -> bool:
        """Real workers: nothing is in transit (starting, stopping, running a call)."""
        view = self.pool.inspect()
        if view.closing and not self.closed:
            return False
        for slot in view.slots:
            if slot.state in (S.STARTING, S.STOPPING, S.DRAINING):
                return False
            if slot.state is S.STOPPED and slot.wanted and not view.closing:
                return False
            if slot.state in (S.READY, S.BUSY, S.DEGRADED):
                worker = slot.worker
                if worker is None:
                    return False
                # A leased worker whose channel broke (garbage, timeout) stays
                # until its lease ends; a dead process must first be noticed.
                fit = _process_running(worker) if slot.state is S.BUSY else worker.is_alive()
                if not fit:
                    return False
        requesting = 0
        for c in self.active:
            if c.phase == "requesting":
                requesting += 1
            elif c.phase == "calling":
                return False
        return requesting == len(view.queue)

    # --- model upkeep after each settle --------------------------------------------

    def after_settle(self) -> None:
        view = self.pool.inspect()
        for slot in view.slots:
            if slot.worker is not None:
                self.remember(slot.worker)
        for session, binding in view.bindings.items():
            # A binding made for a checkout cancelled before receipt is not in the
            # model yet: learn it (which worker holds that session's state).
            if binding.lost is None and binding.worker_id is not None \
                    and self.alive(binding.worker_id):
                self.bound.setdefault(session, binding.worker_id)
                self.reported_lost.pop(session, None)
        for c in list(self.active):
            for record in c.calls:
                if record.done and not record.checked:
                    self.check_call(c, record)
            if c.phase == "done":
                self.finish(c)
        self.check_fault()
        self.check_drains()
        for session, dead, fresh, c in self.moved:
            if self.unreported[session] > 0:
                self.violations.append(f"session {session!r} lost its state silently: {dead} "
                                       f"died and {c!r} got {fresh}; nobody got SessionLost")
        self.moved.clear()
        self.unreported.clear()
        if self.violations:
            raise AssertionError("; ".join(self.violations))

    def remember(self, worker: Any) -> None:
        self.seen.setdefault(worker.worker_id, worker)
        os_pid = getattr(worker, "os_pid", None)
        if os_pid is not None:
            self.real_pids.add(os_pid)

    def alive(self, worker_id: str) -> bool:
        worker = self.seen.get(worker_id)
        return worker is not None and worker.is_alive()

    def finish(self, c: Checkout) -> None:
        self.active.remove(c)
        c.settled = True
        error = c.error
        if error is None:
            return
        if not isinstance(error, EngineError):
            self.violations.append(f"{c!r} ended with untyped {error!r}")
        elif c.received:
            self.violations.append(f"{c!r} failed after receipt with {error!r}")

    # --- the checkout task ------------------------------------------------------------

    async def hold(self, c: Checkout) -> None:
        send, receive = trio.open_memory_channel[tuple[str, Any]](100)
        c.ops = send
        try:
            async with self.pool.checkout(session=c.session, timeout=c.timeout) as lease:
                self.received(c, lease)
                if c.one_call is not None:
                    c.phase = "calling"
                    await self.run_call(c, lease, self.new_call(c, *c.one_call))
                    return
                async for kind, payload in receive:
                    if kind == "release":
                        break
                    assert isinstance(payload, CallRecord)
                    c.phase = "calling"
                    await self.run_call(c, lease, payload)
                    c.phase = "holding"
        except EngineError as exc:
            c.error = exc
            if isinstance(exc, SessionLost):
                self.session_lost(c)
        except Exception as exc:
            c.error = exc
            self.violations.append(f"{c!r}: checkout raised untyped {exc!r}")
        finally:
            c.phase = "done"
            if c.pending_abandon is not None and c.worker_id is not None:
                # Released with its last call abandoned: the worker drains now.
                self.drains.append(DrainExpected(
                    c.worker_id, c.pending_abandon, plain=self.plain(c.worker_id)))

    def session_lost(self, c: Checkout) -> None:
        """Runs in the checkout's task when it gets SessionLost: was the state gone?

        Tasks woken in the same scheduler pass run in any order, so the caller
        told about the loss may run after another caller of the session already
        took a fresh worker: that one left an unreported loss, which this pays.
        """
        assert c.session is not None
        lost_worker = getattr(c.error, "worker_id", None)
        if c.session in self.reported_lost and self.reported_lost[c.session] == lost_worker:
            self.violations.append(f"{c!r}: the loss of session {c.session!r} was reported "
                                   "twice")
        if self.unreported[c.session] > 0:
            self.unreported[c.session] -= 1
            return
        worker_id = self.bound.pop(c.session, None)
        if worker_id is not None and self.alive(worker_id):
            self.violations.append(f"{c!r}: SessionLost although worker {worker_id}, "
                                   "which holds the session, is alive")

    def received(self, c: Checkout, lease: Any) -> None:
        """Runs in the checkout's task the moment it holds the lease."""
        c.received = True
        c.phase = "holding"
        c.lease = lease
        c.slot = lease.slot
        c.worker_id = lease.worker_id
        view = self.pool.inspect()
        worker = view.slots[lease.slot].worker
        c.worker = worker
        if worker is None or worker.worker_id != lease.worker_id:
            self.violations.append(f"{c!r} leased {lease.worker_id}, not its slot's worker")
            return
        self.remember(worker)
        if not worker.is_alive():
            killed_after_grant = self.fault_kind == "kill_after_grant" and self.fault is not None \
                and lease.worker_id in self.fault.worker_ids
            if killed_after_grant and "dead_worker_after_grant" in self.tolerate:
                self.tolerated["dead_worker_after_grant"] += 1
                c.broken = True
            else:
                self.violations.append(f"{c!r} was handed dead worker {lease.worker_id}")
        for other in self.active:
            if other is not c and other.phase in ("holding", "calling") \
                    and other.worker_id == lease.worker_id and not other.broken:
                self.violations.append(f"worker {lease.worker_id} leased to {other!r} and {c!r}")
        if c.session is not None:
            self.reported_lost.pop(c.session, None)  # bound afresh
            binding = view.bindings.get(c.session)
            if binding is None or binding.slot != lease.slot:
                self.violations.append(f"{c!r} for session {c.session!r} not routed to "
                                       "its bound worker")
            expected = self.bound.get(c.session)
            if expected is not None and expected != lease.worker_id:
                if self.alive(expected):
                    self.violations.append(f"session {c.session!r} lives in {expected} but "
                                           f"{c!r} got {lease.worker_id}")
                else:
                    # The session's worker died and it starts afresh elsewhere:
                    # someone must be told SessionLost (checked after the settle).
                    self.unreported[c.session] += 1
                    self.moved.append((c.session, expected, lease.worker_id, c))
            self.bound[c.session] = lease.worker_id

    async def run_call(self, c: Checkout, lease: Any, record: CallRecord) -> None:
        record.after_abandon, c.pending_abandon = c.pending_abandon, None
        try:
            with trio.CancelScope() as record.scope:
                record.result = await lease.call(record.command, record.args,
                                                 timeout=record.timeout)
            if record.scope.cancelled_caught:
                record.cancelled = True  # this call only (cancel_mid_call)
        except (EngineError, trio.ClosedResourceError) as exc:  # LeaseReleased included
            record.error = exc
        except trio.Cancelled:
            record.cancelled = True  # our own cancellation (the cancel rule)
            raise
        except Exception as exc:
            record.error = exc
            self.violations.append(f"call {record.command!r} raised untyped {exc!r}")
        finally:
            record.done = True
            worker = c.worker
            if worker is not None and getattr(worker, "abandoned", False):
                # Cancelled or timed out with its request in flight; or while it
                # still waited for a stubborn request, which stays the one owed.
                c.pending_abandon = "stubborn" if record.after_abandon == "stubborn" \
                    else record.abandon

    # --- call expectations --------------------------------------------------------

    def script_of(self, worker_id: str) -> Script:
        if self.factory is None:
            return Script()
        try:
            return self.factory.worker(worker_id).script
        except KeyError:  # pragma: no cover - every fake is recorded
            return Script()

    def check_call(self, c: Checkout, record: CallRecord) -> None:
        record.checked = True
        error, result, command = record.error, record.result, record.command
        what = f"{c!r} call {command!r}"
        if error is not None and not isinstance(error, EngineError | trio.ClosedResourceError):
            self.violations.append(f"{what} ended with untyped {error!r}")
            return
        error = self.session_loss_of_call(record, what)
        if isinstance(error, _DEATH) and not (
                isinstance(error, CallTimeout) and self.pool.config.cancel_grace > 0):
            c.broken = True  # (a timed-out call's worker is drained, not killed)
        if record.cancelled:
            return  # cancelled by the caller: nothing to expect of its result
        if record.broken_before:
            if not isinstance(error, _DEATH):
                self.violations.append(f"{what} on a dead lease gave {error or result!r}")
            return
        if record.closed_during and (error is None or isinstance(error, _DEATH)):
            return  # finished within shutdown_grace, or cut short by the close
        if isinstance(error, WorkerCrashed) and (record.killed_during
                                                  or not self.alive(record.worker_id)):
            return  # the worker died (a kill, or a scripted crash): a correct answer
        if record.killed_during:
            self.violations.append(f"{what}: worker killed mid-call but got {error or result!r}")
            return
        if record.after_abandon is not None and self.check_after_abandon(c, record, what):
            return
        if command in self.app_args:
            # An app command on a healthy worker: whatever it answers is the
            # app's business, but a campaign reports commands that mostly fail.
            if error is None or isinstance(error, RemoteError):
                outcome = "ok" if error is None else error.type
                type(self).app_calls[(command, outcome)] += 1
                return
        expected = self.expected_error(record)
        if expected is not None:
            if not isinstance(error, expected):
                self.violations.append(f"{what}: expected {expected.__name__}, "
                                       f"got {error or result!r}")
            return
        if error is not None:
            self.violations.append(f"{what}: expected a result, got {error!r}")
            return
        self.check_result(c, record, what)

    def session_loss_of_call(self, record: CallRecord, what: str) -> BaseException | None:
        """A session's call that cost its worker reports the loss itself, once:
        SessionLost with the crash, timeout or protocol error as its cause (the
        error judged below), unless the loss was already reported (then the
        bare error). Returns the error to judge."""
        error, session = record.error, record.session
        if isinstance(error, SessionLost):
            if session is None or not isinstance(error.__cause__, _DEATH):
                self.violations.append(f"{what}: SessionLost without a death to report: "
                                       f"{error!r} (cause {error.__cause__!r})")
                return error
            self.loss_reported(session)
            rebound = self.pool.inspect().bindings.get(session)
            if rebound is None or rebound.lost is not None:  # not bound afresh since
                self.reported_lost[session] = error.worker_id
            return error.__cause__
        kept = isinstance(error, CallTimeout) and self.pool.config.cancel_grace > 0
        if session is not None and isinstance(error, WorkerCrashed | ProtocolError | CallTimeout) \
                and not kept and self.bound.get(session) == record.worker_id \
                and self.unreported[session] == 0 and session not in self.reported_lost:
            self.violations.append(f"{what}: session {session!r} lost its state in this call "
                                   f"but got {error!r}, not SessionLost")
        return error

    def loss_reported(self, session: str) -> None:
        """A caller was told that ``session``'s state is gone (model upkeep)."""
        if self.unreported[session] > 0:
            self.unreported[session] -= 1
            return
        self.bound.pop(session, None)

    def check_after_abandon(self, c: Checkout, record: CallRecord, what: str) -> bool:
        """A call after an abandoned one on the same lease drained it first.
        True if that decided the outcome (the drain failed: WorkerCrashed)."""
        error = record.error
        stubborn = record.after_abandon == "stubborn"
        if isinstance(error, WorkerCrashed):
            # The worker was killed: after the grace (a stubborn handler, or
            # a real one whose request was abandoned before it could start is
            # given back at once, see below), or its scripted faults broke the
            # drain.
            if not stubborn and self.plain(record.worker_id):
                self.violations.append(f"{what}: a cooperative handler's abandoned request "
                                       f"was not drained: {error!r}")
            c.broken = True
            return True
        if stubborn and isinstance(error, CallTimeout) and record.timeout is not None \
                and record.timeout < self.pool.config.cancel_grace:
            # Its own deadline covers the wait for the stubborn request, which
            # never comes back: it passed first (the drain goes on after it).
            return True
        if stubborn and self.fake and error is None and self.plain(record.worker_id):
            self.violations.append(f"{what}: a stubborn handler's abandoned request was "
                                   f"drained (it never gives it back): {record.result!r}")
            return True
        return False  # drained: the call itself is checked as usual

    def plain(self, worker_id: str) -> bool:
        """No scripted fault of this (fake) worker can break or delay a drain."""
        script = self.script_of(worker_id)
        return script.reply_mode in ("normal", "fragmented") and not script.faults \
            and script.crash_after is None and script.on_abandon == "yield" \
            and script.abandon_delay == 0

    def check_drains(self) -> None:
        """Match the worker.drained events with the drains expected."""
        events = self.drain_events
        self.drain_events = []
        for event in events:
            expected = next((d for d in self.drains if d.outcome is None
                             and d.worker_id == event["worker_id"]), None)
            if expected is None:
                continue  # e.g. a health probe's, or a worker drained twice
            expected.outcome, expected.reason = event["outcome"], event["reason"]
            type(self).totals[f"drained_{expected.abandon}_{expected.outcome}"] += 1
        for d in self.drains:
            if d.outcome is None:
                continue
            died = "went away" in d.reason or d.worker_id in self.killed_ids \
                or self.pool.closed or not d.plain
            if d.outcome == "killed" and d.abandon == "yields" and not died:
                self.violations.append(f"worker {d.worker_id}: a cooperative handler's "
                                       f"abandoned request was not drained: {d.reason}")
            if d.outcome == "killed" and d.abandon == "stubborn" and not died \
                    and "cancel_grace" not in d.reason:
                self.violations.append(f"worker {d.worker_id} killed while draining for "
                                       f"another reason than its grace: {d.reason}")
            if d.outcome == "clean" and d.abandon == "stubborn" and self.fake and d.plain:
                self.violations.append(f"worker {d.worker_id}: a stubborn handler was "
                                       "drained clean (it never gives the request back)")
            if d.outcome == "clean" and not self.pool.closed \
                    and d.worker_id not in self.killed_ids and not self.alive(d.worker_id):
                self.violations.append(f"worker {d.worker_id} drained clean but is gone")
        self.drains = [d for d in self.drains if d.outcome is None]

    def expected_error(self, record: CallRecord) -> type[BaseException] | None:
        """The error a call must end with on a healthy lease (None: a result).

        In the order things happen in the worker: a scripted hang or crash comes
        before the handler; then the handler (hang, crash, a sleep past the
        timeout; garbage writes its raw bytes first); then the scripted reply
        mode; then the handler's own failure.
        """
        command = record.command
        script = self.script_of(record.worker_id)
        mode = script.faults.get(command, script.reply_mode)
        if mode == "crash":
            return WorkerCrashed
        if mode == "hang" or command == "hang":
            return CallTimeout
        if command == "crash":
            return WorkerCrashed
        if command == "sleep" and record.timeout is not None \
                and record.args["seconds"] >= record.timeout:
            return CallTimeout
        if command == "garbage":
            return ProtocolError
        if mode in ("wrong_id", "garbage"):
            return ProtocolError
        if mode == "truncated":
            return WorkerCrashed
        if command == "fail":
            return RemoteError
        return None

    def check_result(self, c: Checkout, record: CallRecord, what: str) -> None:
        result, command = record.result, record.command
        key = (record.worker_id, record.session)
        if command == "ping":
            if not isinstance(result, dict) or result.get("worker_id") != record.worker_id:
                self.violations.append(f"{what}: answered by {result!r}, not the leased worker")
        elif command == "echo":
            if result != record.args:
                self.violations.append(f"{what}: echoed {result!r} for {record.args!r}")
        elif command == "sleep":
            if result != {"slept": record.args["seconds"]}:
                self.violations.append(f"{what}: {result!r} is not this sleep's answer "
                                       f"(a stale reply?)")
        elif command == "create_program":
            self.programs.setdefault(key, set()).add(record.args["id"])
        elif command == "list_programs":
            try:
                parsed = shapes.parse_program_list(result)
            except EngineError as exc:
                self.violations.append(f"{what}: answer {result!r} did not normalise: {exc}")
                return
            if not isinstance(parsed, shapes.ProgramList):
                self.violations.append(f"{what}: parse_program_list gave {parsed!r}")
                return
            if self.script_of(record.worker_id).program_list == "map" \
                    and not isinstance(result, dict):
                self.violations.append(f"{what}: a current worker answered {result!r}, "
                                       "not the map")
            ids = {p.id for p in parsed.programs}
            if ids != self.programs.get(key, set()):
                self.violations.append(f"{what}: programs {sorted(ids)} but the session "
                                       f"created {sorted(self.programs.get(key, set()))}")

    # --- rules: checkouts ------------------------------------------------------------

    # Real workers are not deterministic: a precondition that reads the pool's
    # state could change which rules Hypothesis may draw on replay (a "flaky"
    # strategy). With real workers those rules are always enabled and do nothing
    # when they do not apply; fakes keep the preconditions (fewer wasted steps).
    @precondition(lambda self: not self.fake or len(self.active) < self.max_checkouts)
    @rule(target=checkouts, session=SESSIONS, timeout_pick=st.integers(0, 1),
          then=st.sampled_from(["hold", "call", "call"]), command=COMMANDS,
          arg=st.integers(0, 3), data=st.data())
    def checkout(self, session: str | None, timeout_pick: int, then: str, command: str,
                 arg: int, data: st.DataObject) -> Checkout:
        """Start a checkout: it holds its lease until a rule releases or cancels it
        (``hold``), or makes one call and releases (``call``, what pool.call does)."""
        timeout = self.checkout_timeouts[timeout_pick % len(self.checkout_timeouts)]
        planned = self.plan_call(command, arg, data) if then == "call" else None
        c = Checkout(next(self.numbers), session, timeout, one_call=planned)
        if len(self.active) >= self.max_checkouts:
            return self.skipped(c)
        self.active.append(c)
        c.handle = self.driver.spawn(self.hold, c, name=f"checkout {c.number}")
        self.settle()
        return c

    @rule(c=consumes(checkouts))
    def release(self, c: Checkout) -> None:
        """End the checkout block normally (the lease goes back)."""
        if c.phase in ("holding", "calling") and c.ops is not None:
            ops = c.ops
            self.driver.call_soon(lambda: ops.send_nowait(("release", None)))
        elif c.handle is not None and not c.handle.done:
            c.handle.cancel()  # still waiting for a worker: give up
        self.settle(until=lambda: c.phase == "done" or c.phase == "calling")
        if c.phase == "holding" and c.lease is not None and self.pool is not None:
            self.violations.append(f"{c!r} still holds its lease after release")

    @rule(c=consumes(checkouts))
    def cancel(self, c: Checkout) -> None:
        """Cancel the checkout's task wherever it is: queued, holding, mid-call."""
        if c.handle is not None and not c.handle.done:
            c.handle.cancel()
        self.settle(until=lambda: c.handle is None or c.handle.done)
        if c.handle is not None and not c.handle.done:
            self.violations.append(f"{c!r} did not end when cancelled")
            raise AssertionError("; ".join(self.violations))

    @precondition(lambda self: not self.fake or any(c.phase == "holding" for c in self.active))
    @rule(pick=SLOT_PICKS, command=COMMANDS, arg=st.integers(0, 3))
    def call(self, pick: int, command: str, arg: int) -> None:
        """One call on a held lease (the command is skipped if the app lacks it)."""
        self.call_on_held(pick, self.plan_call(command, arg, None))

    # Its own rule, enabled only for an app with app commands (a fact of its
    # hello, so replays agree): an st.data() argument on ``call`` itself
    # changed which rules Hypothesis draws for every machine.
    @precondition(lambda self: bool(self.app_commands))
    @rule(pick=SLOT_PICKS, arg=st.integers(0, 3), data=st.data())
    def call_app_command(self, pick: int, arg: int, data: st.DataObject) -> None:
        """One call of an app command on a held lease, with drawn arguments."""
        self.call_on_held(pick, self.plan_call(self.app_commands[0], arg, data))

    def call_on_held(self, pick: int, planned: tuple[str, int, Any]) -> None:
        holding = [c for c in self.active if c.phase == "holding"]
        if not holding:
            return
        c = holding[pick % len(holding)]
        record = self.new_call(c, *planned)
        ops = c.ops
        assert ops is not None
        c.phase = "calling"  # what the task will be doing once it reads the op
        self.driver.call_soon(lambda: ops.send_nowait(("call", record)))
        self.settle()

    @precondition(lambda self: not self.fake or any(c.phase == "holding" for c in self.active))
    @rule(pick=SLOT_PICKS, stubborn=st.booleans(), how=st.sampled_from(["cancel", "timeout"]))
    def cancel_mid_call(self, pick: int, stubborn: bool, how: str) -> None:
        """A long ``sleep`` on a held lease, then its caller gives up mid-call:
        cancelled (``how="cancel"``) or past its timeout. The handler gives the
        request back (cooperative) or never does (``stubborn``). The caller
        keeps its lease: a later rule calls again (which drains first),
        releases it or cancels it (the pool drains the worker)."""
        holding = [c for c in self.active if c.phase == "holding"]
        if not holding or "sleep" not in self.commands:
            self.settle()
            return
        c = holding[pick % len(holding)]
        record = self.new_call(c, "sleep", 0)
        record.args = {"seconds": 500.0 + next(self.sleep_ids) * 1e-6, "stubborn": stubborn}
        record.timeout = 0.5 if how == "timeout" else 10_000.0
        if stubborn:
            record.abandon = "stubborn"
            self.expect_grace_kill(c)
        ops = c.ops
        assert ops is not None
        c.phase = "calling"
        self.driver.call_soon(lambda: ops.send_nowait(("call", record)))
        if self.fake:
            self.driver.pump()  # the fake handler is running now
        else:
            # Let a real worker start the handler (else it is abandoned before
            # it starts, which is answered at once: also correct, but not the
            # interesting case). The host's clock: a step, not an assertion.
            began = time.monotonic()
            self.driver.pump(until=lambda: time.monotonic() - began >= 0.2 or record.done,
                             timeout=self.settle_timeout)
        if how == "cancel":
            scope_of = record

            def cancel() -> None:
                if scope_of.scope is not None:
                    scope_of.scope.cancel()

            self.driver.call_soon(cancel)
            self.settle(until=lambda: record.done)
        elif self.fake:
            self.driver.advance(0.5)  # the call's timeout
            self.settle()
        else:
            self.settle(until=lambda: record.done)
        if record.done and record.error is None and not record.cancelled \
                and not record.broken_before and not record.killed_during:
            self.violations.append(f"{c!r}: a 500 s sleep given up after at most 0.5 s "
                                   f"answered {record.result!r}")
        if self.violations:
            raise AssertionError("; ".join(self.violations))

    def plan_call(self, command: str, arg: int,
                  data: st.DataObject | None) -> tuple[str, int, Any]:
        """The command to call (one the app has: the machine's own, or, given
        ``data``, an app command) and, for an app command, its drawn arguments."""
        if data is None:
            if command not in self.commands or command in self.app_args:
                # The app lacks it: use one the machine knows that the app has.
                known = sorted(self.commands & KNOWN_COMMANDS) or ["ping"]
                command = known[(arg + len(command)) % len(known)]
            return command, arg, None
        if self.app_commands:
            # Mostly the app's own commands: they are what a campaign is about.
            chosen = data.draw(st.sampled_from([*self.app_commands, None]), label="app command")
            command = command if chosen is None else chosen
        if command not in self.commands:
            # The app lacks it: use one the machine knows that the app has.
            known = sorted(self.commands & KNOWN_COMMANDS) + self.app_commands or ["ping"]
            command = known[(arg + len(command)) % len(known)]
        args = data.draw(self.app_args[command], label=f"{command} args") \
            if command in self.app_args else None
        return command, arg, args

    def new_call(self, c: Checkout, command: str, arg: int, app_args: Any = None) -> CallRecord:
        args: Any = app_args
        timeout: float | None = None
        if command == "echo":
            args = [arg, {"n": arg, "s": "x" * arg}]
        elif command == "sleep":
            # Unique seconds: each sleep's answer is its own.
            seconds = [0.02, 0.1, 1.0, 0.0][arg] + next(self.sleep_ids) * 1e-6
            args, timeout = {"seconds": seconds}, 0.5  # the third one times out
        elif command == "hang":
            timeout = [0.2, 0.5, 0.2, 0.5][arg]
        elif command == "garbage":
            args = {"data": "xxxx"}  # reads as a frame length far above the limit
        elif command == "crash":
            args = {"code": 3}
            if c.worker_id is not None:
                self.pool.expect_death(c.worker_id)
        elif command == "fail":
            args = {"message": f"planned failure {arg}"}
        elif command == "create_program":
            args = {"id": f"p{next(self.program_ids)}", "handler": "echo",
                    "signature": {"inputs": ["x"], "outputs": ["x"]}}
        assert c.worker_id is not None
        worker = self.seen.get(c.worker_id)
        record = CallRecord(command, args, timeout, c.worker_id, c.session,
                            broken_before=c.broken or worker is None or not worker.is_alive()
                            or self.pool.closed)
        script = self.script_of(c.worker_id)
        if command == "hang" or script.faults.get(command, script.reply_mode) == "hang" \
                or script.on_abandon == "never":
            record.abandon = "stubborn"
            self.expect_grace_kill(c)
        c.calls.append(record)
        return record

    def expect_grace_kill(self, c: Checkout) -> None:
        """A stubborn call: once given up, its worker is killed after
        cancel_grace, a death this machine caused on purpose (counted, not
        logged as a crash, when the lease's own next call finds it)."""
        if c.worker_id is not None:
            self.pool.expect_death(c.worker_id)

    # --- rules: deaths ----------------------------------------------------------------

    @rule(pick=SLOT_PICKS)
    def kill_worker(self, pick: int) -> None:
        """Kill a started worker, whatever it is doing (SIGKILL / the fake's kill)."""
        workers = self.pool.inspect().live_workers()
        if not workers:
            return
        worker = workers[pick % len(workers)]
        self.killed_ids.add(worker.worker_id)
        for c in self.active:
            if c.phase == "calling" and c.worker_id == worker.worker_id:
                c.calls[-1].killed_during = True
        # Counted by the pool (the campaign's summary), not logged per kill.
        self.pool.expect_death(worker.worker_id)
        # A real process takes a moment to die after SIGKILL: wait until it is
        # dead, or settle() could find everything quiet before the death.
        self.driver.run_sync(kill_and_settle, worker, 2.0)
        self.settle()

    @rule(session=st.sampled_from(["s1", "s2"]), wait_dead=st.booleans())
    def kill_and_use_session(self, session: str, wait_dead: bool) -> None:
        """Kill the worker holding a session's state and use the session at once,
        before the pool has noticed the death (the detection window): with no
        checkpoint in between, the call finds the death at hand-off or through
        its own read. ``wait_dead``: a real process is dead for sure first
        (blocking wait, still no checkpoint), so the hand-off finds it.
        Contract: that call gets SessionLost, and the session's loss is never
        reported again (its next use starts a fresh state). A session not
        bound yet is bound first (one call), so that the rule always applies."""
        if self.closed or any(c.session == session for c in self.active):
            self.settle()
            return
        view = self.pool.inspect()
        if session not in view.bindings:
            if view.queue or not any(slot.state is S.READY and slot.lease is None
                                     for slot in view.slots):
                self.settle()
                return  # no worker free to bind it to
            bind = self.driver.spawn(self.bind_session, session, name="bind_session")
            self.settle(until=lambda: bind.done)
            if not bind.done:  # the free worker went meanwhile: give up the binding
                bind.cancel()
                self.settle(until=lambda: bind.done)
        view = self.pool.inspect()
        binding = view.bindings.get(session)
        slot = view.slots[binding.slot] if binding is not None else None
        worker = slot.worker if slot is not None else None
        if self.closed or binding is None or binding.lost is not None or slot is None \
                or worker is None or slot.state is not S.READY or slot.lease is not None \
                or not worker.is_alive() or self.pool.config.affinity != "strict" \
                or any(c.session == session for c in self.active):
            self.settle()
            return
        self.remember(worker)
        self.killed_ids.add(worker.worker_id)
        self.pool.expect_death(worker.worker_id)  # counted, not logged per kill
        outcome: list[BaseException | None] = []

        async def kill_then_call() -> None:
            worker.kill()
            if wait_dead and not self.fake:
                wait_until_dead(worker)
            try:
                await self.pool.call("ping", session=session)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        task = self.driver.spawn(kill_then_call, name="kill_and_use_session")
        self.settle(until=lambda: task.done)
        type(self).totals["kill_and_use_session"] += 1
        if not outcome:
            self.violations.append(f"the use of session {session!r} right after its worker "
                                   "died never ended")
        elif not isinstance(outcome[0], SessionLost):
            self.violations.append(f"session {session!r} used right after its worker "
                                   f"{worker.worker_id} was killed: got {outcome[0]!r}, "
                                   "not SessionLost")
        else:
            type(self).totals[f"lost_found_{'in_call' if outcome[0].__cause__ else 'at_handoff'}"] \
                += 1
            self.bound.pop(session, None)
            self.reported_lost[session] = worker.worker_id
        self.programs.pop((worker.worker_id, session), None)
        if self.violations:
            raise AssertionError("; ".join(self.violations))

    async def bind_session(self, session: str) -> None:
        """Bind ``session`` to a worker with one call (any failure: not bound)."""
        try:
            result = await self.pool.call("ping", session=session)
        except EngineError:
            return
        if isinstance(result, dict) and isinstance(result.get("worker_id"), str):
            self.bound[session] = result["worker_id"]
            self.reported_lost.pop(session, None)

    @precondition(lambda self: not self.closed and (not self.fake or self.fault is None))
    @rule()
    def kill_at_next_handoff(self) -> None:
        """Arm a fault: the next worker selected for a waiter dies before hand-off."""
        if self.fault is not None:
            return
        self.arm_fault("kill_before_handoff", inject_fault("kill_before_handoff", times=1))
        self.settle()

    @precondition(lambda self: not self.closed and (not self.fake or self.fault is None))
    @rule()
    def kill_after_next_grant(self) -> None:
        """Arm a fault: the next worker granted to a waiter dies before the waiter
        takes it (the waiter must not end up holding a dead worker)."""
        if self.fault is not None:
            return
        self.arm_fault("kill_after_grant",
                       inject_fault("kill_after_grant", times=1, pool=self.pool))
        self.settle()

    @precondition(lambda self: not self.closed and (not self.fake or (
        self.fault is None and len(self.active) < self.max_checkouts)))
    @rule(target=checkouts, session=SESSIONS)
    def checkout_cancelled_at_handoff(self, session: str | None) -> Checkout:
        """A checkout cancelled after its worker was selected, before it took it.

        The fault fires inside the hand-off check run by the checkout's own task
        (a worker was free); the worker must go back to READY, unharmed.
        """
        c = Checkout(next(self.numbers), session, max(self.checkout_timeouts),
                     cancel_at_handoff=True)
        if self.fault is not None or len(self.active) >= self.max_checkouts:
            return self.skipped(c)

        def cancel_requester(pool: Any, slot: int, worker: Any) -> None:
            if c.handle is not None and trio.lowlevel.current_task() is c.handle.task:
                c.handle.cancel_from_run()
                self.handoff_cancels.append((slot, worker.worker_id, c))

        self.arm_fault("cancel_before_handoff",
                       inject_fault("before_handoff", action=cancel_requester))
        self.active.append(c)
        c.handle = self.driver.spawn(self.hold, c, name=f"checkout {c.number}")
        self.settle()
        self.disarm_fault()
        return c

    def skipped(self, c: Checkout) -> Checkout:
        """A checkout that was not started (the rule did not apply)."""
        c.phase = "done"
        c.settled = True
        self.settle()
        return c

    def arm_fault(self, kind: str, cm: Any) -> None:
        self.fault = cm.__enter__()
        self.fault_cm = cm
        self.fault_kind = kind

    def disarm_fault(self) -> None:
        if self.fault_cm is not None:
            cm, self.fault_cm, self.fault, self.fault_kind = self.fault_cm, None, None, None
            cm.__exit__(None, None, None)

    def check_fault(self) -> None:
        if self.fault is not None:
            self.killed_ids.update(self.fault.worker_ids)  # killed by a fault, not a drain
        if self.fault is not None and self.fault_kind in ("kill_before_handoff",
                                                           "kill_after_grant") \
                and self.fault.fired:
            self.disarm_fault()  # fired once: the receipt checks caught any dead hand-off
        for slot, worker_id, c in self.handoff_cancels:
            if not c.settled and c.phase != "done":
                continue
            worker = self.pool.inspect().slots[slot].worker
            # The waiter was cancelled between selection and receipt: the same
            # worker is back (idle, or leased to someone else since), not killed.
            if not self.pool.closed and (worker is None or worker.worker_id != worker_id
                                          or not worker.is_alive()):
                self.violations.append(f"worker {worker_id} lost after {c!r} was cancelled "
                                       "between selection and receipt")
            if c.received:
                self.violations.append(f"{c!r} received a lease despite being cancelled")
        self.handoff_cancels = [h for h in self.handoff_cancels
                                if not (h[2].settled or h[2].phase == "done")]

    # --- rules: fake workers only --------------------------------------------------

    @precondition(lambda self: self.fake and not self.closed)
    @rule(plan=st.sampled_from(sorted(PLANS)))
    def plan_next_start(self, plan: str) -> None:
        """Script the next worker the pool starts (after a kill or crash)."""
        assert self.factory is not None
        self.factory.plan.append(PLANS[plan])

    @precondition(lambda self: self.fake)
    @rule(pick=SLOT_PICKS)
    def kill_starting_worker(self, pick: int) -> None:
        """Kill a worker that has not sent its hello yet (death during start)."""
        assert self.factory is not None
        starting = [w for w in self.factory.workers if not w.ready and w.exit_info is None]
        if starting:
            self.driver.run_sync(starting[pick % len(starting)].kill)
        self.settle()

    @precondition(lambda self: self.fake)
    @rule(seconds=st.sampled_from([0.1, 0.6, 2.5, 10.0]))
    def advance(self, seconds: float) -> None:
        """Let virtual time pass: slow starts finish, timeouts expire, backoffs end."""
        self.driver.advance(seconds)
        self.settle()

    # --- rules: sessions and close ------------------------------------------------

    @rule(session=st.sampled_from(["s1", "s2"]))
    def end_session(self, session: str) -> None:
        """``pool.end_session`` when the session's worker is free (it completes now)."""
        if self.closed:
            return
        view = self.pool.inspect()
        binding = view.bindings.get(session)
        if binding is not None and binding.lost is None:
            slot = view.slots[binding.slot]
            if slot.state is not S.READY or slot.lease is not None:
                return
        worker_id = self.bound.get(session)
        task = self.driver.spawn(self.pool.end_session, session, name="end_session")
        if self.fake:
            self.settle()
        else:
            self.driver.pump(until=lambda: task.done, timeout=self.settle_timeout)
            self.settle()
        if not task.done:
            self.violations.append(f"end_session({session!r}) did not complete")
        elif task.exception is not None and not isinstance(task.exception, EngineError):
            self.violations.append(f"end_session raised untyped {task.exception!r}")
        if isinstance(task.exception, SessionLost | WorkerCrashed):
            self.violations.append(f"end_session({session!r}) raised {task.exception!r} for "
                                   "a worker's death (the state it ends is gone: no error)")
        self.bound.pop(session, None)
        self.unreported.pop(session, None)
        self.reported_lost.pop(session, None)
        if worker_id is not None:
            self.programs.pop((worker_id, session), None)
        if self.violations:
            raise AssertionError("; ".join(self.violations))

    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 5))
    def close(self, dice: int) -> None:
        """Close the pool (one time in six: it ends the interesting part)."""
        if dice:
            return
        self.begin_close()
        assert self.ctx is not None
        self.ctx.exit(autojump=self.fake, timeout=self.settle_timeout)
        self.settle()
        self.check_closed()

    @precondition(lambda self: not self.closed)
    @rule(dice=st.integers(0, 5), after=st.sampled_from([0.0, 0.05, 0.3, 0.6, 2.0]))
    def close_cancelled(self, dice: int, after: float) -> None:
        """Start ``aclose()`` and cancel it ``after`` seconds (before it begins,
        while leases have their grace, while workers stop, or after it ended),
        then leave ``open_pool``: that must end within ``shutdown_grace`` plus
        the time to stop the workers, and leave no process (one time in six)."""
        if dice:
            return
        self.begin_close()
        assert self.ctx is not None
        began = self.driver.now()
        closing = self.driver.spawn(self.pool.aclose, name="aclose")
        if self.fake:
            self.driver.advance(after)
        else:
            give_up_at = time.monotonic() + after  # real clock: the host's will do
            self.driver.pump(until=lambda: closing.done or time.monotonic() >= give_up_at,
                             timeout=self.settle_timeout)
        cancelled_at = self.driver.now()
        closing.cancel()
        self.driver.pump(until=lambda: closing.done, autojump=self.fake,
                         timeout=self.settle_timeout)
        if closing.exception is not None:
            raise AssertionError(f"a cancelled aclose() raised {closing.exception!r}")
        assert self.pool.closed, "aclose() was cancelled before it marked the pool closed"
        # Leaving open_pool finishes the close (the driver's timeout is the hang
        # guard for real workers).
        self.ctx.exit(autojump=self.fake, timeout=self.settle_timeout)
        if self.fake:
            # Virtual time: exact. The close began at `began`; whenever aclose()
            # was given up, leaving open_pool ends by the bound (or at once, if
            # the close had already ended).
            assert self.factory is not None
            bound = self.pool.config.shutdown_grace + self.factory.grace
            left = self.driver.now()
            assert left <= max(cancelled_at, began + bound) + 1e-6, \
                f"leaving open_pool took until {left - began:g}s after aclose() began " \
                f"(cancelled at {cancelled_at - began:g}s; bound {bound:g}s)"
        self.settle()
        self.check_closed()

    def begin_close(self) -> None:
        self.closed = True
        self.disarm_fault()
        for c in self.active:
            for record in c.calls:
                if not record.done:
                    record.closed_during = True

    def check_closed(self) -> None:
        """After leaving open_pool: closed, every worker process gone and waited for."""
        stats = self.pool.statistics()
        assert stats.closed
        assert not self.pool.worker_pids(), f"pids after close: {self.pool.worker_pids()}"
        if self.factory is not None:
            assert not self.factory.unreaped, \
                f"fakes alive after close: {[w.worker_id for w in self.factory.unreaped]}"
        alive = [pid for pid in self.real_pids if pid_alive(pid)]
        assert not alive, f"processes left after close: {alive}"

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if self.pool is None:
            return
        try:
            self.check_consistent()
        except AssertionError as exc:
            # Real workers are not deterministic, so a failure may not replay:
            # say what the pool looked like here.
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def describe(self) -> str:
        lines = ["pool state:"]
        view = self.pool.inspect()
        for slot in view.slots:
            worker = slot.worker
            health = "-" if worker is None else \
                f"alive={worker.is_alive()} dirty={worker.dirty} exit={worker.exit_info}"
            lines.append(f"  slot {slot.index} {slot.state.value} lease={slot.lease} "
                         f"{slot.worker_id} {health}")
            lines.extend(f"    {t.old.value} -> {t.new.value}: {t.reason}"
                         for t in slot.history[-6:])
        lines.append(f"  queue={[w.id for w in view.queue]} active={self.active}")
        return "\n".join(lines)

    def check_consistent(self) -> None:
        pool = self.pool
        pool.check_invariants()
        view = pool.inspect()
        stats = pool.statistics()
        assert stats.busy + stats.ready + stats.starting <= stats.size, stats
        # Every waiter is queued or served, never both: the checkouts still asking
        # are exactly the core's queue (the run is settled, nobody is in transit).
        requesting = [c for c in self.active if c.phase == "requesting"]
        if not view.closing:
            assert len(requesting) == len(view.queue), \
                f"{len(requesting)} checkouts waiting but {len(view.queue)} queued"
        holders = [c for c in self.active if c.phase in ("holding", "calling")]
        live_ids = [c.worker_id for c in holders if c.worker_id is not None
                    and self.alive(c.worker_id)]
        dupes = [w for w, n in collections.Counter(live_ids).items() if n > 1]
        assert not dupes, f"workers leased twice: {dupes}"
        for session, binding in view.bindings.items():
            if binding.lost is None:
                worker = view.slots[binding.slot].worker
                assert worker is not None and worker.worker_id == binding.worker_id, \
                    f"session {session!r} bound to a replaced worker"
                # A worker whose channel broke under a lease (garbage, timeout) is
                # only replaced at checkin; its process is still running until then.
                leased_broken = view.slots[binding.slot].lease is not None \
                    and worker.exit_info is None
                assert worker.is_alive() or leased_broken, \
                    f"session {session!r} bound to dead worker {worker.worker_id}"
        for slot in view.slots:
            worker = slot.worker
            if slot.state is S.DRAINING:
                # Nobody is granted a worker before its abandoned request is back.
                holders = [c for c in self.active if c.phase in ("holding", "calling")
                           and c.worker_id == slot.worker_id]
                assert slot.lease is None and not holders, \
                    f"draining worker {slot.worker_id} is leased to {holders}"
            if slot.state is S.READY and slot.lease is None and worker is not None:
                # An idle worker is fit to hand out: alive, its channel clean.
                assert worker.is_alive() and not worker.dirty, \
                    f"idle worker {worker.worker_id} is dead or dirty"
        if not view.closing:
            self.check_nobody_waits_beside_idle_worker(view)
        if self.factory is not None:
            unreaped = self.factory.unreaped
            assert len(unreaped) <= len(view.slots), \
                f"{len(unreaped)} fake processes for {len(view.slots)} slots"

    def check_nobody_waits_beside_idle_worker(self, view: PoolView) -> None:
        free = [s for s in view.slots if s.state is S.READY and s.lease is None]
        for waiter in view.queue:
            if waiter.purpose != "call":
                continue
            binding = view.bindings.get(waiter.session) if waiter.session else None
            usable = free
            if binding is not None and binding.lost is None:
                usable = [s for s in free if s.index == binding.slot]
            assert not usable, f"a waiter is queued while slot(s) " \
                               f"{[s.index for s in usable]} sit idle"


def wait_until_dead(worker: Any) -> None:
    """Block until the worker's process (a child of this one) has died, without
    reaping it and without a Trio checkpoint: the pool cannot have noticed."""
    pid = getattr(worker, "os_pid", None)
    if pid is not None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped already


def _process_running(worker: Any) -> bool:
    """The worker's process has not exited (its channel may be broken)."""
    pid = getattr(worker, "os_pid", None)
    if pid is None:
        return worker.exit_info is None
    return worker.exit_info is None and pid_alive(pid)


def pool_machine(*, workers: Literal["fake", "real"] = "fake",
                 app: str = "engine.workers.programs", sizes: tuple[int, ...] | None = None,
                 commands: frozenset[str] | None = None, name: str | None = None,
                 call_declared: bool = False, **config: Any) -> type[PoolMachine]:
    """A :class:`PoolMachine` subclass for fake or real workers running ``app``.

    ``sizes``: the pool sizes examples choose from (default 1-3 for fakes, 1-2
    for real workers). ``commands``: the app commands calls may use (default:
    every command the app's hello lists that the machine knows; ``ping`` always);
    a named command the machine does not know is called with arguments of the
    shape the hello declares for it (any JSON if none), its outcomes counted
    in ``app_calls``. ``call_declared``: call every command with a declared
    shape that way too. Extra keywords are PoolConfig fields for every pool.
    """
    if workers not in ("fake", "real"):
        raise ValueError(f"workers must be 'fake' or 'real', got {workers!r}")
    chosen = sizes or ((1, 2, 3) if workers == "fake" else (1, 2))
    attributes: dict[str, Any] = {
        "workers": workers, "app": app, "sizes": chosen, "extra_config": dict(config),
        "allowed_commands": None if commands is None else frozenset(commands),
        "call_declared": call_declared,
        "totals": collections.Counter(),
        "app_calls": collections.Counter(),
        "__doc__": f"PoolMachine over {workers} workers running {app!r}.",
    }
    if workers == "real":
        attributes.update(checkout_timeouts=(0.5, 5.0), call_timeout=2.0,
                          settle_timeout=20.0)
    return type(name or f"{workers.capitalize()}PoolMachine", (PoolMachine,), attributes)


PoolMachine.totals = collections.Counter()
PoolMachine.app_calls = collections.Counter()
