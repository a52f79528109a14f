"""The pool's introspection API: ``statistics()``, ``inspect()``, ``wait_until()``,
``check_invariants()`` (layer 2: fake workers, virtual time; the shell's
consistency check itself is pure).
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import engine
from engine.errors import SessionLost
from engine.pool.core import CoreCounts, PoolCore
from engine.pool.introspection import PoolStatistics, check_shell_invariants
from engine.pool.lifecycle import WorkerState
from engine.pool.table import WorkerRow, WorkerTable
from engine.testing.fakes import FakeWorkerFactory, Script

S = WorkerState
GUARD = 1000.0  # virtual seconds


@pytest.mark.layer2
async def test_inspect_shows_slots_leases_bindings_and_the_queue(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=2) as pool:
            await pool.wait_ready()
            await pool.call("echo", 1, session="s1")
            async with trio.open_nursery() as nursery, pool.checkout() as held:
                async with pool.checkout() as other:
                    nursery.start_soon(pool.call, "echo", 2)  # queues: both are held
                    await trio.testing.wait_all_tasks_blocked()
                    view = pool.inspect()
                    assert [s.state for s in view.slots] == [S.BUSY, S.BUSY]
                    assert {s.worker_id for s in view.slots} == {held.worker_id,
                                                                  other.worker_id}
                    assert all(s.generation == 1 and s.lease is not None for s in view.slots)
                    assert {s.worker.worker_id for s in view.slots if s.worker} == \
                        {held.worker_id, other.worker_id}
                    bound = view.bindings["s1"]
                    assert bound.lost is None
                    assert view.slots[bound.slot].sessions == ("s1",)
                    assert view.slots[bound.slot].calls == 1
                    [queued] = view.queue
                    assert queued.purpose == "call" and queued.session is None
                    assert queued.deadline == pytest.approx(
                        queued.enqueued_at + pool.config.checkout_timeout)
                    assert not view.closing and view.last_start_error is None
                    pool.check_invariants()
                    with pytest.raises(attrs.exceptions.FrozenInstanceError):
                        view.closing = True  # type: ignore[misc]
            # A snapshot does not change with the pool.
            assert len(view.queue) == 1 and not pool.inspect().queue
            # The bound worker dies: the binding is marked lost until its next use.
            factory.worker(bound.worker_id or "").kill()
            view = await pool.wait_until(
                lambda v: v.bindings["s1"].lost is not None
                and all(s.state is S.READY for s in v.slots))
            assert "crashed" in (view.bindings["s1"].lost or "")
            assert view.slots[bound.slot].generation == 2
            with pytest.raises(SessionLost):
                await pool.call("echo", 3, session="s1")
            assert "s1" not in pool.inspect().bindings
            pool.check_invariants()


@pytest.mark.layer2
async def test_statistics_are_the_core_counts_plus_the_shells_figures(
        autojump_clock: trio.testing.MockClock) -> None:
    factory = FakeWorkerFactory(Script())
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=factory, size=3, name=None) as pool:
            await pool.wait_ready()
            with pytest.raises(engine.WorkerCrashed):
                await pool.call("crash", {"code": 3})
            await pool.wait_ready()
            async with pool.checkout():
                stats = pool.statistics()
    counts = set(attrs.fields_dict(CoreCounts))
    assert counts < set(attrs.fields_dict(PoolStatistics))
    assert (stats.size, stats.ready, stats.busy, stats.leased, stats.leases) == (3, 2, 1, 1, 1)
    assert (stats.crashes, stats.restarts, stats.start_failures) == (1, 1, 0)
    assert stats.breaker == "closed" and not stats.closed and stats.name is None
    # Unnamed: the label its logs and errors use is there too (new-user audit).
    assert stats.label == pool.label and stats.label.startswith("pool")
    assert pool.statistics().closed


class _Handle:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id


class _Control:
    async def run(self) -> None: ...
    def request_start(self) -> None: ...
    def request_stop(self, reason: str, graceful: bool) -> None: ...
    def expect_kill(self) -> None: ...


@pytest.mark.layer1
def test_the_shell_invariants_catch_a_table_that_disagrees_with_the_core() -> None:
    core = PoolCore(2, clock=lambda: 0.0)
    table = WorkerTable(2, lambda row: _Control())
    core.start()
    core.take_actions()
    check_shell_invariants(core, table, {}, {})  # both stopped, no worker: fine
    core.worker_starting(0)
    rows: list[WorkerRow] = list(table)
    rows[0].worker = _Handle("w-0.1")  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="starting but has a worker"):
        check_shell_invariants(core, table, {}, {})
    core.worker_ready(0, "w-0.1", 100)
    check_shell_invariants(core, table, {}, {})
    rows[0].worker = _Handle("w-0.0")  # type: ignore[assignment]
    with pytest.raises(AssertionError, match=r"runs w-0\.1 but its row holds w-0\.0"):
        check_shell_invariants(core, table, {}, {})
    rows[0].worker = _Handle("w-0.1")  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="held but the core forgot it"):
        check_shell_invariants(core, table, {42: object()}, {})
    with pytest.raises(AssertionError, match="parked for waiter 7"):
        check_shell_invariants(core, table, {}, {7: object()})


async def test_a_pool_views_repr_is_a_short_summary(
        autojump_clock: trio.testing.MockClock) -> None:
    """Printing ``pool.inspect()`` gives one line per slot, not every field of
    every transition (new-user audit: a 4 KB wall of text for a pool of 2)."""
    with trio.fail_after(GUARD):
        async with engine.open_pool(worker_factory=FakeWorkerFactory(Script()), size=2) as pool:
            await pool.wait_ready(2)
            await pool.call("echo", 1, session="s")
            view = pool.inspect()
    text = repr(view)
    lines = text.splitlines()
    assert lines[0] == f"<PoolView {view.label} (open): 2 slots, 1 sessions bound, 0 queued"
    assert len(lines) == 3 and all(line.startswith("  <SlotView ") for line in lines[1:])
    bound = view.bindings["s"].slot
    assert "sessions ['s']" in lines[1 + bound] and "ready, worker " in lines[1 + bound]
    assert len(text) < 400
