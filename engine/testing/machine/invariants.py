"""The invariants checked after every step (design section 12).

Apart from the rules because they hold whatever rule ran; ``describe`` (the
pool's state added to a failure) is in :mod:`~engine.testing.machine.state`
because a failed settle prints it too.
"""

from __future__ import annotations

import collections

from hypothesis.stateful import invariant

from engine.pool.introspection import PoolView
from engine.pool.lifecycle import WorkerState
from engine.testing.machine.base import MachineBase

S = WorkerState


class Invariants(MachineBase):
    """The pool's invariants, checked after every step."""

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
