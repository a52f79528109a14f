"""The model's records of one checkout, one call and one expected drain.

Plain data written by the checkout tasks and the rules and read by the checks,
so every part of the machine imports them from here.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import trio

from engine.testing.driver import TaskHandle


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
