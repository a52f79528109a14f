"""What a finished call, a drain and an armed fault must have done.

:class:`CallExpectations` judges the model after each settle: each call's
outcome against what its command, its worker's script and the deaths around
it allow; the ``worker.drained`` events against the drains expected; and the
hand-off faults. Apart from the rules because every rule group's calls end
here, and from the checkout task, which only records.
"""

from __future__ import annotations

import trio

from engine import shapes
from engine.errors import (
    CallTimeout,
    EngineError,
    PoolClosed,
    ProtocolError,
    RemoteError,
    SessionLost,
    WorkerCrashed,
)
from engine.testing.machine.records import CallRecord, Checkout
from engine.testing.machine.state import MachineState

#: Errors a call may end with when its worker died or was found broken.
_DEATH = (WorkerCrashed, ProtocolError, CallTimeout, PoolClosed)


class CallExpectations(MachineState):
    """Judges finished calls, drains and hand-off faults against the model."""

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
