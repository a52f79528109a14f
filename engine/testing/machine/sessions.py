"""Rule: ``end_session`` while the session's worker is free.

Apart from the deaths (which also touch sessions) because ending a session is
a user's request: it must complete and never raise for a worker's death.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import rule

from engine.errors import EngineError, SessionLost, WorkerCrashed
from engine.pool.lifecycle import WorkerState
from engine.testing.machine.base import MachineBase

S = WorkerState


class SessionRules(MachineBase):
    """Ending sessions."""

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
