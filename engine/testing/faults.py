"""Fault injection at named points of the pool's hand-off (design section 7).

Two points of the hand-off are reachable:

* *before the check*: the pool's seam ``engine.pool.pool.set_fault("before_handoff",
  hook)`` runs ``hook(pool, slot_index, worker)`` inside the safe hand-off check,
  after a worker was selected for a waiter and before its liveness check;
* *after the grant*: the pool emits a ``("engine", "worker", "transition")``
  telemetry event (``new="busy"``, ``reason="checkout"``) right after it granted
  a worker to a waiter and before that waiter's task has taken it.

:func:`inject_fault` installs a fault for the duration of a ``with`` block:

* ``"kill_before_handoff"``: kill the selected worker before the check. The pool
  must see it dead, serve the waiter with another worker or keep it waiting,
  and replace the dead one.
* ``"kill_after_grant"`` (needs ``pool=``): kill the granted worker before the
  waiter takes it. The waiter must not end up holding a dead worker.
* ``"before_handoff"``: call your own ``action(pool, slot, worker)`` before the
  check, e.g. to cancel the requesting task between selection and receipt.

``probability`` (with ``rng``, for reproducible runs) and ``times`` limit when
it fires; the yielded :class:`FaultRecord` says what happened::

    with inject_fault("kill_before_handoff", times=1) as fault:
        await pool.call("ping")          # served by another worker
    assert fault.fired == 1

Limitation for real subprocess workers: ``kill()`` sends SIGKILL, and the
process is only dead once the kernel has torn it down, a little later. So the
hook polls ``worker.is_alive()`` (a non-blocking ``poll()``) for up to
``settle`` seconds (default 50 ms), blocking the Trio thread meanwhile, so that
the pool's check that runs right after sees the worker dead. On a badly
overloaded machine the process may still look alive after that; the record's
``still_alive`` counts those cases (the hand-off then legitimately succeeds and
the caller's first call fails with ``WorkerCrashed``). Fake workers die at once.

Only one injection may be active at a time (the seam is process-global).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from engine import telemetry
from engine.pool import pool as _pool_module

__all__ = ["FAULT_POINTS", "FaultRecord", "inject_fault", "kill_and_settle"]

FaultAction = Callable[[Any, int, Any], None]

FAULT_POINTS = ("kill_before_handoff", "kill_after_grant", "before_handoff")
"""Named faults :func:`inject_fault` knows."""

_active: list[str] = []


@attrs.define
class FaultRecord:
    """What an injected fault did: how often it was considered and fired, and where."""

    point: str
    considered: int = 0
    fired: int = 0
    slots: list[int] = attrs.Factory(list)
    worker_ids: list[str] = attrs.Factory(list)
    still_alive: int = 0


def kill_and_settle(worker: Any, settle: float = 0.05) -> bool:
    """Kill ``worker`` and wait (blocking, at most ``settle`` s) until it looks dead.

    Returns True if ``worker.is_alive()`` is False on return.
    """
    worker.kill()
    deadline = time.monotonic() + settle
    while worker.is_alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


@contextmanager
def inject_fault(point: str, *, probability: float = 1.0, rng: random.Random | None = None,
                 times: int | None = None, action: FaultAction | None = None,
                 settle: float = 0.05, pool: Any = None) -> Iterator[FaultRecord]:
    """Install a fault at a hand-off point for the duration of the block.

    ``point``: one of :data:`FAULT_POINTS`. ``probability``: chance that it fires
    each time a worker is about to be handed over (drawn from ``rng``).
    ``times``: fire at most this many times. ``action``: for ``"before_handoff"``,
    what to do (``action(pool, slot_index, worker)``); for the kills, called
    after the kill. ``pool``: the pool whose grants ``"kill_after_grant"`` watches.
    """
    if point not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(FAULT_POINTS)}")
    if point == "before_handoff" and action is None:
        raise ValueError("inject_fault('before_handoff') needs an action")
    if point == "kill_after_grant" and pool is None:
        raise ValueError("inject_fault('kill_after_grant') needs pool=")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be between 0 and 1, got {probability!r}")
    if _active:
        raise RuntimeError(f"a fault is already injected ({_active[0]!r}); nest nothing")
    chooser = rng if rng is not None else random.Random()
    record = FaultRecord(point)

    def hook(pool: Any, slot: int, worker: Any) -> None:
        record.considered += 1
        if times is not None and record.fired >= times:
            return
        if probability < 1.0 and chooser.random() >= probability:
            return
        record.fired += 1
        record.slots.append(slot)
        record.worker_ids.append(worker.worker_id)
        if point != "before_handoff":
            # A planned death: the pool counts it instead of logging a crash.
            pool.expect_death(worker.worker_id)
        if point != "before_handoff" and not kill_and_settle(worker, settle):
            record.still_alive += 1
        if action is not None:
            action(pool, slot, worker)

    def on_transition(event: Any, measurements: Any, metadata: Any) -> None:
        if metadata.get("pool") != pool.label or metadata.get("new") != "busy" \
                or metadata.get("reason") != "checkout":
            return
        slot = metadata.get("slot")
        worker = pool.inspect().slots[slot].worker if isinstance(slot, int) else None
        if worker is not None and worker.is_alive():
            hook(pool, slot, worker)

    handler_id = f"engine.testing.faults:{point}:{id(record)}"
    _active.append(point)
    if point == "kill_after_grant":
        telemetry.attach(handler_id, [telemetry.WORKER_TRANSITION], on_transition)
    else:
        _pool_module.set_fault("before_handoff", hook)
    try:
        yield record
    finally:
        if point == "kill_after_grant":
            telemetry.detach(handler_id)
        else:
            _pool_module.set_fault("before_handoff", None)
        _active.clear()
