"""What a pool shows of itself: statistics, and snapshots for tests and tools.

* :class:`PoolStatistics` (``pool.statistics()``): the core's counts
  (:class:`~engine.pool.core.CoreCounts`, every field) plus what only the
  shell knows (name, leases held, breaker state, closed, and where the
  workers run: ``hosts``, ``remote``).
* :class:`PoolView` (``pool.inspect()``): a frozen snapshot of every slot
  (:class:`SlotView`), session binding (:class:`BindingView`) and queued
  checkout (:class:`WaiterView`), for the test kit, the stress runner and
  debugging. Taking one costs O(size + sessions + queue): not for hot paths.

Snapshots are frozen attrs values: they do not change when the pool does.
The one live object in them is ``SlotView.worker``, the slot's worker handle
(for liveness checks such as ``is_alive()``; calling it directly bypasses the
pool's leases, so tests only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import attrs

from engine.errors import WorkerStartError
from engine.pool.core import Binding, CoreCounts, PoolCore, Slot, Waiter, WaiterStatus
from engine.pool.lifecycle import Transition, WorkerState
from engine.pool.table import WorkerTable
from engine.process.handle import WorkerHandle


@attrs.frozen
class PoolStatistics(CoreCounts):
    """A snapshot of the pool: the core's counts plus the shell's own figures.

    ``busy`` and ``leased`` count workers under a lease (health probes too);
    ``leases`` counts the leases callers hold; ``draining`` the workers giving
    back a request abandoned in flight (not leased, not ready, counted in
    ``size``). ``hosts``: the workers present per machine, ``(node name,
    count)`` sorted by name (the name each worker gave in its hello; ``"?"``
    for one that gave none); ``remote``: how many of them were started through
    a remote launcher (see ``SlotView``). ``name``: the pool's configured
    name (None when it has none); ``label``: what its logs, errors and
    telemetry call it (the name, or ``pool1``, ``pool2``... when unnamed).
    """

    name: str | None
    leases: int
    breaker: str
    closed: bool
    hosts: tuple[tuple[str, int], ...] = ()
    remote: int = 0
    label: str = ""

    @classmethod
    def from_counts(cls, counts: CoreCounts, *, name: str | None, leases: int, breaker: str,
                    closed: bool, workers: Iterable[WorkerHandle | None] = (),
                    label: str = "") -> PoolStatistics:
        present = [w for w in workers if w is not None]
        hosts = Counter(placement(w).host or "?" for w in present)
        return cls(**attrs.asdict(counts, recurse=False), name=name, leases=leases,
                   breaker=breaker, closed=closed, hosts=tuple(sorted(hosts.items())),
                   remote=sum(1 for w in present if placement(w).remote_launcher),
                   label=label or name or "")


@attrs.frozen
class Placement:
    """Where a worker runs, as far as its handle says (custom handles may not).

    ``host``: the node name from its hello. ``remote_launcher``: the name of
    the remote launcher that started it, None when it runs on this host.
    ``os_pid``: the process this pool spawned (for a remote worker, the local
    launcher, e.g. ssh), None for a handle without one (a fake)."""

    host: str | None
    remote_launcher: str | None
    os_pid: int | None


def placement(worker: WorkerHandle) -> Placement:
    # Optional members, beyond the WorkerHandle protocol: ProcessWorker and the
    # fakes have them, a custom worker_factory's handle may not.
    host = getattr(worker, "host", None)
    launcher = getattr(worker, "remote_launcher", None)
    os_pid = getattr(worker, "os_pid", None)
    return Placement(host=host if isinstance(host, str) else None,
                     remote_launcher=launcher if isinstance(launcher, str) else None,
                     os_pid=os_pid if isinstance(os_pid, int) else None)


@attrs.frozen(repr=False)
class SlotView:
    """One slot: the core's record of it and the shell's worker handle.

    Where its worker runs: ``host`` (the node name from the hello),
    ``remote_launcher`` (the remote launcher's name, None for a worker on this
    host) and ``os_pid`` (the process the pool spawned: for a remote worker the
    local launcher). A remote worker's ``pid`` belongs to its host: signal or
    look up ``local_pid`` instead.
    """

    index: int
    state: WorkerState
    generation: int  # workers this slot has started
    worker_id: str | None
    pid: int | None  # the worker's own, from its hello (on its host)
    lease: int | None  # the token (waiter id) of the lease holding it
    sessions: tuple[str, ...]
    calls: int  # calls served by the current worker
    wanted: bool  # the pool wants a worker here (a stopped slot will restart)
    history: tuple[Transition, ...]
    worker: WorkerHandle | None  # None while starting or stopped
    host: str | None = None
    remote_launcher: str | None = None
    os_pid: int | None = None

    def __repr__(self) -> str:
        # Short: a slot's history and handle would fill a screen; the fields
        # are all there to read.
        where = f" on {self.host}" if self.remote else ""
        leased = f", lease {self.lease}" if self.lease is not None else ""
        sessions = f", sessions {list(self.sessions)}" if self.sessions else ""
        return (f"<SlotView {self.index}: {self.state.value}, worker {self.worker_id} "
                f"(pid {self.pid}{where}), {self.calls} calls{leased}{sessions}>")

    @property
    def remote(self) -> bool:
        """The worker runs on another host: its ``pid`` is not a process here."""
        return self.remote_launcher is not None

    @property
    def local_pid(self) -> int | None:
        """The process of this host that stands for the worker, the only one to
        signal or look up in /proc: the worker itself when it runs here, its
        local launcher process when it is remote (killing that ends the remote
        worker through stdin EOF)."""
        return self.os_pid if self.remote else self.pid


@attrs.frozen
class BindingView:
    """A session's binding: which slot's worker holds its state."""

    session: str
    slot: int
    generation: int
    worker_id: str | None
    lost: str | None  # why its state is gone, until the next use reports SessionLost


@attrs.frozen
class WaiterView:
    """A queued checkout (or health probe), in queue order."""

    id: int
    session: str | None
    purpose: str  # "call" or "health"
    deadline: float | None
    enqueued_at: float


@attrs.frozen(repr=False)
class PoolView:
    """A frozen snapshot of the whole pool (``pool.inspect()``); its repr is a
    short summary, one line per slot."""

    label: str
    closing: bool
    slots: tuple[SlotView, ...]
    bindings: Mapping[str, BindingView]
    queue: tuple[WaiterView, ...]
    last_start_error: WorkerStartError | None

    def live_workers(self) -> list[WorkerHandle]:
        """Handles of the workers present whose process is alive right now."""
        return [s.worker for s in self.slots if s.worker is not None and s.worker.is_alive()]

    def __repr__(self) -> str:
        state = "closing" if self.closing else "open"
        lines = [f"<PoolView {self.label} ({state}): {len(self.slots)} slots, "
                 f"{len(self.bindings)} sessions bound, {len(self.queue)} queued"]
        lines += [f"  {slot!r}" for slot in self.slots]
        if self.last_start_error is not None:
            lines.append(f"  last start error: {self.last_start_error}")
        return "\n".join(lines) + ">"


def _slot_view(slot: Slot, worker: WorkerHandle | None) -> SlotView:
    where = placement(worker) if worker is not None else _NOWHERE
    return SlotView(index=slot.index, state=slot.state, generation=slot.generation,
                    worker_id=slot.worker_id, pid=slot.pid, lease=slot.lease,
                    sessions=tuple(sorted(slot.sessions)), calls=slot.calls,
                    wanted=slot.wanted, history=tuple(slot.lifecycle.history), worker=worker,
                    host=where.host, remote_launcher=where.remote_launcher,
                    os_pid=where.os_pid)


_NOWHERE = Placement(host=None, remote_launcher=None, os_pid=None)


def _binding_view(session: str, binding: Binding) -> BindingView:
    return BindingView(session=session, slot=binding.slot, generation=binding.generation,
                       worker_id=binding.worker_id, lost=binding.lost)


def _waiter_view(waiter: Waiter) -> WaiterView:
    return WaiterView(id=waiter.id, session=waiter.session, purpose=waiter.purpose,
                      deadline=waiter.deadline, enqueued_at=waiter.enqueued_at)


def view_of(label: str, core: PoolCore, table: WorkerTable,
            last_start_error: WorkerStartError | None) -> PoolView:
    """Snapshot the core and the worker table."""
    return PoolView(
        label=label, closing=core.closing,
        slots=tuple(_slot_view(slot, table.worker(slot.index)) for slot in core.slots),
        bindings={s: _binding_view(s, b) for s, b in core.bindings.items()},
        queue=tuple(_waiter_view(w) for w in core.queued_in_order()),
        last_start_error=last_start_error,
    )


def check_shell_invariants(core: PoolCore, table: WorkerTable, held: Mapping[int, object],
                           parked: Mapping[int, object]) -> None:
    """Raise AssertionError if the shell's tables disagree with the core."""
    S = WorkerState
    for slot in core.slots:
        worker = table.worker(slot.index)
        if slot.state in (S.READY, S.BUSY, S.DEGRADED, S.DRAINING):
            assert worker is not None, f"slot {slot.index} is {slot.state.value} with no worker"
            assert worker.worker_id == slot.worker_id, \
                f"slot {slot.index} runs {slot.worker_id} but its row holds {worker.worker_id}"
        elif slot.state in (S.STARTING, S.STOPPED):
            assert worker is None, f"slot {slot.index} is {slot.state.value} but has a worker"
    for token in held:
        waiter = core.waiters.get(token)
        assert waiter is not None, f"lease {token} is held but the core forgot it"
        assert waiter.status is WaiterStatus.HELD and waiter.purpose == "call", \
            f"lease {token} is held but its waiter is {waiter.purpose} {waiter.status.value}"
    for waiter_id in parked:
        assert waiter_id in core.queue, f"task parked for waiter {waiter_id}, not queued"
