"""Telemetry handlers: attach, detach, emit, capture.

Handlers are process-wide, as in Erlang's ``:telemetry``. They run synchronously
inside :func:`emit`, on the pool's hot path: keep them cheap and non-blocking.
A handler that raises is logged on the ``engine.telemetry`` logger and stays
attached. Only :class:`Exception` is caught.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any, Final

import attrs

from engine.telemetry.events import ALL_EVENTS, EVENTS, WORKER_EXIT, Event

logger = logging.getLogger("engine.telemetry")

Handler = Callable[[Event, Mapping[str, float], Mapping[str, Any]], None]

# --- handler registry -----------------------------------------------------------

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_CACHE_LIMIT: Final = 1024


@attrs.frozen
class _Attached:
    handler_id: str
    prefixes: tuple[Event, ...] | None  # None: every event
    handler: Handler

    def wants(self, event: Event) -> bool:
        if self.prefixes is None:
            return True
        return any(event[: len(prefix)] == prefix for prefix in self.prefixes)


class _Registry:
    """An immutable set of handlers plus a per-event dispatch cache.

    attach/detach build a new registry instead of mutating this one, so
    :func:`emit` reads one consistent object without a lock, and a cache entry
    computed from an old registry can never leak into a new one.
    """

    __slots__ = ("cache", "handlers")

    def __init__(self, handlers: Mapping[str, _Attached]) -> None:
        self.handlers = handlers
        self.cache: dict[Event, tuple[_Attached, ...]] = {}

    def for_event(self, event: Event) -> tuple[_Attached, ...]:
        found = self.cache.get(event)
        if found is None:
            found = tuple(h for h in self.handlers.values() if h.wants(event))
            if len(self.cache) >= _CACHE_LIMIT:
                self.cache.clear()  # someone emits unbounded names: stay bounded
            self.cache[event] = found
        return found


# None while nothing is attached: emit() then costs one global read and a test.
_registry: _Registry | None = None
_mutate_lock = threading.Lock()  # serialises attach/detach only; emit never takes it


def _check_event(event: object) -> Event:
    if isinstance(event, str):
        parts = tuple(part for part in event.split(".") if part)
        if parts and parts[:1] != ALL_EVENTS:
            parts = ALL_EVENTS + parts
        raise ValueError(f"an event name is a tuple of str, not a dotted string: "
                         f"{event!r} is {parts!r}")
    if (not isinstance(event, tuple) or not event
            or not all(isinstance(part, str) for part in event)):
        raise ValueError(f"an event name is a non-empty tuple of str such as "
                         f"{WORKER_EXIT!r}, got {event!r}")
    _check_known(event)
    return event


def _is_prefix(prefix: Event) -> bool:
    return any(name[:len(prefix)] == prefix for name in EVENTS)


def _check_known(prefix: Event) -> None:
    """An engine event name (or prefix) that names no event would never match:
    refused, as is one missing its leading "engine". Other names are the
    application's own events (``emit`` takes any name)."""
    if prefix[:1] == ALL_EVENTS:
        if not _is_prefix(prefix):
            import difflib

            close = difflib.get_close_matches(".".join(prefix),
                                              [".".join(n) for n in EVENTS], n=1)
            hint = f"; did you mean {tuple(close[0].split('.'))!r}?" if close else ""
            raise ValueError(f"no engine event is named {prefix!r} or starts with it{hint} "
                             "(engine.telemetry.EVENTS lists them)")
    elif _is_prefix(ALL_EVENTS + prefix):
        raise ValueError(f"engine's events start with {ALL_EVENTS[0]!r}: {prefix!r} matches "
                         f"none; use {ALL_EVENTS + prefix!r}")


def attach(handler_id: str, events: Iterable[Event] | None, handler: Handler) -> None:
    """Call ``handler(event, measurements, metadata)`` for matching events.

    ``events`` holds event names or prefixes of them; ``None`` matches every
    event. ``handler_id`` must be unique (``ValueError`` otherwise); pass it to
    :func:`detach`.
    """
    global _registry
    prefixes = None if events is None else tuple(_check_event(e) for e in events)
    if not callable(handler):
        raise ValueError(f"handler must be callable, got {handler!r}")
    with _mutate_lock:
        current = _registry.handlers if _registry is not None else {}
        if handler_id in current:
            raise ValueError(f"a telemetry handler with id {handler_id!r} is already attached")
        _registry = _Registry({**current, handler_id: _Attached(handler_id, prefixes, handler)})


def detach(handler_id: str) -> bool:
    """Remove a handler; False if no handler had that id."""
    global _registry
    with _mutate_lock:
        if _registry is None or handler_id not in _registry.handlers:
            return False
        rest = {k: v for k, v in _registry.handlers.items() if k != handler_id}
        _registry = _Registry(rest) if rest else None
        return True


def active() -> bool:
    """True if any handler is attached.

    Lets a hot path skip building measurements and metadata nobody will read::

        if telemetry.active():
            telemetry.emit(telemetry.CHECKOUT, {"wait": wait}, {"pool": name, ...})
    """
    return _registry is not None


def emit(
    event: Event,
    measurements: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Deliver an event to the handlers attached to it.

    A handler's ``Exception`` is logged, never propagated. Cheap when nothing is
    attached; guard the construction of costly arguments with :func:`active`.
    """
    registry = _registry
    if registry is None:
        return
    handlers = registry.for_event(event)
    if not handlers:
        return
    measured = _EMPTY if measurements is None else measurements
    meta = _EMPTY if metadata is None else metadata
    for attached in handlers:
        try:
            attached.handler(event, measured, meta)
        except Exception:
            logger.exception(
                "telemetry handler %r raised on event %r; it stays attached",
                attached.handler_id, event,
            )


@attrs.frozen
class CapturedEvent:
    """One event recorded by :func:`capture` (mappings are copied at emit time)."""

    event: Event
    measurements: Mapping[str, float]
    metadata: Mapping[str, Any]


_capture_ids = itertools.count(1)


@contextmanager
def capture(events: Iterable[Event] | None = None) -> Iterator[list[CapturedEvent]]:
    """Record matching events into a list while the block runs (tests, debugging)::

        with telemetry.capture([("engine", "worker")]) as seen:
            ...
        assert seen[0].event == telemetry.WORKER_SPAWN
    """
    seen: list[CapturedEvent] = []

    def record(event: Event, measurements: Mapping[str, float],
               metadata: Mapping[str, Any]) -> None:
        seen.append(CapturedEvent(event, dict(measurements), dict(metadata)))

    handler_id = f"engine.telemetry.capture-{next(_capture_ids)}"
    attach(handler_id, events, record)
    try:
        yield seen
    finally:
        detach(handler_id)


