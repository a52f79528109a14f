"""Each defence on its own (issue 15).

The pool's protections are layered: a dead or dirty worker is stopped by the
hand-off's checks before a grant, again at receipt, and at check-in; a queued
waiter's deadline is kept by the pool's timer and re-checked by the core; a
lease token is checked at every check-in; the breaker frees the probe of a
cancelled caller. Layers hide each other's bugs, so each test here pins ONE
guard: it fails if that guard alone is removed while the others stay (its
docstring names the guard and says what the others would do instead).

Layer 1 (the sans-IO core, a plain clock) and layer 2 (fake workers, virtual
time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
from engine.errors import PoolTimeout
from engine.pool.core import PoolCore, StopWorker, WaiterStatus
from engine.pool.lifecycle import WorkerState
from engine.pool.pool import Pool
from engine.process.channel_worker import ChannelWorker
from engine.testing.fakes import FakeWorker, FakeWorkerFactory, Script
from engine.testing.faults import inject_fault

S = WorkerState
W = WaiterStatus
GUARD = 1000.0  # virtual seconds: a guard that is missing fails the test, never hangs it


def history(pool: Pool, slot: int) -> list[tuple[WorkerState, str]]:
    return [(t.new, t.reason) for t in pool.inspect().slots[slot].history]


@asynccontextmanager
async def fake_pool(size: int = 2, **options: Any) -> AsyncIterator[Pool]:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=size, **options) as pool:
            await pool.wait_ready()
            yield pool


@pytest.fixture
def marked_dirty(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Worker ids whose channel reads as dirty (a desynchronised stream) while
    the fake process stays alive: the state no other guard looks at."""
    marked: set[str] = set()
    real = ChannelWorker.dirty.fget
    assert real is not None
    monkeypatch.setattr(FakeWorker, "dirty",
                        property(lambda self: self.worker_id in marked or real(self)))
    yield marked


class AfterGrant:
    """Runs ``action(worker)`` right after the pool granted a worker to a
    checkout and before that checkout's task took it (the grant's transition
    event), once."""

    def __init__(self, pool: Pool, action: Any) -> None:
        self.pool = pool
        self.action = action
        self.slots: list[int] = []

    def __call__(self, event: tuple[str, ...], measurements: Mapping[str, float],
                 metadata: Mapping[str, Any]) -> None:
        if self.slots or metadata.get("new") != "busy" or metadata.get("reason") != "checkout":
            return
        slot = metadata["slot"]
        worker = self.pool.inspect().slots[slot].worker
        assert worker is not None
        self.slots.append(slot)
        self.action(worker)

    def __enter__(self) -> AfterGrant:
        telemetry.attach(f"after-grant-{id(self)}", [telemetry.WORKER_TRANSITION], self)
        return self

    def __exit__(self, *exc: object) -> None:
        telemetry.detach(f"after-grant-{id(self)}")


def never_granted(pool: Pool, slot: int) -> bool:
    return not any(new is S.BUSY for new, _ in history(pool, slot))


# --- the hand-off: before the grant -------------------------------------------------------


@pytest.mark.layer2
async def test_liveness_check_before_grant(autojump_clock: trio.testing.MockClock) -> None:
    """Guard: the hand-off's liveness check (``Pool._vet``: ``not
    worker.is_alive()`` -> Remove "process_dead"). A worker that died while
    idle, its slot task not yet aware, is removed at the hand-off and never
    granted. Without it, the dirty-channel check would remove it under another
    reason ("pipe_closed") only because a kill also breaks the pipe."""
    async with fake_pool() as pool:
        with inject_fault("kill_before_handoff", times=1) as fault:
            assert await pool.call("echo", 1) == 1
        [slot] = fault.slots
        assert (S.STOPPING, "process_dead") in history(pool, slot)
        assert never_granted(pool, slot)


@pytest.mark.layer2
async def test_dirty_check_before_grant(autojump_clock: trio.testing.MockClock,
                                        marked_dirty: set[str]) -> None:
    """Guard: the hand-off's dirty-channel check (``Pool._vet``: ``worker.dirty``
    -> Remove "pipe_closed"). A live worker whose channel can't be trusted is
    removed before any grant. Without it, the worker would be granted and the
    re-check at receipt would stop it afterwards."""
    async with fake_pool() as pool:
        with inject_fault("before_handoff", times=1,
                          action=lambda pool, slot, worker: marked_dirty.add(worker.worker_id)
                          ) as fault:
            assert await pool.call("echo", 1) == 1
        [slot] = fault.slots
        assert (S.STOPPING, "pipe_closed") in history(pool, slot)
        assert never_granted(pool, slot)


# --- the hand-off: at receipt ---------------------------------------------------------------


@pytest.mark.layer2
async def test_liveness_recheck_at_receipt(autojump_clock: trio.testing.MockClock) -> None:
    """Guard: the re-check at receipt (``Pool._acquire_lease``: the granted
    worker's ``exit_info``/``is_alive()``; else ``reject_grant``). The worker
    exits on its own between grant and receipt, its pipe still clean: the
    checkout must not take it, and is served by the other worker. Without this
    guard the caller takes a dead worker and its call fails (no other check
    looks at a clean channel of a dead process there)."""
    async with fake_pool() as pool:
        with AfterGrant(pool, lambda worker: worker.exit_now(1)) as hook:
            async with pool.checkout() as lease:
                assert await lease.call("echo", 2) == 2
        [slot] = hook.slots
        assert lease.slot != slot
        assert (S.STOPPING, "process_dead at receipt") in history(pool, slot)


@pytest.mark.layer2
async def test_dirty_recheck_at_receipt(autojump_clock: trio.testing.MockClock,
                                        marked_dirty: set[str]) -> None:
    """Guard: the dirty flag at receipt (``Pool._acquire_lease``: ``not
    worker.dirty``). The granted worker's channel turns dirty before its
    checkout takes it: the checkout gives it back and is served by the other
    worker. Without this guard the caller takes a worker whose stream can't be
    trusted (the liveness re-check passes: the process is alive)."""
    async with fake_pool() as pool:
        with AfterGrant(pool, lambda worker: marked_dirty.add(worker.worker_id)) as hook:
            async with pool.checkout() as lease:
                assert await lease.call("echo", 3) == 3
        [slot] = hook.slots
        assert lease.slot != slot
        assert (S.STOPPING, "process_dead at receipt") in history(pool, slot)


@pytest.mark.layer2
async def test_dirty_worker_stopped_at_checkin(autojump_clock: trio.testing.MockClock,
                                               marked_dirty: set[str]) -> None:
    """Guard: check-in's dirty flag (``lease.release``: ``clean = ... not
    worker.dirty``, so the core stops the worker). A lease whose worker's
    channel went dirty is stopped as it is checked in, never offered again.
    Without it, the worker would stay READY and only the next hand-off's check
    would remove it."""
    async with fake_pool(size=1) as pool:
        async with pool.checkout() as lease:
            assert await lease.call("echo", 4) == 4
            marked_dirty.add(lease.worker_id)
        steps = history(pool, lease.slot)
        busy = max(i for i, (new, _) in enumerate(steps) if new is S.BUSY)
        # Checked in (the lifecycle passes through READY) and stopped in the same step.
        assert steps[busy + 1:busy + 3] == [(S.READY, "checked in"),
                                            (S.STOPPING, "dirty after its lease")]


# --- deadlines of queued waiters --------------------------------------------------------------


@pytest.mark.layer2
async def test_timer_expires_a_queued_waiter(autojump_clock: trio.testing.MockClock) -> None:
    """Guard: the pool's timer for queued checkouts (``Pool._wait`` registers the
    waiter's deadline; its firing calls ``core.expire``). A waiter whose workers
    all stay busy gets PoolTimeout at its deadline, with no other event to wake
    it. Without the timer it would wait forever (the core's own deadline check
    runs only when a worker frees)."""
    async with fake_pool(size=1) as pool, pool.checkout():
        started = trio.current_time()
        with pytest.raises(PoolTimeout):
            await pool.call("echo", 5, checkout_timeout=3.0)
        assert trio.current_time() - started == pytest.approx(3.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ready_core(size: int) -> tuple[PoolCore, Clock]:
    clock = Clock()
    core = PoolCore(size, clock=clock, strict=True)
    core.start()
    for index in range(size):
        core.worker_starting(index)
        core.worker_ready(index, f"w{index}", index)
    core.take_actions()
    return core, clock


@pytest.mark.layer1
def test_core_rechecks_the_deadline_before_a_grant() -> None:
    """Guard: the core's deadline double-check (``PoolCore._try_serve``: a
    waiter past its deadline is expired, not served). The deadline passed but
    the shell's timer has not fired yet (it runs after this event) when a
    worker frees: the waiter gets PoolTimeout, not a worker it no longer
    waits for. Without it, the waiter would be granted after its deadline."""
    core, clock = ready_core(1)
    held = core.request(None)
    core.receive(held.id)
    late = core.request(None, 1.0)
    assert late.status is W.QUEUED
    clock.now = 2.0  # past the deadline; the timer's expire() has not run
    core.checkin(held.id, clean=True)
    assert late.status is W.FAILED and isinstance(late.error, PoolTimeout)
    assert core.slots[0].state is S.READY and core.slots[0].lease is None


# --- lease tokens --------------------------------------------------------------------------------


@pytest.mark.layer1
def test_stale_lease_token_cannot_release_a_reused_slot() -> None:
    """Guard: the lease token (``PoolCore.checkin``: the slot's lease must be this
    waiter's id, of this generation). A lease whose worker died and whose slot
    now serves someone else can't check that slot in: it returns False, and the
    new holder keeps its worker. Without it, the stale check-in would free a
    worker someone holds, and the next checkout would share it."""
    core, _ = ready_core(1)
    old = core.request(None)
    core.receive(old.id)
    core.worker_exited(0, "crashed", crashed=True)
    core.worker_starting(0)
    core.worker_ready(0, "w0.2", 2)
    new = core.request(None)
    core.receive(new.id)
    assert new.slot == 0 and core.slots[0].lease == new.id
    assert core.checkin(old.id, clean=True) is False
    assert core.slots[0].lease == new.id and core.slots[0].state is S.BUSY
    third = core.request(None, 5.0)
    assert third.status is W.QUEUED
    assert not any(isinstance(a, StopWorker) for a in core.take_actions())
    core.check_invariants()


# --- the breaker's probe --------------------------------------------------------------------------


@pytest.mark.layer2
async def test_abandoned_probe_frees_the_way(autojump_clock: trio.testing.MockClock) -> None:
    """Guard: the breaker's abandoned probe (``Pool._acquire``: a probe whose
    caller is cancelled reports ``probe_abandoned``). Half-open, the probe's
    caller is cancelled before it takes its worker: the next caller becomes the
    probe, is served, and closes the breaker. Without it, the half-open
    breaker would count a probe in flight forever and refuse every caller."""
    factory = FakeWorkerFactory(Script())
    factory.plan.extend([Script(crash_before_hello=1), Script(crash_before_hello=1)])
    opened = trio.Event()

    def on_breaker(event: tuple[str, ...], measurements: Mapping[str, float],
                   metadata: Mapping[str, Any]) -> None:
        if getattr(metadata["new"], "value", metadata["new"]) == "open":
            opened.set()

    telemetry.attach("test-defences-breaker", [("engine", "breaker", "transition")],
                     on_breaker)
    try:
        with trio.fail_after(GUARD):
            async with engine.open_pool(worker_factory=factory, size=1, breaker_threshold=2,
                                        breaker_reset=1.0, checkout_timeout=200.0,
                                        restart_backoff=(0.01, 0.01, 0.0)) as pool:
                await opened.wait()  # two failed starts; the third one serves
                await pool.wait_until(lambda view: view.slots[0].state is S.READY)
                await trio.sleep(1.0)  # the open period ends: half-open
                assert pool.statistics().breaker == "half_open"
                with trio.CancelScope() as scope:
                    scope.cancel()  # the probe's caller is cancelled at its checkpoint
                    async with pool.checkout():
                        raise AssertionError("a cancelled checkout took a worker")
                assert pool.statistics().breaker == "half_open"
                assert await pool.call("echo", 2) == 2  # the next probe
                assert pool.statistics().breaker == "closed"
    finally:
        telemetry.detach("test-defences-breaker")
