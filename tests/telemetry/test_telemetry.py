"""engine.telemetry (events, histogram, metrics) and engine.telemetry.prometheus (layer 1)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import telemetry
from engine.telemetry import LatencyHistogram, LatencySummary, Metrics, MetricsSnapshot, prometheus

pytestmark = pytest.mark.layer1

Seen = list[tuple[tuple[str, ...], dict[str, float], dict[str, Any]]]


@pytest.fixture
def attach() -> Iterator[Any]:
    """attach() that detaches whatever the test attached, even on failure."""
    ids: list[str] = []

    def do_attach(handler_id: str, events: Any, handler: Any) -> None:
        telemetry.attach(handler_id, events, handler)
        ids.append(handler_id)

    yield do_attach
    for handler_id in ids:
        telemetry.detach(handler_id)


def recorder(seen: Seen) -> telemetry.Handler:
    def handler(event: tuple[str, ...], measurements: Mapping[str, float],
                metadata: Mapping[str, Any]) -> None:
        seen.append((event, dict(measurements), dict(metadata)))

    return handler


# --- events -----------------------------------------------------------------------------


def test_attach_emit_detach(attach: Any) -> None:
    seen: Seen = []
    attach("t1", [telemetry.WORKER_READY], recorder(seen))
    telemetry.emit(telemetry.WORKER_READY, {"duration": 0.01}, {"worker_id": "w1"})
    telemetry.emit(telemetry.WORKER_EXIT, {"uptime": 1.0})
    assert seen == [(("engine", "worker", "ready"), {"duration": 0.01}, {"worker_id": "w1"})]
    assert telemetry.detach("t1")
    assert not telemetry.detach("t1")
    telemetry.emit(telemetry.WORKER_READY)
    assert len(seen) == 1


def test_prefix_and_catch_all_filtering(attach: Any) -> None:
    workers: Seen = []
    everything: Seen = []
    attach("workers", [("engine", "worker")], recorder(workers))
    attach("all", None, recorder(everything))
    telemetry.emit(telemetry.WORKER_SPAWN)
    telemetry.emit(telemetry.WORKER_RESTART, {"delay": 0.1})
    telemetry.emit(telemetry.CALL, {"duration": 0.002}, {"outcome": "ok"})
    telemetry.emit(("engine", "workers", "oops"))  # a prefix is matched element-wise
    assert [e for e, _, _ in workers] == [telemetry.WORKER_SPAWN, telemetry.WORKER_RESTART]
    assert len(everything) == 4
    assert everything[0][1] == {} and everything[0][2] == {}  # defaults are empty mappings


def test_attaching_later_invalidates_the_dispatch_cache(attach: Any) -> None:
    first: Seen = []
    second: Seen = []
    attach("first", [("engine",)], recorder(first))
    telemetry.emit(telemetry.HEALTH_OK)  # caches the handlers for HEALTH_OK
    attach("second", [telemetry.HEALTH_OK], recorder(second))
    telemetry.emit(telemetry.HEALTH_OK)
    assert len(first) == 2 and len(second) == 1


def test_duplicate_id_and_bad_event_names_are_rejected(attach: Any) -> None:
    attach("dup", None, recorder([]))
    with pytest.raises(ValueError, match="dup"):
        telemetry.attach("dup", None, recorder([]))
    with pytest.raises(ValueError, match="event name"):
        telemetry.attach("bad", ["engine.worker.ready"], recorder([]))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="event name"):
        telemetry.attach("bad", [()], recorder([]))
    assert not telemetry.detach("bad")


def test_raising_handler_is_logged_stays_attached_and_others_still_run(
    attach: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def broken(event: tuple[str, ...], m: Mapping[str, float], md: Mapping[str, Any]) -> None:
        calls.append(event)
        raise RuntimeError("exporter down")

    seen: Seen = []
    attach("broken-handler", None, broken)
    attach("good", None, recorder(seen))
    with caplog.at_level(logging.ERROR, logger="engine.telemetry"):
        telemetry.emit(telemetry.POOL_START, {"size": 4})
        telemetry.emit(telemetry.POOL_STOP)
    assert len(calls) == 2 and len(seen) == 2
    assert "broken-handler" in caplog.text
    assert "exporter down" in caplog.text  # logged with the traceback
    assert all(r.name == "engine.telemetry" for r in caplog.records)


def test_capture_records_and_detaches() -> None:
    with telemetry.capture([("engine", "session")]) as seen:
        telemetry.emit(telemetry.SESSION_BIND, metadata={"session": "s1"})
        telemetry.emit(telemetry.POOL_START)
    assert [c.event for c in seen] == [telemetry.SESSION_BIND]
    assert seen[0].metadata == {"session": "s1"}
    telemetry.emit(telemetry.SESSION_LOST)
    assert len(seen) == 1


def test_event_catalogue_lists_the_pool_events() -> None:
    names = set(telemetry.EVENTS)
    for required in [
        telemetry.POOL_START, telemetry.POOL_STOP, telemetry.WORKER_SPAWN,
        telemetry.WORKER_READY, telemetry.WORKER_EXIT, telemetry.WORKER_RESTART,
        telemetry.WORKER_TRANSITION, telemetry.CHECKOUT, telemetry.CHECKIN,
        telemetry.CALL, telemetry.HEALTH_OK, telemetry.HEALTH_FAILED,
        telemetry.BREAKER_TRANSITION, telemetry.SESSION_BIND, telemetry.SESSION_LOST,
        telemetry.SESSION_EXPIRE, telemetry.CONTRACT_VIOLATION,
    ]:
        assert required in names
    for name, spec in telemetry.EVENTS.items():
        assert name[0] == "engine" and all(isinstance(p, str) and p for p in name)
        assert spec.doc


def test_active_and_emit_without_handlers(attach: Any) -> None:
    assert not telemetry.active()
    telemetry.emit(telemetry.CHECKOUT, {"wait": 0.0})  # a no-op
    attach("t", [telemetry.CALL], recorder([]))
    assert telemetry.active()
    telemetry.detach("t")
    assert not telemetry.active()


# --- histogram ----------------------------------------------------------------------------


def exact_percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


latencies = st.floats(1e-6, 3600.0, allow_nan=False, allow_infinity=False)
percentiles = st.one_of(st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]),
                        st.floats(0.0, 100.0))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(latencies, min_size=1, max_size=300), p=percentiles)
def test_histogram_percentiles_within_one_percent(values: list[float], p: float) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    exact = exact_percentile(values, p)
    assert abs(histogram.percentile(p) - exact) <= 0.01 * exact
    assert histogram.count == len(values)
    assert histogram.min == min(values) and histogram.max == max(values)
    assert histogram.mean == pytest.approx(sum(values) / len(values))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(latencies, min_size=1, max_size=200))
def test_snapshot_matches_percentile(values: list[float]) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    summary = histogram.snapshot()
    assert summary.count == len(values)
    assert (summary.p50, summary.p90, summary.p99) == (
        histogram.percentile(50), histogram.percentile(90), histogram.percentile(99))
    assert summary.min <= summary.p50 <= summary.p90 <= summary.p99 <= summary.max
    assert summary.sum == pytest.approx(sum(values))


def test_histogram_edges() -> None:
    histogram = LatencyHistogram()
    assert histogram.snapshot() == LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    histogram.record(0.0)  # a clock tick too coarse to see the call
    histogram.record(2 * 3600.0)  # beyond the top bucket: clamped, max stays exact
    assert histogram.percentile(0) == 0.0
    assert histogram.percentile(100) == 7200.0
    assert histogram.percentile(50) == 0.0  # nearest rank: the 1st of 2 values
    histogram.record(5e-7)
    assert histogram.percentile(50) < 1e-6  # below 1 µs: within 1 µs absolute
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            histogram.record(bad)
    with pytest.raises(ValueError):
        histogram.percentile(101)


# --- metrics and prometheus -------------------------------------------------------------


def test_metrics_snapshot_is_frozen_copy() -> None:
    metrics = Metrics(counters=["checkouts"], histograms=["checkout_wait", "call"])
    metrics.increment("checkouts")
    metrics.increment("checkouts", 2)
    metrics.increment("restarts")
    metrics.observe("call", 0.002)
    snapshot = metrics.snapshot()
    metrics.increment("checkouts")
    assert snapshot.counters == {"checkouts": 3, "restarts": 1}
    assert set(snapshot.latencies) == {"checkout_wait", "call"}
    assert snapshot.latencies["checkout_wait"].count == 0
    assert snapshot.latencies["call"].count == 1
    with pytest.raises(TypeError):
        snapshot.counters["checkouts"] = 0  # type: ignore[index]
    with pytest.raises(ValueError):
        metrics.increment("bad name")
    with pytest.raises(ValueError):
        metrics.increment("checkouts", -1)


_SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
    r'(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*\})?'
    r' (NaN|[+-]Inf|[-+]?[0-9.]+(e[-+]?[0-9]+)?)$'
)
_TYPE = re.compile(r"^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|summary|histogram|untyped)$")


def test_prometheus_text_parses() -> None:
    metrics = Metrics(histograms=["checkout_wait"])
    metrics.increment("checkouts", 5)
    metrics.increment("errors_total")
    for value in (0.001, 0.002, 0.5):
        metrics.observe("call", value)
    text = prometheus.render(metrics.snapshot(), labels={"pool": 'main "A"\\\n', "app": "x"})
    assert text.endswith("\n")
    lines = text.splitlines()
    for line in lines:
        assert _TYPE.match(line) or _SAMPLE.match(line), line
    assert "# TYPE engine_checkouts_total counter" in lines
    assert 'engine_checkouts_total{app="x",pool="main \\"A\\"\\\\\\n"} 5' in lines
    assert any(line.startswith("engine_errors_total{") for line in lines)  # no _total_total
    assert "# TYPE engine_call_seconds summary" in lines
    quantiles = [line for line in lines if line.startswith("engine_call_seconds{")]
    assert [re.search(r'quantile="([0-9.]+)"', q).group(1) for q in quantiles] == [  # type: ignore[union-attr]
        "0.5", "0.9", "0.99"]
    assert any(line.startswith("engine_call_seconds_count{") and line.endswith(" 3")
               for line in lines)
    assert any(line.startswith("engine_checkout_wait_seconds_sum{") for line in lines)
    assert "# TYPE engine_call_seconds_max gauge" in lines


def test_prometheus_without_labels_and_empty() -> None:
    assert prometheus.render(MetricsSnapshot(counters={}, latencies={})) == ""
    text = prometheus.render(MetricsSnapshot(counters={"x": 1}, latencies={}), prefix="app")
    assert text == "# TYPE app_x_total counter\napp_x_total 1\n"


@pytest.mark.parametrize("labels", [{"quantile": "1"}, {"__name__": "x"}, {"1bad": "x"}])
def test_prometheus_rejects_bad_labels(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        prometheus.render(MetricsSnapshot(counters={"x": 1}, latencies={}), labels=labels)


def test_attach_refuses_event_names_that_would_never_match() -> None:
    """A dotted string (as the README's table reads), a name missing its
    leading "engine", or a misspelt engine event used to be a silent no-op or an
    error without the right form (second new-user audit). The application's
    own event names stay allowed."""
    def handler(*args: object) -> None:
        pass

    cases = [
        ("worker.exit", "not a dotted string: 'worker.exit' is "
                        "('engine', 'worker', 'exit')"),
        (("worker", "exit"), "matches none; use ('engine', 'worker', 'exit')"),
        (("engine", "worker", "exitt"), "did you mean ('engine', 'worker', 'exit')?"),
    ]
    for event, message in cases:
        with pytest.raises(ValueError) as caught:
            telemetry.attach("t", [event], handler)  # type: ignore[list-item]
        assert message in str(caught.value)
    for fine in [telemetry.WORKER_EXIT, telemetry.WORKER_EVENTS, ("myapp", "thing")]:
        telemetry.attach("t", [fine], handler)
        assert telemetry.detach("t")
