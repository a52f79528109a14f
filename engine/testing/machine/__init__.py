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

Where things are: :mod:`.state` (configuration, model state, lookups),
:mod:`.records` and :mod:`.draws` (what the model records, what rules draw),
:mod:`.tasks` (the checkout task), :mod:`.expectations` (judging calls, drains
and hand-off faults), :mod:`.base` (start, settle, teardown),
:mod:`.invariants`; the rule groups :mod:`.checkouts`, :mod:`.cancellation`,
:mod:`.deaths`, :mod:`.handoff`, :mod:`.fake_workers`, :mod:`.sessions` and
:mod:`.closing`; and :mod:`.composed`, which makes :class:`PoolMachine` of them.
"""

from __future__ import annotations

# The machine's modules hold these; they stay importable from here.
from engine.testing.machine.composed import PoolMachine, pool_machine
from engine.testing.machine.deaths import wait_until_dead as wait_until_dead
from engine.testing.machine.draws import COMMANDS as COMMANDS
from engine.testing.machine.draws import KNOWN_COMMANDS as KNOWN_COMMANDS
from engine.testing.machine.draws import SESSIONS as SESSIONS
from engine.testing.machine.draws import SLOT_PICKS as SLOT_PICKS
from engine.testing.machine.fake_workers import PLANS as PLANS
from engine.testing.machine.records import CallRecord as CallRecord
from engine.testing.machine.records import Checkout
from engine.testing.machine.records import DrainExpected as DrainExpected
from engine.testing.machine.state import BudgetSpent

__all__ = ["BudgetSpent", "Checkout", "PoolMachine", "pool_machine"]
