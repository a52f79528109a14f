"""Prometheus text exposition (format 0.0.4) of a :class:`~engine.telemetry.MetricsSnapshot`.

Pure string formatting, no dependency: serve the result with any HTTP server
(``Content-Type: text/plain; version=0.0.4``). A snapshot renders as::

    # TYPE engine_restarts_total counter
    engine_restarts_total{pool="main"} 3
    # TYPE engine_call_seconds summary
    engine_call_seconds{pool="main",quantile="0.5"} 0.00041
    ...
    engine_call_seconds_sum{pool="main"} 0.0123
    engine_call_seconds_count{pool="main"} 30
    # TYPE engine_call_seconds_max gauge
    engine_call_seconds_max{pool="main"} 0.0021
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from engine.telemetry.metrics import LatencySummary, MetricsSnapshot

__all__ = ["render"]

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_QUANTILES: Final = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


def render(
    snapshot: MetricsSnapshot, *, prefix: str = "engine",
    labels: Mapping[str, str] | None = None,
) -> str:
    """Format ``snapshot`` as Prometheus text: counters as ``<prefix>_<name>_total``,
    latencies as summaries ``<prefix>_<name>_seconds`` (quantiles 0.5, 0.9, 0.99,
    ``_sum``, ``_count``) plus a ``<prefix>_<name>_seconds_max`` gauge.

    ``labels`` are added to every sample. Invalid metric or label names raise
    ``ValueError``; label values are escaped. Output is sorted by name and ends
    with a newline (empty string for an empty snapshot).
    """
    base = _label_pairs(labels or {})
    lines: list[str] = []
    for name in sorted(snapshot.counters):
        metric = _metric(prefix, name)
        if not metric.endswith("_total"):
            metric += "_total"
        lines.append(f"# TYPE {metric} counter")
        lines.append(f"{metric}{_braces(base)} {int(snapshot.counters[name])}")
    for name in sorted(snapshot.latencies):
        lines.extend(_summary(_metric(prefix, name) + "_seconds", snapshot.latencies[name], base))
    return "\n".join(lines) + "\n" if lines else ""


def _summary(metric: str, summary: LatencySummary, base: list[str]) -> list[str]:
    lines = [f"# TYPE {metric} summary"]
    for quantile, field in _QUANTILES:
        pairs = [*base, f'quantile="{quantile}"']
        lines.append(f"{metric}{_braces(pairs)} {_number(getattr(summary, field))}")
    lines.append(f"{metric}_sum{_braces(base)} {_number(summary.sum)}")
    lines.append(f"{metric}_count{_braces(base)} {int(summary.count)}")
    lines.append(f"# TYPE {metric}_max gauge")
    lines.append(f"{metric}_max{_braces(base)} {_number(summary.max)}")
    return lines


def _metric(prefix: str, name: str) -> str:
    metric = f"{prefix}_{name}" if prefix else name
    if not _METRIC_NAME.match(metric):
        raise ValueError(f"invalid Prometheus metric name {metric!r} (prefix {prefix!r})")
    return metric


def _label_pairs(labels: Mapping[str, str]) -> list[str]:
    pairs = []
    for key in sorted(labels):
        if not _LABEL_NAME.match(key) or key.startswith("__") or key == "quantile":
            raise ValueError(f"invalid or reserved Prometheus label name {key!r}")
        pairs.append(f'{key}="{_escape(str(labels[key]))}"')
    return pairs


def _braces(pairs: list[str]) -> str:
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
