"""``engine stress --html``: one self-contained page with SVG charts, no JavaScript.

Renders the report dict of :mod:`engine.stress.report`: a verdict banner, the
headline figures as cards, latency over time (p50-p99 band, p50 and p99 lines,
per-bin maximum) and throughput over time (succeeded and failed calls per
second, with the number of ready workers), both marked with every injected
death, then the tables. Hovering a chart's time bin shows its numbers (SVG
``<title>`` tooltips).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

_W, _H = 960, 300
_ML, _MR, _MT, _MB = 64, 56, 18, 42  # margins: left, right, top, bottom
_KIND_COLORS = {"kill": "#dc2626", "crash": "#9333ea", "hang": "#ea580c",
                "garbage": "#854d0e"}


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ms(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _nice_step(span: float, target: int) -> float:
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


class _Frame:
    """Maps data coordinates to the SVG plot area."""

    def __init__(self, t_max: float, y_lo: float, y_hi: float, log: bool) -> None:
        self.t_max = max(t_max, 1e-9)
        self.log = log
        self.y_lo = math.log10(y_lo) if log else y_lo
        self.y_hi = math.log10(y_hi) if log else y_hi
        if self.y_hi <= self.y_lo:
            self.y_hi = self.y_lo + 1
        self.x0, self.x1 = _ML, _W - _MR
        self.y0, self.y1 = _H - _MB, _MT

    def x(self, t: float) -> float:
        return self.x0 + (self.x1 - self.x0) * t / self.t_max

    def y(self, v: float) -> float:
        value = math.log10(max(v, 1e-9)) if self.log else v
        value = min(max(value, self.y_lo), self.y_hi)
        return self.y0 - (self.y0 - self.y1) * (value - self.y_lo) / (self.y_hi - self.y_lo)


def _time_axis(frame: _Frame) -> list[str]:
    out = []
    step = _nice_step(frame.t_max, 10)
    t = 0.0
    while t <= frame.t_max + 1e-9:
        x = frame.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{frame.y1}" x2="{x:.1f}" y2="{frame.y0}" '
                   'class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{frame.y0 + 16}" class="tick" '
                   f'text-anchor="middle">{t:g}s</text>')
        t += step
    out.append(f'<text x="{(frame.x0 + frame.x1) / 2:.0f}" y="{_H - 6}" class="label" '
               'text-anchor="middle">time since the load started</text>')
    return out


def _injection_marks(frame: _Frame, injections: Sequence[Sequence[Any]]) -> list[str]:
    out = []
    for at, kind, slot in injections:
        if not 0 <= at <= frame.t_max:
            continue
        x = frame.x(at)
        color = _KIND_COLORS.get(kind, "#dc2626")
        out.append(f'<g><title>{_esc(kind)} of the worker in slot {_esc(slot)} at '
                   f'{at:.2f}s</title><line x1="{x:.1f}" y1="{frame.y1}" x2="{x:.1f}" '
                   f'y2="{frame.y0}" stroke="{color}" stroke-opacity="0.22" '
                   f'stroke-width="1"/><path d="M{x - 4:.1f},{frame.y1 - 8} '
                   f'L{x + 4:.1f},{frame.y1 - 8} L{x:.1f},{frame.y1 - 1} Z" '
                   f'fill="{color}"/></g>')
    return out


def _runs(bins: Sequence[Mapping[str, Any]], key: str) -> list[list[Mapping[str, Any]]]:
    """Consecutive bins that have ``key`` samples: a line breaks where data stops."""
    runs: list[list[Mapping[str, Any]]] = []
    current: list[Mapping[str, Any]] = []
    for b in bins:
        if b[key] > 0:
            current.append(b)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _latency_chart(report: Mapping[str, Any]) -> str:
    tl = report["timeline"]
    all_bins = tl["bins"]
    t_max = max(tl["load_seconds"], (len(all_bins) * tl["bin_seconds"]) or 1.0)
    values = [b[k] for b in all_bins for k in ("p50", "max", "wait_p99") if b[k] > 0]
    if not values:
        return '<p class="empty">No latency samples.</p>'
    lo_decade = 10 ** math.floor(math.log10(min(values)))
    hi = max(values)
    hi_decade = 10 ** math.ceil(math.log10(hi)) if hi > lo_decade else lo_decade * 10
    f = _Frame(t_max, lo_decade, hi_decade, log=True)
    out = [f'<svg viewBox="0 0 {_W} {_H}" class="chart" role="img" '
           'aria-label="latency over time">']
    decade = lo_decade
    while decade <= hi_decade * 1.0001:
        for mult in (1, 2, 5):
            v = decade * mult
            if lo_decade <= v <= hi_decade:
                y = f.y(v)
                cls = "grid" if mult == 1 else "grid minor"
                out.append(f'<line x1="{f.x0}" y1="{y:.1f}" x2="{f.x1}" y2="{y:.1f}" '
                           f'class="{cls}"/>')
                if mult == 1 or hi_decade / lo_decade <= 100:
                    out.append(f'<text x="{f.x0 - 6}" y="{y + 4:.1f}" class="tick" '
                               f'text-anchor="end">{_ms(v)}</text>')
        decade *= 10
    out += _time_axis(f)
    half = tl["bin_seconds"] / 2

    def pts(run: Sequence[Mapping[str, Any]], key: str) -> str:
        return " ".join(f"{f.x(b['t'] + half):.1f},{f.y(b[key]):.1f}" for b in run)

    for run in _runs(all_bins, "calls"):
        if len(run) > 1:
            out.append(f'<polygon points="{pts(run, "p99")} {pts(run[::-1], "p50")}" '
                       'class="band"/>')
    for key, cls in (("wait_p99", "line wait"), ("p99", "line p99"), ("p50", "line p50")):
        sample_key = "calls" if key != "wait_p99" else "wait_p99"
        for run in _runs(all_bins, sample_key):
            if len(run) == 1:
                b = run[0]
                out.append(f'<circle cx="{f.x(b["t"] + half):.1f}" cy="{f.y(b[key]):.1f}" '
                           f'r="2.2" class="{cls} dot"/>')
            else:
                out.append(f'<polyline points="{pts(run, key)}" class="{cls}"/>')
    out += [f'<circle cx="{f.x(b["t"] + half):.1f}" cy="{f.y(b["max"]):.1f}" r="1.8" '
            'class="maxdot"/>' for b in all_bins if b["calls"]]
    out += _injection_marks(f, tl["injections"])
    width = max(1.0, f.x(tl["bin_seconds"]) - f.x(0))
    for b in all_bins:
        x = f.x(b["t"])
        tip = (f'{b["t"]:.2f}s: {b["calls"]} quick calls, p50 {_ms(b["p50"])}, p99 '
               f'{_ms(b["p99"])}, max {_ms(b["max"])}; checkout wait p99 '
               f'{_ms(b["wait_p99"])}' if b["calls"] else f'{b["t"]:.2f}s: no quick calls ended')
        out.append(f'<rect x="{x:.1f}" y="{f.y1}" width="{width:.1f}" height="{f.y0 - f.y1}" '
                   f'class="hover"><title>{tip}</title></rect>')
    out.append('<text x="14" y="160" class="label" transform="rotate(-90 14 160)" '
               'text-anchor="middle">latency (log scale)</text>')
    out.append("</svg>")
    return "".join(out)


def _throughput_chart(report: Mapping[str, Any]) -> str:
    tl = report["timeline"]
    width_s = tl["bin_seconds"]
    bins = tl["bins"]
    t_max = max(tl["load_seconds"], (len(bins) * width_s) or 1.0)
    peak = max([(b["ok"] + b["failed"]) / b["width"] for b in bins] + [1.0])
    step = _nice_step(peak, 5)
    top = math.ceil(peak / step) * step
    f = _Frame(t_max, 0.0, top, log=False)
    size = report["config"]["workers"]
    out = [f'<svg viewBox="0 0 {_W} {_H}" class="chart" role="img" '
           'aria-label="throughput over time">']
    v = 0.0
    while v <= top + 1e-9:
        y = f.y(v)
        out.append(f'<line x1="{f.x0}" y1="{y:.1f}" x2="{f.x1}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{f.x0 - 6}" y="{y + 4:.1f}" class="tick" '
                   f'text-anchor="end">{v:g}</text>')
        v += step
    out += _time_axis(f)
    for b in bins:
        bar_w = max(1.0, f.x(b["width"]) - f.x(0) - 1)
        x = f.x(b["t"]) + 0.5
        ok_rate, fail_rate = b["ok"] / b["width"], b["failed"] / b["width"]
        y_ok = f.y(ok_rate)
        y_all = f.y(ok_rate + fail_rate)
        out.append(f'<g><title>{b["t"]:.2f}s: {ok_rate:.0f} ok/s, {fail_rate:.0f} failed/s'
                   f'</title><rect x="{x:.1f}" y="{y_ok:.1f}" width="{bar_w:.1f}" '
                   f'height="{f.y0 - y_ok:.1f}" class="ok"/>')
        if b["failed"]:
            out.append(f'<rect x="{x:.1f}" y="{y_all:.1f}" width="{bar_w:.1f}" '
                       f'height="{y_ok - y_all:.1f}" class="bad"/>')
        out.append("</g>")
    # Ready workers, on the right-hand axis.
    ready = _Frame(t_max, 0.0, max(size, 1), log=False)
    if tl["pool"]:
        path = []
        prev = None
        for t, n_ready, n_busy, *_rest in tl["pool"]:
            x, y = ready.x(min(t, t_max)), ready.y(n_ready + n_busy)
            if prev is not None:
                path.append(f"L{x:.1f},{prev:.1f}")
            path.append(f"{'M' if prev is None else 'L'}{x:.1f},{y:.1f}")
            prev = y
        out.append(f'<path d="{" ".join(path)}" class="ready"/>')
    for n in range(size + 1):
        if size <= 8 or n in (0, size) or n % max(1, size // 4) == 0:
            out.append(f'<text x="{f.x1 + 8}" y="{ready.y(n) + 4:.1f}" class="tick ready-t">'
                       f"{n}</text>")
    out += _injection_marks(f, tl["injections"])
    out.append('<text x="14" y="160" class="label" transform="rotate(-90 14 160)" '
               'text-anchor="middle">calls per second</text>')
    out.append(f'<text x="{_W - 10}" y="160" class="label ready-t" '
               f'transform="rotate(90 {_W - 10} 160)" text-anchor="middle">workers up'
               "</text>")
    out.append("</svg>")
    return "".join(out)


def _card(label: str, value: str, note: str = "", bad: bool = False) -> str:
    cls = "card bad" if bad else "card"
    return (f'<div class="{cls}"><div class="v">{_esc(value)}</div><div class="l">'
            f'{_esc(label)}</div><div class="n">{_esc(note)}</div></div>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
background:#f8fafc;color:#0f172a}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.verdict{display:inline-block;padding:2px 12px;border-radius:999px;color:#fff;
font-weight:700;margin-left:8px;font-size:15px;vertical-align:3px}
.pass{background:#16a34a}.fail{background:#dc2626}
.sub{color:#475569;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:10px;
margin-top:16px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:10px 14px}
.card .v{font-size:22px;font-weight:650}.card .l{color:#334155;font-size:13px}
.card .n{color:#64748b;font-size:12px}.card.bad{border-color:#fca5a5;background:#fef2f2}
.chart{width:100%;height:auto;background:#fff;border:1px solid #e2e8f0;border-radius:10px}
.grid{stroke:#e2e8f0;stroke-width:1}.grid.minor{stroke:#f1f5f9}
.tick{font-size:11px;fill:#64748b}.label{font-size:12px;fill:#334155}
.band{fill:#93c5fd;fill-opacity:.35;stroke:none}
.line{fill:none;stroke-width:1.8;stroke-linejoin:round}
.p50{stroke:#2563eb}.p99{stroke:#d97706}.maxdot{fill:#94a3b8}
.wait{stroke:#7c3aed;stroke-dasharray:5 3;stroke-width:1.5}.dot{fill:currentColor}
circle.p50{fill:#2563eb}circle.p99{fill:#d97706}circle.wait{fill:#7c3aed}
.hover{fill:transparent}.hover:hover{fill:#0f172a;fill-opacity:.06}
.ok{fill:#0d9488}.bad{fill:#ef4444}.ready{fill:none;stroke:#16a34a;stroke-width:2}
.ready-t{fill:#15803d}
.legend{font-size:12px;color:#475569;margin:6px 0}.legend span{margin-right:14px}
.sw{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px;
border:1px solid #e2e8f0}
th,td{padding:5px 10px;border-bottom:1px solid #f1f5f9;text-align:left}
th{background:#f1f5f9;font-weight:600}
td.ok{color:#15803d;font-weight:700}td.fail{color:#dc2626;font-weight:700}
.note{color:#475569;font-size:13px}
pre{background:#0f172a;color:#e2e8f0;padding:10px;border-radius:8px;overflow:auto;
font-size:12px}
"""


def render_html(report: Mapping[str, Any]) -> str:
    """The report as a standalone HTML page (inline CSS and SVG only)."""
    cfg = report["config"]
    calls, lat, deaths = report["calls"], report["latency"], report["deaths"]
    sessions, procs, tp = report["sessions"], report["processes"], report["throughput"]
    ok = report["ok"]
    success = calls["succeeded"] / calls["attempted"] if calls["attempted"] else 0.0
    mix = ", ".join(f"{k}={v:g}" for k, v in cfg["mix"].items() if v)
    length = f"{cfg['duration']:g} s" if cfg.get("duration") else f"{cfg['calls']} calls"
    kills = f", SIGKILL every {cfg['kill_every']:g} s" if cfg.get("kill_every") else ""
    cards = "".join([
        _card("calls attempted", f"{calls['attempted']:,}",
              f"{calls['succeeded']:,} ok, {calls['failed']:,} failed"),
        _card("succeeded", f"{success:.1%}"),
        _card("throughput", f"{tp['succeeded_per_second']:,.0f}/s", "successful calls"),
        _card("call latency p50 / p99", f"{_ms(lat['call']['p50'])} / {_ms(lat['call']['p99'])}",
              f"max {_ms(lat['call']['max'])}"),
        _card("checkout wait p99", _ms(lat["checkout_wait"]["p99"]),
              f"max {_ms(lat['checkout_wait']['max'])}"),
        _card("worker deaths injected / detected",
              f"{deaths['injected_total']} / {deaths['detected_total']}",
              f"restarts {report['restarts']}",
              bad=deaths["injected_total"] != deaths["detected_total"]),
        _card("sessions lost / worker died",
              f"{sessions['lost_observed']} / {sessions['worker_died']}",
              f"{sessions['epochs']} epochs",
              bad=sessions["lost_observed"] != sessions["worker_died"]),
        _card("processes left after close", str(len(procs["left_after_close"])),
              f"of {procs['seen']} seen", bad=bool(procs["left_after_close"])),
    ])
    inv_rows = "".join(
        f'<tr><td class="{"ok" if i["ok"] else "fail"}">{"✓" if i["ok"] else "✗"}</td>'
        f'<td>{_esc(i["name"])}</td><td>{_esc(i["detail"])}</td></tr>'
        for i in report["invariants"])
    lat_rows = [("checkout wait", lat["checkout_wait"]), ("call", lat["call"])]
    lat_rows += [(f"call: {k}", s) for k, s in lat["call_by_kind"].items()]
    latency_table = _table(("", "count", "p50", "p90", "p99", "max"), [
        (name, s["count"], _ms(s["p50"]), _ms(s["p90"]), _ms(s["p99"]), _ms(s["max"]))
        for name, s in lat_rows])
    calls_table = _table(("kind", "attempted", "succeeded", "failed", "failures by type"), [
        (kind, k["attempted"], k["succeeded"], k["failed"],
         ", ".join(f"{o} {n}" for o, n in k["failed_by_type"].items()) or "-")
        for kind, k in calls["by_kind"].items()])
    death_rows = []
    for kind, n in deaths["injected"].items():
        rep = deaths["replacement_seconds"].get(kind)
        if n or deaths["detected"][kind]:
            death_rows.append((kind, n, deaths["detected"][kind],
                               _ms(rep["p50"]) if rep else "-", _ms(rep["max"]) if rep else "-"))
    deaths_table = _table(("cause", "injected", "detected", "to replacement: p50", "max"),
                          death_rows)
    problems = (deaths["undetected"] + deaths["misreported"] + deaths["unexplained"]
                + sessions["mismatches"] + calls["wrong_results"] + calls["affinity_breaks"])
    problem_html = ("<h2>Problems</h2><ul>" + "".join(f"<li>{_esc(p)}</li>"
                                                      for p in problems[:50]) + "</ul>"
                    if problems else "")
    legend_kills = "".join(
        f'<span><i class="sw" style="background:{c}"></i>{k}</span>'
        for k, c in _KIND_COLORS.items() if deaths["injected"].get(k))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>engine stress: {"PASS" if ok else "FAIL"}</title><style>{_CSS}</style></head>
<body><main>
<h1>engine stress <span class="verdict {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}
</span></h1>
<div class="sub">app {_esc(cfg["app"])} · {cfg["workers"]} workers · {cfg["clients"]} clients ·
{_esc(length)}{_esc(kills)} · mix {_esc(mix)} · seed {report["seed"]}</div>
<div class="cards">{cards}</div>
<h2>Latency over time</h2>
<div class="legend"><span><i class="sw" style="background:#2563eb"></i>p50</span>
<span><i class="sw" style="background:#d97706"></i>p99</span>
<span><i class="sw" style="background:#93c5fd;height:8px"></i>p50 to p99</span>
<span><i class="sw" style="background:#94a3b8;height:6px;width:6px;border-radius:3px"></i>
max per {report["timeline"]["bin_seconds"]:g} s</span>
<span><i class="sw" style="background:#7c3aed"></i>checkout wait p99</span>{legend_kills}</div>
<p class="note">Quick calls ({_esc(", ".join(lat["call_kinds"]))}), by the time they ended;
triangles mark injected worker deaths.</p>
{_latency_chart(report)}
<h2>Throughput over time</h2>
<div class="legend"><span><i class="sw" style="background:#0d9488;height:8px"></i>succeeded
</span><span><i class="sw" style="background:#ef4444;height:8px"></i>failed</span>
<span><i class="sw" style="background:#16a34a"></i>workers up: ready or busy (right axis)
</span>
{legend_kills}</div>
{_throughput_chart(report)}
<h2>Invariants</h2><table><tbody>{inv_rows}</tbody></table>
{problem_html}
<h2>Calls</h2>{calls_table}
<h2>Latency</h2>{latency_table}
<p class="note">"call" covers {_esc(", ".join(lat["call_kinds"]))}; fault calls are listed
separately because their latency is the fault's.</p>
<h2>Worker deaths</h2>{deaths_table}
<p class="note">{_esc(deaths["detection"])}. Restarts: {report["restarts"]}; kills without an
eligible worker: {deaths["kills_skipped_no_target"]}.</p>
<h2>Sessions</h2>
<p class="note">{_esc(sessions["definition"])}</p>
<details><summary>Full report (JSON)</summary><pre>{_esc(json.dumps(
        {k: v for k, v in report.items() if k != "timeline"}, indent=2))}</pre></details>
</main></body></html>
"""
