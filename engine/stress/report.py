"""The stress runner's report: figures and invariants.

:func:`build_report` turns what a run recorded into one JSON-ready dict; the
text report (:mod:`engine.stress.text`), ``--json`` and ``--html``
(:mod:`engine.stress.html`) all render that same dict, so they always agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from engine.stress.chaos import EXPECTED_EXIT, INJECTION_KINDS
from engine.stress.workload import ABANDON_KINDS, KINDS, MEASURED_KINDS

if TYPE_CHECKING:
    from engine.stress.chaos import DeathLedger, WorkerWatch
    from engine.stress.workload import Recorder, SessionBook
    from engine.telemetry import LatencyHistogram

SESSIONS_DEFINITION = (
    "An epoch is one binding of a session to a worker: it starts with the call "
    "that binds the session and ends when the session's state is reported lost. "
    "After the load, every session still bound is called once more, so every "
    "epoch whose worker died is observed. worker_died counts the epochs whose "
    "worker process was dead once the pool had recovered; lost_observed counts "
    "SessionLost errors (during the run plus at that final call). The invariant: "
    "each epoch whose worker died raised SessionLost exactly once, and no epoch "
    "whose worker lives raised it."
)


@attrs.frozen
class RunFacts:
    """Everything a run recorded, handed from the runner to the report."""

    config: Mapping[str, Any]
    seed: int
    t0: float
    load_end: float
    clients_done_at: float
    bin_width: float
    recorder: Recorder
    ledger: DeathLedger
    watch: WorkerWatch
    book: SessionBook
    samples: Sequence[tuple[float, int, int, int, int]]
    hung: int
    facts: Mapping[str, Any]


def _summary(h: LatencyHistogram) -> dict[str, float]:
    s = h.snapshot()
    return {"count": s.count, "p50": s.p50, "p90": s.p90, "p99": s.p99, "max": s.max,
            "mean": s.mean}


def _quantile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _spread(values: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"count": len(ordered), "p50": _quantile(ordered, 50),
            "max": ordered[-1] if ordered else 0.0}


def build_report(f: RunFacts) -> dict[str, Any]:
    """The whole report as plain JSON types. ``ok`` is True if every invariant held."""
    rec = f.recorder
    elapsed = max(1e-9, f.clients_done_at - f.t0)
    failures = rec.failures_by_type()
    by_kind: dict[str, Any] = {}
    for kind in KINDS:
        outcomes = {o: n for (k, o), n in rec.outcomes.items() if k == kind}
        if outcomes:
            ok = outcomes.get("ok", 0)
            by_kind[kind] = {"attempted": sum(outcomes.values()), "succeeded": ok,
                             "failed": sum(outcomes.values()) - ok,
                             "failed_by_type": {o: n for o, n in sorted(outcomes.items())
                                                if o != "ok"}}
    calls = {
        "attempted": rec.started, "ended": rec.ended, "succeeded": rec.succeeded,
        "failed": rec.failed, "failed_by_type": failures, "by_kind": by_kind,
        "hung": f.hung, "in_flight_after_load": f.facts.get("in_flight_after_load", 0),
        "untyped_errors": sum(n for o, n in failures.items() if o.startswith("untyped:")),
        "untyped_tracebacks": list(rec.untyped), "wrong_results": list(rec.wrong),
        "affinity_breaks": list(rec.affinity_breaks),
    }
    latency = {
        "checkout_wait": _summary(rec.checkout),
        "call": _summary(rec.call),
        "call_kinds": sorted(MEASURED_KINDS),
        "call_by_kind": {k: _summary(h) for k, h in rec.call_by_kind.items() if h.count},
    }
    deaths = _deaths(f)
    sessions = _sessions(f)
    cancellations = _cancellations(f, by_kind)
    stats = f.facts.get("statistics", {})
    report: dict[str, Any] = {
        "tool": "engine stress",
        "config": dict(f.config), "seed": f.seed,
        "elapsed_seconds": elapsed,
        "load_seconds": f.load_end - f.t0,
        "start_seconds": f.facts.get("start_seconds"),
        "recovery_seconds": f.facts.get("recovery_seconds"),
        "close_seconds": f.facts.get("close_seconds"),
        "calls": calls,
        "throughput": {"attempted_per_second": rec.started / elapsed,
                       "succeeded_per_second": rec.succeeded / elapsed},
        "latency": latency,
        "deaths": deaths,
        "restarts": stats.get("restarts"),
        "pool_statistics": stats,
        "sessions": sessions,
        "cancellations": cancellations,
        "processes": {
            "seen": f.facts.get("pids_seen", 0),
            "left_after_close": f.facts.get("left_after_close", []),
            "unreaped_after_close": f.facts.get("unreaped_after_close", []),
        },
        "timeline": _timeline(f),
    }
    report["invariants"] = _invariants(report, f)
    report["ok"] = all(i["ok"] for i in report["invariants"])
    return report


def _deaths(f: RunFacts) -> dict[str, Any]:
    injections = f.ledger.injections
    exits = f.watch.deaths()
    # Killed by the pool after cancel_grace, for a request not claimed by a
    # fault call (a hang's death is the hang's): explained, counted apart.
    grace_kills = sorted(pid for pid in f.watch.grace_kills() & set(exits)
                         if pid not in injections)
    for pid in grace_kills:
        del exits[pid]
    detected = dict.fromkeys(INJECTION_KINDS, 0)
    undetected: list[str] = []
    misreported: list[str] = []
    for pid, inj in sorted(injections.items()):
        seen = exits.get(pid)
        if seen is None:
            undetected.append(f"{inj.kind} of pid {pid} (slot {inj.slot}) never reported")
        elif seen.cause != EXPECTED_EXIT[inj.kind]:
            misreported.append(f"{inj.kind} of pid {pid}: pool said {seen.reason!r}")
        else:
            detected[inj.kind] += 1
    unexplained = [f"pid {pid} (slot {e.slot}): {e.reason}" for pid, e in sorted(exits.items())
                   if pid not in injections]
    replacement: dict[str, Any] = {}
    not_replaced = 0
    for kind in INJECTION_KINDS:
        times = []
        for inj in injections.values():
            if inj.kind != kind:
                continue
            ready = f.watch.next_ready(inj.slot, inj.at)
            if ready is None:
                not_replaced += 1
            else:
                times.append(ready - inj.at)
        if times:
            replacement[kind] = _spread(times)
    injected = f.ledger.by_kind()
    stats = f.facts.get("statistics", {})
    start_failures = sum(1 for e in f.watch.exits if e.cause == "start_failure"
                         and not e.during_shutdown)
    return {
        "injected": injected, "injected_total": sum(injected.values()),
        "detected": detected, "detected_total": len(exits),
        "pool_crash_counter": stats.get("crashes"),
        "expected_crash_counter": injected["kill"] + injected["crash"],
        # the pool's count of those it was told of: logged at DEBUG, not per death
        "expected_deaths": f.facts.get("expected_deaths", 0),
        "undetected": undetected, "misreported": misreported, "unexplained": unexplained,
        "killed_after_grace": len(grace_kills),
        "kills_attempted": f.ledger.kills_attempted,
        "kills_skipped_no_target": f.ledger.kills_skipped,
        "replacement_seconds": replacement, "not_replaced": not_replaced,
        "start_failures": start_failures,
        "detection": "an injected death is detected when the pool reports that worker's "
                     "exit (telemetry engine.worker.exit) with the expected cause: kill -> "
                     "crashed by SIGKILL, crash -> crashed with an exit code, hang and "
                     "garbage -> replaced by the pool (a hang once cancel_grace has passed). "
                     "killed_after_grace: workers the pool killed because a call given up "
                     "mid-call (not a hang) did not come back within cancel_grace; not an "
                     "injection, counted apart",
    }


def _sessions(f: RunFacts) -> dict[str, Any]:
    live = set(f.facts.get("live_pids", []))
    injections = f.ledger.injections
    grace_kills = f.watch.grace_kills()
    died = 0
    lost_run = lost_verify = 0
    causes: dict[str, int] = {}
    mismatches: list[str] = []
    for epoch in f.book.epochs:
        dead = epoch.pid is None or epoch.pid not in live
        if epoch.lost_phase == "run":
            lost_run += epoch.lost_observed
        elif epoch.lost_phase == "verify":
            lost_verify += epoch.lost_observed
        if dead:
            died += 1
            inj = injections.get(epoch.pid) if epoch.pid is not None else None
            cause = inj.kind if inj is not None else \
                "killed after cancel_grace" if epoch.pid in grace_kills else "unexplained"
            causes[cause] = causes.get(cause, 0) + 1
        if dead and epoch.lost_observed != 1:
            mismatches.append(f"session {epoch.session!r} epoch {epoch.number}: worker pid "
                              f"{epoch.pid} died, SessionLost seen {epoch.lost_observed} times")
        if not dead and epoch.lost_observed:
            mismatches.append(f"session {epoch.session!r} epoch {epoch.number}: SessionLost "
                              f"although worker pid {epoch.pid} is alive")
    return {
        "sessions": len(f.book.sessions), "epochs": len(f.book.epochs),
        "lost_observed": lost_run + lost_verify, "lost_during_run": lost_run,
        "lost_at_verification": lost_verify, "worker_died": died,
        "worker_died_by_cause": causes,
        "lost_before_first_use": sum(1 for e in f.book.epochs if not e.seen_before_lost),
        "verification_calls": f.facts.get("probes", {}),
        "mismatches": mismatches[:50], "duplicate_losses": list(f.book.duplicate_losses),
        "definition": SESSIONS_DEFINITION,
    }


CANCELLATIONS_DEFINITION = (
    "cancel and timeout calls give up on a long sleep of one of the client's sessions "
    "mid-call (cancelled, or past their timeout). The pool drains the worker: clean, it "
    "is back with every session; killed_after_grace, it did not give the request back "
    "within cancel_grace and was replaced (counted, not a failure: each session on it is "
    "then reported lost once, as for any death). The invariant: no epoch a call was given "
    "up on lost its state unless its worker died from an injected fault or a kill after "
    "the grace."
)


def _cancellations(f: RunFacts, by_kind: Mapping[str, Any]) -> dict[str, Any]:
    injections = f.ledger.injections
    grace_kills = f.watch.grace_kills()
    live = set(f.facts.get("live_pids", []))
    drains = f.watch.drains
    clean = [d for d in drains if d.outcome == "clean"]
    expired = [d for d in drains if d.grace_expired]
    hang_kills = [d for d in expired if d.pid in injections and injections[d.pid].kind == "hang"]
    epochs = [e for e in f.book.epochs if e.given_up]
    lost = [e for e in epochs if e.lost_observed]
    unexplained = [
        f"session {e.session!r} epoch {e.number}: lost after {e.given_up} call(s) given up, "
        f"worker pid {e.pid} " + ("alive" if e.pid in live else "died unexplained")
        for e in lost
        if e.pid in live or (e.pid not in injections and e.pid not in grace_kills)]
    return {
        "calls": {k: by_kind.get(k, {}).get("attempted", 0) for k in sorted(ABANDON_KINDS)},
        "given_up_as_planned": sum(by_kind.get(k, {}).get("succeeded", 0)
                                   for k in ABANDON_KINDS),
        "drains": len(drains), "drained_clean": len(clean),
        "killed_after_grace": len(expired) - len(hang_kills),
        "hangs_killed_after_grace": len(hang_kills),
        "killed_while_draining": len(drains) - len(clean) - len(expired),
        "drain_seconds": _spread([d.duration for d in clean]),
        "epochs_with_calls_given_up": len(epochs), "of_which_lost": len(lost),
        "unexplained_losses": unexplained[:50],
        "definition": CANCELLATIONS_DEFINITION,
    }


def _timeline(f: RunFacts) -> dict[str, Any]:
    bins = []
    end = f.clients_done_at - f.t0
    for i, b in enumerate(f.recorder.bins):
        call, wait = sorted(b.call.samples), sorted(b.wait.samples)
        # The last bin is cut short by the end of the run: rates use its real width.
        width = max(1e-3, min(f.bin_width, end - i * f.bin_width))
        bins.append({"t": i * f.bin_width, "width": width, "ok": b.ok, "failed": b.failed,
                     "calls": b.call.seen, "p50": _quantile(call, 50),
                     "p90": _quantile(call, 90), "p99": _quantile(call, 99), "max": b.call.max,
                     "wait_p50": _quantile(wait, 50), "wait_p99": _quantile(wait, 99),
                     "wait_max": b.wait.max})
    t0 = f.t0
    shutdown = f.watch.shutdown_started
    return {
        "bin_seconds": f.bin_width,
        "load_seconds": f.load_end - t0,
        "bins": bins,
        "pool": [list(s) for s in f.samples],
        "pool_columns": ["t", "ready", "busy", "starting", "waiting"],
        "injections": sorted([inj.at - t0, inj.kind, inj.slot]
                             for inj in f.ledger.injections.values()),
        "ready": [[at - t0, slot] for at, slot, _w, _p in f.watch.ready
                  if at >= t0 and (shutdown is None or at < shutdown)],
        "exits": [[e.at - t0, e.cause, e.slot] for e in f.watch.exits
                  if e.at >= t0 and not e.during_shutdown],
    }


def _invariants(r: dict[str, Any], f: RunFacts) -> list[dict[str, Any]]:
    calls, deaths, sessions, procs = r["calls"], r["deaths"], r["sessions"], r["processes"]
    cancels = r["cancellations"]
    out: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        out.append({"name": name, "ok": bool(ok), "detail": detail})

    ended_ok = calls["hung"] == 0 and calls["untyped_errors"] == 0 \
        and calls["attempted"] == calls["ended"]
    check("every call ended", ended_ok,
          f"{calls['attempted']} started, {calls['ended']} ended with a result or an "
          f"EngineError; {calls['hung']} hung; {calls['untyped_errors']} untyped errors")
    sums = calls["succeeded"] + calls["failed"] == calls["ended"] \
        and sum(calls["failed_by_type"].values()) == calls["failed"]
    check("counts add up", sums,
          f"{calls['succeeded']} succeeded + {calls['failed']} failed = {calls['ended']}; "
          f"failures by type sum to {sum(calls['failed_by_type'].values())}")
    check("answers correct", not calls["wrong_results"] and not calls["affinity_breaks"],
          f"{len(calls['wrong_results'])} wrong answers, {len(calls['affinity_breaks'])} "
          "session calls served by a worker other than the bound one")
    deaths_ok = (deaths["injected"] == deaths["detected"]
                 and deaths["detected_total"] == deaths["injected_total"]
                 and not deaths["unexplained"] and not deaths["misreported"]
                 and deaths["pool_crash_counter"] == deaths["expected_crash_counter"])
    check("detected deaths == injected deaths", deaths_ok,
          f"injected {deaths['injected_total']}{kinds_in_words(deaths['injected'])}, detected "
          f"{deaths['detected_total']}{kinds_in_words(deaths['detected'])}; pool crash counter "
          f"{deaths['pool_crash_counter']} (expected {deaths['expected_crash_counter']}); "
          f"{len(deaths['unexplained'])} unexplained, {len(deaths['undetected'])} undetected, "
          f"{len(deaths['misreported'])} misreported")
    check("no process left after close",
          not procs["left_after_close"] and not procs["unreaped_after_close"],
          f"{procs['seen']} worker pids seen; alive after close: "
          f"{procs['left_after_close'] or 'none'}; unreaped: "
          f"{procs['unreaped_after_close'] or 'none'}")
    check("sessions lost == sessions whose worker died",
          sessions["lost_observed"] == sessions["worker_died"] and not sessions["mismatches"]
          and not sessions["duplicate_losses"],
          f"{sessions['lost_observed']} SessionLost observed ({sessions['lost_during_run']} "
          f"during the run, {sessions['lost_at_verification']} at verification) vs "
          f"{sessions['worker_died']} epochs whose worker died, of {sessions['epochs']}")
    check("calls given up mid-call kept their sessions", not cancels["unexplained_losses"],
          f"{sum(cancels['calls'].values())} calls given up{kinds_in_words(cancels['calls'])}; "
          f"{cancels['drains']} drains: {cancels['drained_clean']} back clean, "
          f"{cancels['killed_after_grace']} killed after cancel_grace (counted apart; "
          f"{cancels['hangs_killed_after_grace']} hangs too), "
          f"{cancels['killed_while_draining']} died while draining; "
          f"{cancels['epochs_with_calls_given_up']} session epochs had calls given up, "
          f"{cancels['of_which_lost']} lost later, "
          f"{len(cancels['unexplained_losses'])} without their worker dying")
    check("pool recovered", bool(f.facts.get("recovered")) and not f.facts.get(
          "core_invariants"),
          f"back to {f.config['workers']} ready workers in "
          f"{(f.facts.get('recovery_seconds') or 0):.2f}s after the load"
          + (f"; core: {f.facts['core_invariants']}" if f.facts.get("core_invariants") else ""))
    return out


def kinds_in_words(counts: Mapping[str, int]) -> str:
    """`` (kill 3, crash 1)`` for the non-zero counts, or nothing."""
    parts = [f"{k} {n}" for k, n in counts.items() if n]
    return f" ({', '.join(parts)})" if parts else ""
