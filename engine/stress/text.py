"""The stress report as text: rich tables on a console, or plain text without rich.

:func:`report_blocks` lays the report out once (lines and tables); :func:`render_rich`
prints that with rich (the ``cli`` extra), :func:`render_plain` with nothing but
the standard library, so ``engine stress`` works on a core install too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from engine.stress.chaos import INJECTION_KINDS
from engine.stress.report import kinds_in_words

if TYPE_CHECKING:
    from rich.console import Console

# (text, style) -> the text as a renderer shows it: rich markup, or the bare text.
Styler = Callable[[str, str], str]


@attrs.frozen
class Column:
    name: str
    right: bool = False  # numbers are right-aligned
    width: int | None = None
    fold: bool = False  # long cells wrap instead of being cut (rich)


@attrs.frozen
class Table:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    show_header: bool = True


@attrs.frozen
class Line:
    text: str
    markup: bool = True  # False: printed as is (a traceback), never read as rich markup


Block = Line | Table


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.2f} ms"


def report_blocks(report: Mapping[str, Any], style: Styler) -> list[Block]:
    """The final report, top to bottom."""
    out: list[Block] = []
    cfg = report["config"]
    calls = report["calls"]
    verdict = style("PASS", "bold green") if report["ok"] else style("FAIL", "bold red")
    duration = f"{cfg['duration']:g} s" if cfg.get("duration") else f"{cfg['calls']} calls"
    kills = f", kill every {cfg['kill_every']:g} s" if cfg.get("kill_every") else ""
    mix = ",".join(f"{k}={v:g}" for k, v in cfg["mix"].items() if v)
    out.append(Line(f"engine stress: {verdict}  app={cfg['app']} workers={cfg['workers']} "
                    f"clients={cfg['clients']} {duration}{kills} mix={mix} "
                    f"seed={report['seed']}"))

    rows = [(kind, str(k["attempted"]), str(k["succeeded"]), str(k["failed"]),
             ", ".join(f"{o} {n}" for o, n in k["failed_by_type"].items()))
            for kind, k in calls["by_kind"].items()]
    rows.append((style("all", "bold"), str(calls["attempted"]), str(calls["succeeded"]),
                 str(calls["failed"]),
                 ", ".join(f"{o} {n}" for o, n in calls["failed_by_type"].items())))
    out.append(Table("Calls", (Column("kind"), Column("attempted", right=True),
                               Column("succeeded", right=True), Column("failed", right=True),
                               Column("failures by type")), tuple(rows)))
    given_up = [kind for kind in ("cancel", "timeout") if kind in calls["by_kind"]]
    if given_up:
        out.append(Line(f"({' and '.join(given_up)}: \"succeeded\" means given up mid-call "
                        "as planned; the drains line below says what became of their "
                        "workers)"))
    tp = report["throughput"]
    out.append(Line(f"throughput: {tp['attempted_per_second']:.0f} calls/s attempted, "
                    f"{tp['succeeded_per_second']:.0f} calls/s succeeded over "
                    f"{report['elapsed_seconds']:.1f} s (pool start "
                    f"{_ms(report['start_seconds'])}, recovery "
                    f"{_ms(report['recovery_seconds'])}, close {_ms(report['close_seconds'])})"))

    lat = report["latency"]
    named = [("checkout wait", lat["checkout_wait"]),
             (f"call ({', '.join(k for k in lat['call_kinds'] if k in lat['call_by_kind'])})",
              lat["call"])]
    named += [(f"  call: {k}", s) for k, s in lat["call_by_kind"].items()]
    out.append(Table("Latency", (Column(""), *(Column(c, right=True) for c in
                                               ("count", "p50", "p90", "p99", "max"))),
                     tuple((name, str(s["count"]), _ms(s["p50"]), _ms(s["p90"]),
                            _ms(s["p99"]), _ms(s["max"])) for name, s in named)))

    d = report["deaths"]
    rows = []
    for kind in INJECTION_KINDS:
        rep = d["replacement_seconds"].get(kind)
        if d["injected"][kind] or d["detected"][kind]:
            rows.append((kind, str(d["injected"][kind]), str(d["detected"][kind]),
                         _ms(rep["p50"]) if rep else "-", _ms(rep["max"]) if rep else "-"))
    rows.append((style("total", "bold"), str(d["injected_total"]), str(d["detected_total"]),
                 "", ""))
    out.append(Table("Worker deaths", (Column("cause"), *(Column(c, right=True) for c in (
        "injected", "detected", "replaced: p50", "max"))), tuple(rows)))
    out.append(Line(f"restarts: {report['restarts']}; pool crash counter "
                    f"{d['pool_crash_counter']} (kills + crash calls = "
                    f"{d['expected_crash_counter']}, of which {d['expected_deaths']} "
                    "expected deaths, summarised here rather than logged one per line); "
                    f"kill ticks {d['kills_attempted']}, "
                    f"{d['kills_skipped_no_target']} without an eligible worker; killed after "
                    f"cancel_grace {d['killed_after_grace']}; start "
                    f"failures {d['start_failures']}; replacement = injection to that slot's "
                    "next ready worker"))
    warn = style("!", "red")
    out += [Line(f"  {warn} {line}")
            for line in (d["undetected"] + d["misreported"] + d["unexplained"])[:10]]

    s = report["sessions"]
    out.append(Line(
        f"sessions: {s['sessions']} sessions, {s['epochs']} epochs (an epoch: a session's "
        f"life on one worker); SessionLost observed "
        f"{s['lost_observed']} ({s['lost_during_run']} during the run, "
        f"{s['lost_at_verification']} at verification); epochs whose worker died "
        f"{s['worker_died']}{kinds_in_words(s['worker_died_by_cause'])}"))
    out += [Line(f"  {warn} {line}") for line in (s["mismatches"] + s["duplicate_losses"])[:10]]
    c = report.get("cancellations")
    if c is not None and (c["drains"] or sum(c["calls"].values())):
        drain = c["drain_seconds"]
        out.append(Line(
            f"calls given up mid-call: {sum(c['calls'].values())}"
            f"{kinds_in_words(c['calls'])}; {c['drains']} drains (of those, and of any "
            f"call cut by its timeout with its request in the worker; a call given up "
            f"before its request was written needs none): {c['drained_clean']} back "
            f"clean (p50 {_ms(drain['p50'])}, max {_ms(drain['max'])}), "
            f"{c['killed_after_grace']} killed after cancel_grace, "
            f"{c['hangs_killed_after_grace']} hangs killed after cancel_grace, "
            f"{c['killed_while_draining']} died while draining; "
            f"{c['epochs_with_calls_given_up']} session epochs had calls given up, "
            f"{c['of_which_lost']} lost later"))
        out += [Line(f"  {warn} {line}") for line in c["unexplained_losses"][:10]]
    p = report["processes"]
    out.append(Line(f"processes: {p['seen']} worker processes seen, "
                    f"{len(p['left_after_close'])} left after close, "
                    f"{len(p['unreaped_after_close'])} unreaped"))
    out += [Line(f"  {warn} {line}")
            for line in (calls["wrong_results"] + calls["affinity_breaks"])[:10]]
    out += [Line(tb, markup=False) for tb in calls["untyped_tracebacks"][:3]]

    out.append(Table(
        "Invariants", (Column("", width=4), Column("invariant"), Column("detail", fold=True)),
        tuple((style("ok", "green") if inv["ok"] else style("FAIL", "bold red"), inv["name"],
               inv["detail"]) for inv in report["invariants"]),
        show_header=False))
    return out


def render_rich(report: Mapping[str, Any], console: Console) -> None:
    """Print the final report with rich (plain text when the console is not a terminal)."""
    from rich import box
    from rich.table import Table as RichTable

    for block in report_blocks(report, lambda text, style: f"[{style}]{text}[/]"):
        if isinstance(block, Line):
            console.print(block.text, markup=block.markup, highlight=block.markup)
            continue
        t = RichTable(title=block.title, box=box.SIMPLE_HEAVY, title_justify="left",
                      show_header=block.show_header)
        for c in block.columns:
            t.add_column(c.name, justify="right" if c.right else "left", width=c.width,
                         overflow="fold" if c.fold else "ellipsis")
        for row in block.rows:
            t.add_row(*row)
        console.print(t)


def render_plain(report: Mapping[str, Any], out: TextIO) -> None:
    """Print the final report as plain text (no rich needed)."""
    after_table = False
    for block in report_blocks(report, lambda text, style: text):
        if isinstance(block, Line):
            print(("\n" if after_table else "") + block.text, file=out)
            after_table = False
            continue
        widths = [max([len(c.name), *(len(row[i]) for row in block.rows)])
                  for i, c in enumerate(block.columns)]

        def line(cells: tuple[str, ...], widths: list[int] = widths,
                 columns: tuple[Column, ...] = block.columns) -> str:
            return "  " + "  ".join(
                cell.rjust(w) if c.right else cell.ljust(w)
                for cell, w, c in zip(cells, widths, columns, strict=True)).rstrip()

        print(f"\n{block.title}", file=out)
        if block.show_header:
            print(line(tuple(c.name for c in block.columns)), file=out)
            print(line(tuple("-" * w for w in widths)), file=out)
        for row in block.rows:
            print(line(row), file=out)
        after_table = True
