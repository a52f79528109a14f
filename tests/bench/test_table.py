"""The bench table's verdicts (layer 1: synthetic figures, nothing measured).

Every row with a target says PASS or FAIL, every other row neither; each
target is judged at its boundary the way the README states it; a section that
did not run has no rows; a skipped pool size says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.table import COLUMNS, markdown, rows

pytestmark = pytest.mark.layer1

US = 1e-6


def _seq(median_us: float, mean_us: float | None = None) -> dict[str, Any]:
    cpu = {"total": 2 * median_us * US, "parent": median_us * US, "workers": median_us * US}
    return {"median": median_us * US, "p90": 1.2 * median_us * US,
            "mean": (mean_us or median_us) * US, "n": 300, "rounds": 10,
            "cpu": cpu, "cpu_mean": cpu}


def _window(rate: float) -> dict[str, float]:
    return {"rate": rate, "cpu_per_call": 50 * US, "parent_cpu_per_call": 30 * US,
            "worker_cpu_per_call": 20 * US}


def _scale(cpu_us: float, workers: int, callers: int) -> dict[str, Any]:
    return {"workers": workers, "callers": callers, "calls": 2000,
            "waiting_at_open": max(0, callers - workers - 1), "cpu_per_call": cpu_us * US,
            "wall_per_call": cpu_us * US}


def results(*, pool_us: float = 15.0, contended_pool_us: float = 100.0,
            queue_ratio: float = 1.3, skip_256: bool = False,
            cancel_s: float = 0.001, affinity_hits: int = 100,
            hung_s: float = 4.0) -> dict[str, Any]:
    latency = {name: _seq(us) for name, us in (
        ("spin", 10.0), ("spin_trio", 11.0), ("process_worker", 12.0), ("checkout", 3.0),
        ("pool", pool_us), ("pool_no_poll", 30.0), ("floor", 14.0), ("json_floor", 16.0),
        ("anyio", 50.0), ("trio_parallel", 60.0), ("process_pool_executor", 150.0),
        ("instant", 4.0))}
    latency["json"] = {"seconds": 2.5 * US}
    tp = {name: _window(rate) for name, rate in (
        ("pool", 20_000.0), ("pool_no_poll", 15_000.0), ("anyio", 10_000.0),
        ("trio_parallel", 12_000.0), ("process_pool_executor", 3_000.0))}
    pool_sizes: dict[str, Any] = {
        n: {"start": 0.03 * k, "close": 0.01 * k, "ideal_start": 0.03 * k,
            "ideal_close": 0.01 * k} for n, k in (("1", 1), ("4", 2), ("64", 32), ("256", 128))}
    if skip_256:
        pool_sizes["256"] = {"skipped": "100 MiB available, ~4,000 MiB needed"}
    idle = {"pool_cpu": 0.001, "cpu_per_second": 0.002, "parent_cpu_per_second": 0.001,
            "worker_cpu_per_second": 0.001}
    return {
        "machine": {"cpus": "2", "cpu": "x", "os": "Linux", "implementation": "cpython",
                    "python": "3.11", "trio": "0", "engine": "0"},
        "latency": latency,
        "throughput": {"seconds": 1.0, "callers": 8, "runs": 3, "2": tp, "4": tp},
        "idle": {"seconds": 3.0, "size": 4, "pool": idle, "pool_no_poll": idle},
        "contended": {"hogs": 2, "sequential": {
            "pool": _seq(contended_pool_us), "pool_no_poll": _seq(100.0),
            "anyio": _seq(150.0), "trio_parallel": _seq(150.0)},
            "throughput": {"workers": 2, "seconds": 1.0, "runs": 3, **tp}},
        "scale": {"queue_0": _scale(60.0, 1, 1), "queue_1": _scale(100.0, 1, 3),
                  "queue_many": _scale(100.0 * queue_ratio, 1, 10_002),
                  "workers_1": _scale(100.0, 1, 1024), "workers_many": _scale(100.0, 1024, 1024)},
        "startup": {"bare": 0.03, "hello": 0.03, "stop": 0.01, "crash": 0.04, "cores": 2,
                    "pool": pool_sizes, "rss": {"bare": 10.0 * 2**20, "worker": 10.6 * 2**20}},
        "cancel": {"rounds": 20, "kill": 0.05, "cooperative": cancel_s},
        "run_sync": _run_sync(),
        "origin": {"checkouts": {"ok": 500, "total": 500},
                   "affinity": {"hits": affinity_hits, "total": 100},
                   "availability": {"ok": 9990, "total": 10_000, "kills": 20,
                                    "kill_every": 0.5},
                   "hung": {"seconds": [3.9, hung_s], "bound": 4.0}},
    }


def _row(table: list[tuple[str, ...]], label: str) -> dict[str, str]:
    matches = [dict(zip(COLUMNS, row, strict=True)) for row in table if row[0].startswith(label)]
    assert len(matches) == 1, (label, matches)
    return matches[0]


def test_every_row_with_a_target_has_a_verdict_and_no_other_row_has_one() -> None:
    table = rows(results())
    assert len(table) > 50
    for row in table:
        target, result = row[4], row[5]
        if target and not target.startswith("("):  # "(reference)", "(yardstick)"
            assert result in ("PASS", "FAIL"), row
        else:
            assert result == "", row
    assert "FAIL" not in {row[5] for row in table}  # every synthetic figure is on target
    lines = markdown(results()).splitlines()
    assert sum(line.startswith("| ") for line in lines) == len(table) + 1  # + header


@pytest.mark.parametrize(("pool_us", "verdict"), [(15.0, "PASS"), (15.1, "FAIL")])
def test_pool_call_within_one_and_a_half_spin_floors(pool_us: float, verdict: str) -> None:
    row = _row(rows(results(pool_us=pool_us)), "pool.call: checkout")
    assert row["target"] == "<= 1.5x spin" and row["result"] == verdict


def test_the_breakdown_shows_the_pools_own_cost_and_the_json() -> None:
    table = rows(results())
    instant = _row(table, "  pool.call on an instant in-process worker")
    assert (instant["value"], instant["ratio"]) == ("4.0 µs (p90 4.8 µs)", "0.40x spin")
    json_row = _row(table, "  JSON of one call")
    assert (json_row["value"], json_row["ratio"]) == ("2.5 µs", "0.25x spin")
    # Older result files have neither row.
    old = results()
    del old["latency"]["instant"], old["latency"]["json"]
    labels = [row[0] for row in rows(old)]
    assert not any("instant" in label or "JSON of one call" in label for label in labels)


@pytest.mark.parametrize(("pool_us", "verdict"), [(100.0, "PASS"), (100.5, "FAIL")])
def test_contended_default_no_slower_than_no_polling(pool_us: float, verdict: str) -> None:
    table = rows(results(contended_pool_us=pool_us))
    i = next(i for i, row in enumerate(table) if row[0].startswith("[contended, "))
    assert table[i + 2][0].strip().startswith("the same with busy_poll=0")
    assert table[i + 2][5] == verdict


@pytest.mark.parametrize(("ratio", "verdict"), [(1.3, "PASS"), (1.31, "FAIL")])
def test_queued_callers_within_1_3x(ratio: float, verdict: str) -> None:
    table = rows(results(queue_ratio=ratio))
    row = _row(table, "1 worker, 10,002 callers (10,000 queued)")
    assert row["ratio"] == f"{ratio:.2f}x" and row["result"] == verdict
    # Compared with 1 queued caller; the single caller (no hand-off) is shown apart.
    assert _row(table, "1 worker, 3 caller(s) (1 queued)")["ratio"] == "1.00x"
    assert _row(table, "1 worker, 1 caller (none queued")["result"] == ""


@pytest.mark.parametrize(("cancel_s", "verdict"), [(0.001, "PASS"), (0.05, "FAIL")])
def test_a_cooperative_cancel_is_back_sooner_than_a_kill(cancel_s: float, verdict: str) -> None:
    row = _row(rows(results(cancel_s=cancel_s)), "cancel to the same worker ready")
    assert row["result"] == verdict
    assert row["ratio"] == f"{0.05 / cancel_s:.1f}x sooner"


def test_a_skipped_pool_size_says_so_and_judges_nothing() -> None:
    row = _row(rows(results(skip_256=True)), "pool start / close, 256 workers")
    assert row["value"] == "skipped" and "MiB available" in row["ratio"]
    assert row["result"] == ""


def test_only_the_sections_that_ran_have_rows() -> None:
    r = results()
    for section in ("throughput", "idle", "contended", "scale", "startup", "cancel",
                    "origin"):
        del r[section]
    table = rows(r)
    assert table and all(not row[0].startswith("[throughput") for row in table)
    assert not any("RSS" in row[0] for row in table)


def _remote(parent_killed: list[float]) -> dict[str, Any]:
    return {"round_trip": {"local": 20 * US, "ssh": 40 * US, "rounds": 10, "per_round": 300},
            "hello": {"local": 0.04, "ssh": 0.3, "ssh_true": 0.2},
            "orphans": {"ssh_killed": [0.02, 0.05], "parent_killed": parent_killed}}


@pytest.mark.parametrize(("worst", "verdict"), [(2.99, "PASS"), (3.0, "FAIL")])
def test_remote_rows_judge_the_worst_orphan_under_3_seconds(worst: float,
                                                            verdict: str) -> None:
    table = rows({**results(), "remote": _remote([0.5, worst])})
    assert _row(table, "pool.call, worker through ssh")["ratio"] == "2.00x local"
    assert _row(table, "spawn to hello through ssh")["ratio"] == "7.50x local"
    row = _row(table, "busy remote workers gone after their pool's process")
    assert row["target"] == "< 3 s (issue 16)" and row["result"] == verdict


def test_remote_rows_without_sshd_say_why_and_judge_nothing() -> None:
    table = rows({**results(), "remote": {"skipped": "sshd not installed"}})
    row = _row(table, "skipped: no sshd")
    assert row["ratio"] == "sshd not installed" and row["result"] == ""


def _run_sync(*, tp_us: float = 60.0, anyio_us: float = 48.0, tp_rate: float = 7_000.0,
              big_tp: float = 0.05, speedup: float = 1.8,
              bare: float | None = None) -> dict[str, Any]:
    def best(median: float) -> dict[str, Any]:
        return {"median": median, "rounds": 10,
                "cpu": {"total": 2 * median, "parent": median, "workers": median}}

    def batch(s: float) -> dict[str, Any]:
        return {"alone": 0.1, "batch": 0.8 / s, "tasks": 8, "cores": 2, "speedup": s,
                "cpu": {"total": 0.1, "parent": 0.0, "workers": 0.1}}

    return {"latency": {"engine": best(40 * US), "trio_parallel": best(tp_us * US),
                        "anyio": best(anyio_us * US)},
            "big": {"engine": best(0.05), "trio_parallel": best(big_tp), "anyio": best(0.05)},
            "per_round": 300, "bytes": 10_000_000,
            "throughput": {"engine": _window(13_000.0), "engine_kill": _window(14_300.0),
                           "trio_parallel": _window(tp_rate),
                           "anyio": _window(10_000.0)},
            "throughput_setup": {"seconds": 1.0, "runs": 3, "workers": 2, "callers": 8},
            "batch": {"engine": batch(speedup), "trio_parallel": batch(1.5),
                      "anyio": batch(1.5),
                      **({} if bare is None else {"bare": batch(bare)})}}


@pytest.mark.parametrize(("figures", "label", "verdict"), [
    ({"tp_us": 60.0}, "trio_parallel.run_sync", "PASS"),
    ({"tp_us": 59.9}, "trio_parallel.run_sync", "FAIL"),
    ({"anyio_us": 48.0}, "anyio.to_process", "PASS"),
    ({"anyio_us": 47.9}, "anyio.to_process", "FAIL"),
])
def test_run_sync_latency_targets(figures: dict[str, float], label: str, verdict: str) -> None:
    r = results()
    r["run_sync"] = _run_sync(**figures)
    table = rows(r)
    start = next(i for i, row in enumerate(table) if row[0].startswith("[run_sync: operator"))
    row = next(dict(zip(COLUMNS, row, strict=True)) for row in table[start:]
               if row[0].startswith(label))
    assert row["result"] == verdict


@pytest.mark.parametrize(("figures", "heading", "verdict"), [
    ({"tp_rate": 10_000.0}, "[run_sync: throughput", "PASS"),
    ({"tp_rate": 10_001.0}, "[run_sync: throughput", "FAIL"),
    ({"big_tp": 0.05}, "[run_sync: bytes", "PASS"),
    ({"big_tp": 0.0499}, "[run_sync: bytes", "FAIL"),
    ({"speedup": 1.8}, "[run_sync: CPU-bound", "PASS"),
    ({"speedup": 1.79}, "[run_sync: CPU-bound", "FAIL"),
])
def test_run_sync_throughput_bytes_and_batch_targets(figures: dict[str, float], heading: str,
                                                     verdict: str) -> None:
    r = results()
    r["run_sync"] = _run_sync(**figures)
    table = rows(r)
    start = next(i for i, row in enumerate(table) if row[0].startswith(heading))
    judged = [row[5] for row in table[start + 1:start + 4] if row[5]]
    assert judged[0] == verdict


@pytest.mark.parametrize(("speedup", "verdict"), [(1.45, "PASS"), (1.43, "FAIL")])
def test_the_batch_is_judged_against_bare_processes_when_measured(speedup: float,
                                                                  verdict: str) -> None:
    """On a VM whose two vCPUs give 1.6x together, the engine's batch must take
    at most 1/0.9 of the bare processes' batch time (same work: the batch
    times are compared, not the speed-ups); the nominal ratio is still shown."""
    r = results()
    r["run_sync"] = _run_sync(speedup=speedup, bare=1.6)
    table = rows(r)
    start = next(i for i, row in enumerate(table) if row[0].startswith("[run_sync: CPU-bound"))
    bare = dict(zip(COLUMNS, table[start + 1], strict=True))
    assert bare["measurement"].startswith("bare processes") and bare["result"] == ""
    assert bare["ratio"] == "80% of ideal (2x)"
    engine_row = dict(zip(COLUMNS, table[start + 2], strict=True))
    assert engine_row["target"] == "within 10% of bare"
    # batch(s) = 0.8 / s: bare's 0.5 s against the engine's 0.8 / speedup
    assert engine_row["ratio"] == (f"{speedup / 2:.0%} of ideal (2x), "
                                   f"{0.5 / (0.8 / speedup):.0%} of bare's pace")
    assert engine_row["result"] == verdict


@pytest.mark.parametrize(("hits", "verdict"), [(96, "PASS"), (95, "FAIL")])
def test_affinity_hit_rate_above_95_percent(hits: int, verdict: str) -> None:
    assert _row(rows(results(affinity_hits=hits)), "session affinity")["result"] == verdict


@pytest.mark.parametrize(("seconds", "verdict"), [(4.99, "PASS"), (5.0, "FAIL")])
def test_hung_worker_out_of_service_within_5_seconds(seconds: float, verdict: str) -> None:
    row = _row(rows(results(hung_s=seconds)), "hung worker")
    assert row["result"] == verdict
    assert row["ratio"] == f"{seconds / 4.0:.2f}x interval + timeout"


def test_run_sync_throughput_shows_the_price_of_the_shielded_scope_apart() -> None:
    """The breakdown row (kill_on_cancel=True: never shielded) is
    compared with engine.run_sync and judged against no target."""
    table = rows(results())
    start = next(i for i, row in enumerate(table) if row[0].startswith("[run_sync: throughput"))
    row = dict(zip(COLUMNS, table[start + 2], strict=True))
    assert row["measurement"].strip() == "the same with kill_on_cancel=True (never shielded)"
    assert row["value"] == "14,300 calls/s"
    assert row["ratio"] == "it 1.10x ahead" and row["target"] == row["result"] == ""
