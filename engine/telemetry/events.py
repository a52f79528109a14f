"""The catalogue of telemetry events: every event the library emits, declared once.

Each event is declared here with the measurements (numbers) and metadata
(anything) it carries, and the code emits it only through the constant declared
here. A test captures the events of real runs and checks every one of them
against its declaration, and the README's event table is rendered from
:data:`EVENTS` (:func:`markdown_table`), so the catalogue cannot drift from the
code. Pure: no Trio.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import attrs

Event = tuple[str, ...]


@attrs.frozen
class EventSpec:
    """What one event carries. Durations are in seconds; ``pool`` is the pool's label."""

    name: Event
    doc: str
    measurements: tuple[str, ...] = ()
    metadata: tuple[str, ...] = ("pool",)

    def __str__(self) -> str:
        parts = [self.doc]
        if self.measurements:
            parts.append(f"measurements: {', '.join(self.measurements)}")
        parts.append(f"metadata: {', '.join(self.metadata)}")
        return ". ".join(parts)


#: Prefixes to attach to: every event, or every event of one family.
ALL_EVENTS: Final[Event] = ("engine",)
WORKER_EVENTS: Final[Event] = ("engine", "worker")
SESSION_EVENTS: Final[Event] = ("engine", "session")

_declared: dict[Event, EventSpec] = {}


def _declare(*name: str, doc: str, measurements: tuple[str, ...] = (),
             metadata: tuple[str, ...] = ("pool",)) -> Event:
    event: Event = ("engine", *name)
    _declared[event] = EventSpec(event, doc, measurements, metadata)
    return event


POOL_START: Final = _declare(
    "pool", "start", doc="a pool opened", measurements=("size",), metadata=("pool", "app"))
POOL_STOP: Final = _declare("pool", "stop", doc="a pool began to close")
WORKER_SPAWN: Final = _declare(
    "worker", "spawn", doc="a slot started a worker process",
    metadata=("pool", "slot", "worker_id"))
WORKER_READY: Final = _declare(
    "worker", "ready", doc="a worker sent its hello and is ready",
    metadata=("pool", "slot", "worker_id", "pid"))
WORKER_EXIT: Final = _declare(
    "worker", "exit", doc="a worker process ended (or failed to start)",
    metadata=("pool", "slot", "worker_id", "exit_code", "signal", "reason"))
WORKER_RESTART: Final = _declare(
    "worker", "restart", doc="a slot schedules a rebuild", measurements=("delay",),
    metadata=("pool", "slot", "reason"))
WORKER_COOLDOWN: Final = _declare(
    "worker", "cooldown",
    doc="a slot exceeded max_restarts in restart_period and cools down",
    measurements=("cooldown",), metadata=("pool", "slot"))
WORKER_TRANSITION: Final = _declare(
    "worker", "transition",
    doc="a worker changed lifecycle state (duration: time spent in the old state)",
    measurements=("duration",), metadata=("pool", "slot", "worker_id", "old", "new", "reason"))
WORKER_DRAINED: Final = _declare(
    "worker", "drained",
    doc="a worker whose call was cancelled or timed out in flight gave the request back "
        "(outcome clean: ready again, sessions kept) or not within cancel_grace (outcome "
        "killed: replaced); duration: from the start of the drain",
    measurements=("duration",),
    metadata=("pool", "slot", "worker_id", "pid", "outcome", "reason"))
CHECKOUT: Final = _declare(
    "checkout", doc="a worker was checked out", measurements=("wait",),
    metadata=("pool", "worker_id", "session"))
CHECKIN: Final = _declare(
    "checkin", doc="a lease was returned", metadata=("pool", "worker_id", "clean"))
CALL: Final = _declare(
    "call", doc="a call through a lease ended", measurements=("duration",),
    metadata=("pool", "worker_id", "command", "outcome"))
HEALTH_OK: Final = _declare(
    "health", "ok", doc="an idle health check passed", metadata=("pool", "slot", "worker_id"))
HEALTH_FAILED: Final = _declare(
    "health", "failed", doc="an idle health check failed or was slow",
    metadata=("pool", "slot", "worker_id", "failures", "reason"))
BREAKER_TRANSITION: Final = _declare(
    "breaker", "transition", doc="the pool's circuit breaker changed state",
    metadata=("pool", "old", "new", "reason"))
SESSION_BIND: Final = _declare(
    "session", "bind", doc="a session was bound to a worker",
    metadata=("pool", "session", "slot", "worker_id"))
SESSION_LOST: Final = _declare(
    "session", "lost", doc="a session's worker died or was retired; its state is gone",
    metadata=("pool", "session", "slot", "reason"))
SESSION_EXPIRE: Final = _declare(
    "session", "expire", doc="an idle session passed session_ttl and is being ended",
    metadata=("pool", "session"))
SESSION_END: Final = _declare(
    "session", "end", doc="end_session() cleaned up a session's live state",
    metadata=("pool", "session"))
CONTRACT_VIOLATION: Final = _declare(
    "contract", "violation", doc="a policy callback broke its contract (treated as Remove)",
    metadata=("pool", "slot", "callback", "value"))

#: Every event the library emits -> its declaration. Attach to ``("engine",)``
#: for all of them.
EVENTS: Final[Mapping[Event, EventSpec]] = MappingProxyType(dict(_declared))


def markdown_table() -> str:
    """The README's event table, rendered from :data:`EVENTS`."""
    rows = ["| event | what happened | measurements | metadata |", "|---|---|---|---|"]
    for spec in EVENTS.values():
        rows.append(f"| `{'.'.join(spec.name[1:])}` | {spec.doc} | "
                    f"{', '.join(spec.measurements) or '-'} | {', '.join(spec.metadata)} |")
    return "\n".join(rows) + "\n"
