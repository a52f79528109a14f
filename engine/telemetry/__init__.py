"""Telemetry events, latency histograms and metrics.

Events
------
An event is named by a tuple of strings, e.g. ``("engine", "worker", "ready")``,
and carries *measurements* (numbers: durations in seconds, counts) and
*metadata* (anything: ids, reasons). Handlers are process-wide, as in Erlang's
``:telemetry``::

    def log_ready(event, measurements, metadata):
        print(metadata["worker_id"], "is ready")

    telemetry.attach("my-app", [telemetry.WORKER_READY], log_ready)

A handler attached to ``("engine", "worker")`` receives every event whose name
starts with it; ``events=None`` receives everything. :data:`EVENTS` is the
catalogue of what the library emits, with the measurements and metadata of each.

Handlers run synchronously inside :func:`emit`, on the pool's hot path: keep them
cheap and non-blocking (hand heavy work to a channel or a thread). A handler
that raises is logged on the ``engine.telemetry`` logger and **stays attached**
(one bad event must not silence a metrics exporter); detach it yourself if it
keeps failing. Only :class:`Exception` is caught: ``KeyboardInterrupt`` and
``trio.Cancelled`` propagate.

Metrics
-------
:class:`Metrics` keeps counters and :class:`LatencyHistogram` s by name;
:meth:`Metrics.snapshot` returns a frozen :class:`MetricsSnapshot` (the pool's
``pool.metrics()``), which :func:`engine.telemetry.prometheus.render` formats.
"""

from engine.telemetry.events import (
    ALL_EVENTS,
    BREAKER_TRANSITION,
    CALL,
    CHECKIN,
    CHECKOUT,
    CONTRACT_VIOLATION,
    EVENTS,
    HEALTH_FAILED,
    HEALTH_OK,
    POOL_START,
    POOL_STOP,
    SESSION_BIND,
    SESSION_END,
    SESSION_EVENTS,
    SESSION_EXPIRE,
    SESSION_LOST,
    WORKER_COOLDOWN,
    WORKER_DRAINED,
    WORKER_EVENTS,
    WORKER_EXIT,
    WORKER_READY,
    WORKER_RESTART,
    WORKER_SPAWN,
    WORKER_TRANSITION,
    Event,
    EventSpec,
)
from engine.telemetry.handlers import (
    CapturedEvent,
    Handler,
    active,
    attach,
    capture,
    detach,
    emit,
)
from engine.telemetry.metrics import (
    LatencyHistogram,
    LatencySummary,
    Metrics,
    MetricsSnapshot,
)

__all__ = [
    "ALL_EVENTS",
    "BREAKER_TRANSITION",
    "CALL",
    "CHECKIN",
    "CHECKOUT",
    "CONTRACT_VIOLATION",
    "EVENTS",
    "HEALTH_FAILED",
    "HEALTH_OK",
    "POOL_START",
    "POOL_STOP",
    "SESSION_BIND",
    "SESSION_END",
    "SESSION_EVENTS",
    "SESSION_EXPIRE",
    "SESSION_LOST",
    "WORKER_COOLDOWN",
    "WORKER_DRAINED",
    "WORKER_EVENTS",
    "WORKER_EXIT",
    "WORKER_READY",
    "WORKER_RESTART",
    "WORKER_SPAWN",
    "WORKER_TRANSITION",
    "CapturedEvent",
    "Event",
    "EventSpec",
    "Handler",
    "LatencyHistogram",
    "LatencySummary",
    "Metrics",
    "MetricsSnapshot",
    "active",
    "attach",
    "capture",
    "detach",
    "emit",
]
