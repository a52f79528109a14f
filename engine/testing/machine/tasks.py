"""The checkout task: the Trio task behind each checkout, and its calls.

:class:`CheckoutTasks` holds what runs inside the driver for a checkout (take
the lease, check the receipt, run the calls the rules send it, record how each
ended) and how a call is planned and recorded (``plan_call``, ``new_call``).
Apart from the rules, which only start, feed and end these tasks.
"""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import strategies as st

from engine.errors import EngineError, SessionLost
from engine.testing.machine.draws import KNOWN_COMMANDS
from engine.testing.machine.records import CallRecord, Checkout, DrainExpected
from engine.testing.machine.state import MachineState


class CheckoutTasks(MachineState):
    """The checkout task and the planning of its calls."""

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
                # In the class's totals too: a tolerated bug must leave a trace
                # in what a campaign or a test reads afterwards.
                type(self).totals["tolerated_dead_worker_after_grant"] += 1
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
