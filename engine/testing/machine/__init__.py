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
import os
import time
from typing import Any, Literal

import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import consumes, precondition, rule

from engine.errors import EngineError, SessionLost, WorkerCrashed
from engine.pool.lifecycle import WorkerState
from engine.process.procfs import pid_alive
from engine.testing.fakes import Script
from engine.testing.faults import inject_fault, kill_and_settle
from engine.testing.machine.draws import COMMANDS, SESSIONS, SLOT_PICKS
from engine.testing.machine.draws import KNOWN_COMMANDS as KNOWN_COMMANDS
from engine.testing.machine.invariants import Invariants
from engine.testing.machine.records import CallRecord as CallRecord
from engine.testing.machine.records import Checkout
from engine.testing.machine.records import DrainExpected as DrainExpected
from engine.testing.machine.state import CHECKOUTS

__all__ = ["Checkout", "PoolMachine", "pool_machine"]

S = WorkerState

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


class PoolMachine(Invariants):
    """The pool state machine; configure it with :func:`pool_machine`."""

    checkouts = CHECKOUTS

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


def wait_until_dead(worker: Any) -> None:
    """Block until the worker's process (a child of this one) has died, without
    reaping it and without a Trio checkpoint: the pool cannot have noticed."""
    pid = getattr(worker, "os_pid", None)
    if pid is not None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped already




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
