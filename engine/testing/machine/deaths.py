"""Rules: kill a worker, and kill a session's worker then use the session at once.

Deaths the machine causes directly (SIGKILL or the fake's kill), including the
detection window (``kill_and_use_session``: the use comes before the pool can
have noticed). Faults armed inside the hand-off are in
:mod:`~engine.testing.machine.handoff`.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule

from engine.errors import EngineError, SessionLost
from engine.pool.lifecycle import WorkerState
from engine.testing.faults import kill_and_settle
from engine.testing.machine.base import MachineBase
from engine.testing.machine.draws import SLOT_PICKS

S = WorkerState


class DeathRules(MachineBase):
    """Workers killed by a rule, and the detection window."""

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


def wait_until_dead(worker: Any) -> None:
    """Block until the worker's process (a child of this one) has died, without
    reaping it and without a Trio checkpoint: the pool cannot have noticed."""
    pid = getattr(worker, "os_pid", None)
    if pid is not None:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # reaped already
