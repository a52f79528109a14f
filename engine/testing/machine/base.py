"""The run: starting the pool, settling after each step, and teardown.

:class:`MachineBase` joins the checkout task and the expectations, and adds
what every rule uses: ``start_pool`` (the initial rule), ``settle`` (let the
run go, then bring the model up to date and check it: ``after_settle``),
``quiet`` (real workers: nothing in transit) and ``teardown``. Each rule
group subclasses it; with real workers no rule's precondition reads the pool's
state (why: the comment above ``CheckoutRules.checkout``).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import initialize

from engine import telemetry
from engine.errors import EngineError
from engine.pool.lifecycle import WorkerState
from engine.pool.pool import open_pool
from engine.process.procfs import pid_alive
from engine.testing.driver import DriverTimeout, TrioDriver
from engine.testing.fakes import FakeWorkerFactory, Script
from engine.testing.machine.draws import KNOWN_COMMANDS
from engine.testing.machine.expectations import CallExpectations
from engine.testing.machine.records import Checkout
from engine.testing.machine.tasks import CheckoutTasks
from engine.testing.strategies import from_schema
from engine.workers.app import BUILTIN_COMMANDS

S = WorkerState


class MachineBase(CheckoutTasks, CallExpectations):
    """The run of one example: start, settle and check, tear down."""

    # --- the run -----------------------------------------------------------------------

    @initialize(size_pick=st.integers(0, 5))
    def start_pool(self, size_pick: int) -> None:
        size = self.sizes[size_pick % len(self.sizes)]
        self.driver = TrioDriver(clock=trio.testing.MockClock() if self.fake else None,
                                 timeout=self.settle_timeout)
        self.driver.start()
        config: dict[str, Any] = {
            "app": self.app, "size": size, "checkout_timeout": max(self.checkout_timeouts),
            "call_timeout": self.call_timeout, "restart_backoff": (0.05, 0.5, 1.0),
            "max_restarts": 1000, "restart_cooldown": 0.5, "shutdown_grace": 0.5,
            "start_timeout": 5.0 if self.fake else 30.0, "seed": 0,
            **self.extra_config,
        }
        if self.fake:
            self.factory = FakeWorkerFactory(Script(), grace=0.5)
            config["worker_factory"] = self.factory
        self.ctx = self.driver.enter_handle(open_pool(**config))
        self.pool = self.ctx.value
        label = self.pool.label
        self.telemetry_id = f"pool-machine-{label}"
        telemetry.attach(self.telemetry_id, [telemetry.WORKER_DRAINED],
                         lambda event, measurements, metadata: self.drain_events.append(
                             dict(metadata)) if metadata["pool"] == label else None)
        if not self.fake:
            # An app that cannot start fails here with its cause (AppStartFailed,
            # at once), not with the settle's time-out after every example.
            ready = self.driver.spawn(self.pool.wait_ready, 1)
            self.driver.pump(until=lambda: ready.done, timeout=self.settle_timeout)
            ready.result  # noqa: B018 - re-raises the pool's error
        self.settle()
        schemas: dict[str, Any] = {}
        for slot in self.pool.inspect().slots:
            if slot.worker is not None:
                self.commands = set(slot.worker.hello.commands)
                schemas = slot.worker.hello.schemas
                break
        named: set[str] = set()
        if self.allowed_commands is not None:
            self.commands &= self.allowed_commands
            named = set(self.allowed_commands)
        if self.call_declared:
            named |= set(schemas)
        # Called even when the app lacks them: the UnknownCommand answers are
        # counted, so a campaign naming a wrong command is a finding.
        self.app_commands = sorted(named - KNOWN_COMMANDS - set(BUILTIN_COMMANDS))
        self.commands |= {"ping", *self.app_commands}
        self.app_args = {name: from_schema(schemas.get(name, {})) for name in self.app_commands}

    def teardown(self) -> None:
        try:
            self.disarm_fault()
        finally:
            if self.telemetry_id is not None:
                telemetry.detach(self.telemetry_id)
            if self.driver is not None:
                self.driver.close()
            if self.pool is not None:
                # Deaths this example caused on purpose, for the campaign's summary.
                type(self).totals["expected_deaths"] += \
                    self.pool.metrics().counters.get("expected_deaths", 0)
        if self.factory is not None:
            left = [w.worker_id for w in self.factory.unreaped]
            assert not left, f"fake workers never reaped after close: {left}"
        alive = [pid for pid in self.real_pids if pid_alive(pid)]
        assert not alive, f"worker processes left after close: {alive}"

    def settle(self, until: Any = None) -> None:
        """Let the run go until nothing more happens, then check what happened.

        Fake workers: until the run is idle (virtual time stands still). Real
        workers: until ``until()`` holds and nothing is in transit (:meth:`quiet`).
        """
        type(self).totals["steps"] += 1
        if self.fake:
            self.driver.pump()
        else:
            try:
                self.driver.pump(until=lambda: (until is None or until()) and self.quiet(),
                                 timeout=self.settle_timeout)
            except DriverTimeout as exc:
                raise DriverTimeout(f"the pool did not settle within {self.settle_timeout:g}s "
                                    f"({exc})\n{self.describe()}") from None
        self.after_settle()

    def quiet(self) -> bool:
        """Real workers: nothing is in transit (starting, stopping, running a call)."""
        view = self.pool.inspect()
        if view.closing and not self.closed:
            return False
        for slot in view.slots:
            if slot.state in (S.STARTING, S.STOPPING, S.DRAINING):
                return False
            if slot.state is S.STOPPED and slot.wanted and not view.closing:
                return False
            if slot.state in (S.READY, S.BUSY, S.DEGRADED):
                worker = slot.worker
                if worker is None:
                    return False
                # A leased worker whose channel broke (garbage, timeout) stays
                # until its lease ends; a dead process must first be noticed.
                fit = _process_running(worker) if slot.state is S.BUSY else worker.is_alive()
                if not fit:
                    return False
        requesting = 0
        for c in self.active:
            if c.phase == "requesting":
                requesting += 1
            elif c.phase == "calling":
                return False
        return requesting == len(view.queue)
    # --- model upkeep after each settle --------------------------------------------

    def after_settle(self) -> None:
        view = self.pool.inspect()
        for slot in view.slots:
            if slot.worker is not None:
                self.remember(slot.worker)
        for session, binding in view.bindings.items():
            # A binding made for a checkout cancelled before receipt is not in the
            # model yet: learn it (which worker holds that session's state).
            if binding.lost is None and binding.worker_id is not None \
                    and self.alive(binding.worker_id):
                self.bound.setdefault(session, binding.worker_id)
                self.reported_lost.pop(session, None)
        for c in list(self.active):
            for record in c.calls:
                if record.done and not record.checked:
                    self.check_call(c, record)
            if c.phase == "done":
                self.finish(c)
        self.check_fault()
        self.check_drains()
        for session, dead, fresh, c in self.moved:
            if self.unreported[session] > 0:
                self.violations.append(f"session {session!r} lost its state silently: {dead} "
                                       f"died and {c!r} got {fresh}; nobody got SessionLost")
        self.moved.clear()
        self.unreported.clear()
        if self.violations:
            raise AssertionError("; ".join(self.violations))
    def finish(self, c: Checkout) -> None:
        self.active.remove(c)
        c.settled = True
        error = c.error
        if error is None:
            return
        if not isinstance(error, EngineError):
            self.violations.append(f"{c!r} ended with untyped {error!r}")
        elif c.received:
            self.violations.append(f"{c!r} failed after receipt with {error!r}")
    def skipped(self, c: Checkout) -> Checkout:
        """A checkout that was not started (the rule did not apply)."""
        c.phase = "done"
        c.settled = True
        self.settle()
        return c


def _process_running(worker: Any) -> bool:
    """The worker's process has not exited (its channel may be broken)."""
    pid = getattr(worker, "os_pid", None)
    if pid is None:
        return worker.exit_info is None
    return worker.exit_info is None and pid_alive(pid)
