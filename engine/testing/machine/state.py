"""The machine's shared base: configuration, model state and lookups.

:class:`MachineState` holds what every rule group and check reads and writes
(the pool, the checkouts, the model of sessions and workers, the armed fault)
and the lookups over it (``alive``, ``script_of``, ``plain``, ``describe``).
The bundle of pending checkouts is :data:`CHECKOUTS`, so that rule groups in
other modules can name it in their decorators.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any, ClassVar, Literal

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine

from engine.pool.pool import Pool
from engine.testing.driver import ContextHandle, TrioDriver
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.testing.faults import FaultRecord
from engine.testing.machine.records import Checkout, DrainExpected

#: Checkouts started and not yet released or cancelled (any rule may end one).
CHECKOUTS = Bundle("checkouts")


class BudgetSpent(KeyboardInterrupt):
    """Raised instead of starting an example once the machine's ``stop_after``
    has passed. A ``KeyboardInterrupt`` because that is the one exception
    Hypothesis passes straight through, ending the run without replaying or
    shrinking anything (any other exception, ``BaseException`` subclasses and
    rejected examples too, was replayed and reported as a flaky strategy:
    the replay drew differently). Only the campaign sets ``stop_after`` and
    catches it."""


class MachineState(RuleBasedStateMachine):
    """The machine's configuration and model state, and the small lookups every
    part of it uses; :class:`~engine.testing.machine.PoolMachine` is made of
    this and the rule groups."""

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
    #: A ``time.monotonic()`` reading after which no new example starts: the
    #: next one raises :class:`BudgetSpent`, which ends the Hypothesis run
    #: there (how a campaign keeps to its budget). None: no limit.
    stop_after: ClassVar[float | None] = None

    checkouts = CHECKOUTS

    def __init__(self) -> None:
        if self.stop_after is not None and time.monotonic() >= self.stop_after:
            raise BudgetSpent(self.stop_after)
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

    def remember(self, worker: Any) -> None:
        self.seen.setdefault(worker.worker_id, worker)
        os_pid = getattr(worker, "os_pid", None)
        if os_pid is not None:
            self.real_pids.add(os_pid)

    def alive(self, worker_id: str) -> bool:
        worker = self.seen.get(worker_id)
        return worker is not None and worker.is_alive()

    def script_of(self, worker_id: str) -> Script:
        if self.factory is None:
            return Script()
        try:
            return self.factory.worker(worker_id).script
        except KeyError:  # pragma: no cover - every fake is recorded
            return Script()

    def plain(self, worker_id: str) -> bool:
        """No scripted fault of this (fake) worker can break or delay a drain."""
        script = self.script_of(worker_id)
        return script.reply_mode in ("normal", "fragmented") and not script.faults \
            and script.crash_after is None and script.on_abandon == "yield" \
            and script.abandon_delay == 0

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

    # --- fault plumbing (the rules that arm one are in handoff.py) ---------------

    def arm_fault(self, kind: str, cm: Any) -> None:
        self.fault = cm.__enter__()
        self.fault_cm = cm
        self.fault_kind = kind

    def disarm_fault(self) -> None:
        if self.fault_cm is not None:
            cm, self.fault_cm, self.fault, self.fault_kind = self.fault_cm, None, None, None
            cm.__exit__(None, None, None)
