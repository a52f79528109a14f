"""Worker lifecycle: states, the transition table and a bounded history.

STARTING -> READY <-> BUSY; READY -> DEGRADED -> READY or STOPPING;
BUSY -> DRAINING -> READY (a call cancelled or timed out with its request in
flight: the worker gives the request back within ``cancel_grace``);
any -> STOPPING -> STOPPED; STOPPED -> STARTING (the slot rebuilds).

An invalid transition is a bug in the pool. ``strict`` tables raise
``InvalidTransition`` (tests run strict); otherwise it is logged loudly and
applied, so production keeps running while the log says exactly what happened.
Pure: no Trio.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from typing import NamedTuple

logger = logging.getLogger("engine.lifecycle")


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    DEGRADED = "degraded"
    DRAINING = "draining"  # not leased: the pool reads an abandoned request's reply
    STOPPING = "stopping"
    STOPPED = "stopped"

    # Members are singletons: identity hashing (a C slot) instead of Enum's
    # Python-level __hash__, which showed up on the checkout hot path.
    __hash__ = object.__hash__


S = WorkerState

TRANSITIONS: frozenset[tuple[WorkerState, WorkerState]] = frozenset({
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.READY),
    (S.READY, S.BUSY),
    (S.BUSY, S.READY),
    (S.READY, S.DEGRADED),
    (S.DEGRADED, S.READY),
    (S.DEGRADED, S.BUSY),  # a health probe holds a degraded worker through a lease
    (S.BUSY, S.DEGRADED),  # ... and returns it degraded when the probe failed
    (S.BUSY, S.DRAINING),  # its caller gave up mid-call (cooperative cancellation)
    (S.DRAINING, S.READY),  # the abandoned request came back within cancel_grace
    *((state, S.STOPPING) for state in S if state not in (S.STOPPING, S.STOPPED)),
    # A process can die in any live state; the slot records it as stopped at once.
    *((state, S.STOPPED) for state in S if state is not S.STOPPED),
})


class InvalidTransition(RuntimeError):
    def __init__(self, worker: str, old: WorkerState, new: WorkerState, reason: str) -> None:
        super().__init__(
            f"invalid worker transition {old.value} -> {new.value} for {worker} ({reason}); "
            "this is a bug in engine"
        )
        self.old = old
        self.new = new


class Transition(NamedTuple):
    """One accepted move. A tuple, not attrs: two are made per checkout."""

    old: WorkerState
    new: WorkerState
    reason: str
    at: float
    duration: float  # time spent in `old`


_new_tuple = tuple.__new__


def is_allowed(old: WorkerState, new: WorkerState) -> bool:
    return (old, new) in TRANSITIONS


class Lifecycle:
    """The state of one slot plus its bounded history."""

    def __init__(self, name: str, *, clock: Callable[[], float], strict: bool = False,
                 history: int = 32) -> None:
        self.name = name
        self.state = WorkerState.STOPPED
        self._clock = clock
        self._strict = strict
        self._since = clock()
        self.history: collections.deque[Transition] = collections.deque(maxlen=history)
        self.accepted = 0
        self.rejected = 0

    def move(self, new: WorkerState, reason: str,
             now: float | None = None) -> Transition | None:
        """Move to ``new``; returns the transition, or None if it was a no-op.

        ``now`` saves a clock read when the caller has just taken one.
        """
        old = self.state
        if old is new:
            return None
        if (old, new) not in TRANSITIONS:
            self.rejected += 1
            if self._strict:
                raise InvalidTransition(self.name, old, new, reason)
            logger.error("%s", InvalidTransition(self.name, old, new, reason))
        if now is None:
            now = self._clock()
        # tuple.__new__ skips the NamedTuple's generated __new__ (a Python
        # lambda): two transitions are made per checkout.
        transition = _new_tuple(Transition, (old, new, reason, now, now - self._since))
        self.state = new
        self._since = now
        self.history.append(transition)
        self.accepted += 1
        return transition

    def time_in_state(self) -> float:
        return self._clock() - self._since
