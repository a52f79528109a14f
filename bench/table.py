"""The results table: rows from the figures, printed with rich or as Markdown.

Each row is (measurement, value, CPU per call, ratio, target, result); a row
whose measurement is in square brackets is a section heading. Only the sections
that ran have rows. Results say PASS or FAIL against the project's targets,
nothing asserts.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from engine import PoolConfig

Row = tuple[str, str, str, str, str, str]
COLUMNS = ("measurement", "value", "CPU/call: p + w", "ratio", "target", "result")
PEERS = (("anyio", "anyio.to_process.run_sync (Trio backend)"),
         ("trio_parallel", "trio_parallel.run_sync"))


def us(seconds: float) -> str:
    micros = seconds * 1e6
    return f"{micros:.1f} µs" if micros < 10 else f"{micros:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def cpu(split: dict[str, float], workers: bool = True) -> str:
    """'31 µs (p 20 + w 11)': total CPU per call, this process + the workers."""
    if not workers:
        return us(split["parent"])
    return f"{us(split['total'])} (p {us(split['parent'])[:-3]} + w {us(split['workers'])[:-3]})"


def window_cpu(window: dict[str, float]) -> str:
    return cpu({"total": window["cpu_per_call"], "parent": window["parent_cpu_per_call"],
                "workers": window["worker_cpu_per_call"]})


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def versus(ratio: float, better: str, worse: str, who: str = "pool") -> str:
    """'pool 2.10x faster' or 'pool 1.30x slower' (never 'faster' below 1)."""
    if ratio >= 1:
        return f"{who} {ratio:.2f}x {better}"
    return f"{who} {1 / ratio:.2f}x {worse}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _heading(text: str) -> Row:
    return (f"[{text}]", "", "", "", "", "")


def latency_rows(seq: dict[str, Any]) -> list[Row]:
    spin, pool = seq["spin"]["median"], seq["pool"]["median"]
    trio_floor = seq["floor"]["median"]
    per_round = seq["spin"]["n"] // seq["spin"]["rounds"]

    def value(name: str) -> str:
        return f"{us(seq[name]['median'])} (p90 {us(seq[name]['p90'])})"

    def step(name: str, before: str) -> str:
        delta = seq[name]["median"] - seq[before]["median"]
        sign = "+" if delta >= 0 else "-"
        return f"{seq[name]['median'] / spin:.2f}x spin ({sign}{us(abs(delta))})"

    def row(label: str, name: str, ratio: str, target: str = "", result: str = "") -> Row:
        return (label, value(name), cpu(seq[name]["cpu"]), ratio, target, result)

    out = [_heading(f"sequential, 1 worker: best of {seq['spin']['rounds']} round medians "
                    f"x {per_round} calls")]
    out.append(row("spin floor: both ends spin, no Trio, JSON in the child", "spin",
                   "1.00x", "(reference)"))
    out.append(row("  + the parent polls through Trio's scheduler", "spin_trio",
                   step("spin_trio", "spin")))
    out.append(row("  raw worker: ProcessWorker.call (runtime + channel)", "process_worker",
                   step("process_worker", "spin_trio")))
    checkout = seq["checkout"]
    out.append(("  pool checkout + checkin alone, no call", value("checkout"),
                cpu(checkout["cpu"], workers=False), "", "", ""))
    if "instant" in seq:
        instant = seq["instant"]
        out.append(("  pool.call on an instant in-process worker: the pool's own cost",
                    value("instant"), cpu(instant["cpu"], workers=False),
                    f"{instant['median'] / spin:.2f}x spin", "", ""))
    if "json" in seq:
        json_seconds = seq["json"]["seconds"]
        out.append(("  JSON of one call, both ends, in-process (in every row above)",
                    us(json_seconds), "", f"{json_seconds / spin:.2f}x spin", "", ""))
    pr = pool / spin
    out.append(row("pool.call: checkout + call + checkin", "pool", step("pool", "process_worker"),
                   "<= 1.5x spin", verdict(pr <= 1.5)))
    out.append(row("  the same with busy_poll=0 (no polling)", "pool_no_poll",
                   f"{seq['pool_no_poll']['median'] / spin:.2f}x spin"))
    out.append(row("Trio pipe echo, both ends sleep (issue 3's floor)", "floor",
                   f"{trio_floor / spin:.2f}x spin", "(yardstick)"))
    out.append(row("  + JSON decode/encode in the child", "json_floor",
                   f"{seq['json_floor']['median'] / trio_floor:.2f}x Trio echo"))
    raw = seq["process_worker"]["median"] / trio_floor
    out.append(("  raw worker against the Trio echo", "", "", f"{raw:.2f}x Trio echo",
                "<= 1.15x", verdict(raw <= 1.15)))
    out.append(("  pool.call against the Trio echo", "", "", f"{pool / trio_floor:.2f}x Trio echo",
                "<= 1.25x", verdict(pool / trio_floor <= 1.25)))
    for name, label, target, need in (
            ("anyio", PEERS[0][1], "pool faster", 1.0),
            ("trio_parallel", PEERS[1][1], "pool >= 2x faster", 2.0),
            ("process_pool_executor", "ProcessPoolExecutor via trio.to_thread", "", 0.0)):
        speedup = seq[name]["median"] / pool
        ok = speedup > need if need == 1.0 else speedup >= need
        out.append(row(label, name, versus(speedup, "faster", "slower"), target,
                       verdict(ok) if target else ""))
    return out


def throughput_rows(tp: dict[str, Any], heading: str, peers_target: bool = True,
                    no_poll_target: bool = False) -> list[Row]:
    out = [_heading(heading)]
    mine = tp["pool"]
    out.append(("pool.call", f"{mine['rate']:,.0f} calls/s", window_cpu(mine), "1.00x", "", ""))
    quiet = tp["pool_no_poll"]
    ratio = mine["rate"] / quiet["rate"]
    out.append(("  the same with busy_poll=0 (no polling)", f"{quiet['rate']:,.0f} calls/s",
                window_cpu(quiet), versus(ratio, "ahead", "behind", "default"),
                "default no slower" if no_poll_target else "",
                verdict(ratio >= 1) if no_poll_target else ""))
    for name, label in (*PEERS, ("process_pool_executor", "ProcessPoolExecutor")):
        if name not in tp:
            continue
        theirs = tp[name]
        target = "pool ahead" if peers_target and name != "process_pool_executor" else ""
        out.append((label, f"{theirs['rate']:,.0f} calls/s", window_cpu(theirs),
                    versus(mine["rate"] / theirs["rate"], "ahead", "behind"), target,
                    verdict(mine["rate"] > theirs["rate"]) if target else ""))
    return out


def idle_rows(idle: dict[str, Any]) -> list[Row]:
    out = [_heading(f"idle pool of {idle['size']}, {idle['seconds']:.0f} s after a burst: "
                    f"CPU per second")]
    for name, label in (("pool", f"default busy_poll ({us(PoolConfig().busy_poll)})"),
                        ("pool_no_poll", "busy_poll=0 (no polling)")):
        r = idle[name]
        out.append((label, f"{r['cpu_per_second'] * 1e3:.2f} ms/s "
                           f"({r['cpu_per_second'] * 100:.2f}% of a core)",
                    f"p {r['parent_cpu_per_second'] * 1e3:.2f} + "
                    f"w {r['worker_cpu_per_second'] * 1e3:.2f} ms/s", "", "", ""))
    return out


def contended_rows(c: dict[str, Any]) -> list[Row]:
    seq = c["sequential"]
    mine = seq["pool"]["mean"]
    per_round = seq["pool"]["n"] // seq["pool"]["rounds"]
    rounds = seq["pool"]["rounds"]
    out = [_heading(f"contended, {c['hogs']} busy loops: sequential, mean of {rounds} x "
                    f"{per_round} calls (best round median)")]

    def value(name: str) -> str:
        return f"{us(seq[name]['mean'])} ({us(seq[name]['median'])})"

    out.append(("pool.call", value("pool"), cpu(seq["pool"]["cpu_mean"]), "1.00x", "", ""))
    quiet = seq["pool_no_poll"]["mean"]
    out.append(("  the same with busy_poll=0 (no polling)", value("pool_no_poll"),
                cpu(seq["pool_no_poll"]["cpu_mean"]), versus(quiet / mine, "faster", "slower",
                                                             "default"),
                "default no slower", verdict(mine <= quiet)))
    for name, label in PEERS:
        speedup = seq[name]["mean"] / mine
        out.append((label, value(name), cpu(seq[name]["cpu_mean"]),
                    versus(speedup, "faster", "slower"), "pool faster", verdict(speedup > 1)))
    tp = c["throughput"]
    out.extend(throughput_rows(
        tp, f"contended throughput, {tp['workers']} workers, 8 callers: best of "
            f"{tp['runs']} x "
            f"{tp['seconds']:.1f} s", no_poll_target=True))
    return out


def scale_rows(s: dict[str, Any]) -> list[Row]:
    calls = s["queue_1"]["calls"]
    best = f", best of {s['rounds']}" if s.get("rounds", 1) > 1 else ""
    out = [_heading(f"scale, fake workers: CPU per call over {calls:,} calls, steady "
                    f"state{best}")]

    def row(key: str, label: str, base: str | None) -> Row:
        r = s[key]
        value = f"{us(r['wall_per_call'])} wall/call"
        if base is None:
            return (label, value, us(r["cpu_per_call"]), "1.00x", "", "")
        ratio = r["cpu_per_call"] / s[base]["cpu_per_call"]
        return (label, value, us(r["cpu_per_call"]), f"{ratio:.2f}x", "<= 1.3x",
                verdict(ratio <= 1.3))

    q, w = s["queue_many"], s["workers_many"]
    if "queue_0" in s:  # runs before 2026-12-02 evening compared 1 caller (none queued)
        out.append(row("queue_0", "1 worker, 1 caller (none queued, no hand-off)", None))
    one = s["queue_1"]
    out.append(row("queue_1", f"1 worker, {one['callers']:,} caller(s) "
                              f"({one['waiting_at_open']:,} queued)", None))
    out.append(row("queue_many", f"1 worker, {q['callers']:,} callers "
                                 f"({q['waiting_at_open']:,} queued)", "queue_1"))
    out.append(row("workers_1", f"1 worker, {w['callers']:,} callers", None))
    out.append(row("workers_many", f"{w['workers']:,} workers, {w['callers']:,} callers",
                   "workers_1"))
    return out


def startup_rows(s: dict[str, Any]) -> list[Row]:
    out = [_heading("real workers: start-up, recovery, close, memory (medians)")]
    bare, hello, stop, crash = s["bare"], s["hello"], s["stop"], s["crash"]
    out.append(("python -c pass (bare interpreter)", ms(bare), "", "1.00x", "", ""))
    out.append(("spawn to hello ('hello' below)", ms(hello), "", f"{hello / bare:.2f}x bare",
                "<= 2x", verdict(hello / bare <= 2.0)))
    out.append(("crash to replacement ready (SIGKILL)", ms(crash), "",
                f"{crash / hello:.2f}x hello", "<= 1.5x", verdict(crash / hello <= 1.5)))
    out.append(("raw worker stop: shutdown to exit ('stop' below)", ms(stop), "", "", "", ""))
    cores = s["cores"]
    for workers, p in s["pool"].items():
        plural = "s" if workers != "1" else ""
        if "skipped" in p:
            out.append((f"pool start / close, {workers} worker{plural}", "skipped", "",
                        p["skipped"], "", ""))
            continue
        ideal = f"hello x {max(1.0, int(workers) / cores):g}"
        start = p["start"] / p["ideal_start"]
        if workers == "4":
            out.append((f"pool start, {workers} workers", ms(p["start"]), "",
                        f"{p['start'] / hello:.2f}x hello, {p['start'] / bare:.2f}x bare",
                        "< 100 ms (issue 17)",
                        verdict(p["start"] < 0.1)))
        else:
            out.append((f"pool start, {workers} worker{plural}", ms(p["start"]), "",
                        f"{start:.2f}x ideal ({ideal})", "<= 1.3x", verdict(start <= 1.3)))
        close = p["close"] / p["ideal_close"]
        target = workers != "4"
        out.append((f"pool close, {workers} worker{plural}", ms(p["close"]), "",
                    f"{close:.2f}x ideal ({ideal.replace('hello', 'stop')})",
                    "<= 1.3x" if target else "", verdict(close <= 1.3) if target else ""))
    r = s["rss"]
    out.append(("RSS: bare interpreter, sleeping", mib(r["bare"]), "", "1.00x", "", ""))
    ratio = r["worker"] / r["bare"]
    out.append(("RSS: idle pool worker", mib(r["worker"]), "", f"{ratio:.2f}x bare",
                "<= 1.10x (was ~1.06x)", verdict(ratio <= 1.10)))
    return out


def origin_rows(o: dict[str, Any]) -> list[Row]:
    out = [_heading("the origin's success metrics, default PoolConfig (issue 17)")]
    c, a, v, h = o["checkouts"], o["affinity"], o["availability"], o["hung"]
    out.append((f"checkout success, {c['total']} checkouts", f"{c['ok']}/{c['total']}", "",
                "", "500/500", verdict(c["ok"] == c["total"] == 500)))
    rate = a["hits"] / a["total"]
    out.append(("session affinity hit rate", f"{rate:.1%} ({a['hits']}/{a['total']})", "", "",
                "> 95%", verdict(rate > 0.95)))
    share = v["ok"] / v["total"]
    out.append((f"availability with Retry, a kill every {v['kill_every']:g} s",
                f"{share:.3%} ({v['ok']:,}/{v['total']:,})", "", f"{v['kills']} kills",
                ">= 99.9%", verdict(share >= 0.999)))
    worst = max(h["seconds"])
    out.append(("hung worker (SIGSTOP while idle) out of service", f"{ms(worst)} (worst)", "",
                f"{worst / h['bound']:.2f}x interval + timeout", "< 5 s",
                verdict(worst < 5.0)))
    return out


def cancel_rows(c: dict[str, Any]) -> list[Row]:
    out = [_heading(f"a call cancelled mid-way, 1 worker: medians of {c['rounds']} "
                    "interleaved rounds")]
    kill, coop = c["kill"], c["cooperative"]
    out.append(("cancel to replacement ready (cancel_grace=0: kill)", ms(kill), "", "1.00x",
                "", ""))
    ratio = kill / coop
    out.append(("cancel to the same worker ready (cooperative, sessions kept)", ms(coop), "",
                f"{ratio:.1f}x sooner", "sooner than a kill", verdict(ratio > 1)))
    return out


def run_sync_rows(r: dict[str, Any]) -> list[Row]:
    """engine.run_sync against trio_parallel.run_sync and anyio.to_process.run_sync."""
    labels = {"engine": "engine.run_sync", "trio_parallel": "trio_parallel.run_sync",
              "anyio": "anyio.to_process.run_sync (Trio backend)"}
    lat, big = r["latency"], r["big"]
    mine = lat["engine"]["median"]
    out = [_heading(f"run_sync: operator.add(1, 2), 1 worker: best of "
                    f"{lat['engine']['rounds']} round medians x {r['per_round']} calls")]
    out.append((labels["engine"], us(mine), cpu(lat["engine"]["cpu"]), "1.00x", "", ""))
    for name, need in (("trio_parallel", 1.5), ("anyio", 1.2)):
        speedup = lat[name]["median"] / mine
        out.append((labels[name], us(lat[name]["median"]), cpu(lat[name]["cpu"]),
                    versus(speedup, "faster", "slower", "engine"),
                    f"engine >= {need}x faster", verdict(speedup >= need)))
    tp, setup = r["throughput"], r["throughput_setup"]
    out.append(_heading(f"run_sync: throughput, {setup['workers']} workers, {setup['callers']} "
                        f"callers: best of {setup['runs']} x {setup['seconds']:.1f} s"))
    rate = tp["engine"]["rate"]
    out.append((labels["engine"], f"{rate:,.0f} calls/s", window_cpu(tp["engine"]), "1.00x",
                "", ""))
    if "engine_kill" in tp:  # breakdown: the same call without the shielded scope
        kill = tp["engine_kill"]
        out.append(("  the same with kill_on_cancel=True (never shielded)",
                    f"{kill['rate']:,.0f} calls/s", window_cpu(kill),
                    versus(kill["rate"] / rate, "ahead", "behind", "it"), "", ""))
    for name in ("trio_parallel", "anyio"):
        ahead = rate / tp[name]["rate"]
        out.append((labels[name], f"{tp[name]['rate']:,.0f} calls/s", window_cpu(tp[name]),
                    versus(ahead, "ahead", "behind", "engine"), "engine >= 1.3x ahead",
                    verdict(ahead >= 1.3)))
    size = r["bytes"] / 1e6
    out.append(_heading(f"run_sync: bytes(value) of {size:.0f} MB ({size:.0f} MB each way), "
                        f"1 worker: best of {big['engine']['rounds']} round medians"))
    mine = big["engine"]["median"]
    out.append((labels["engine"], ms(mine), cpu(big["engine"]["cpu"]), "1.00x", "", ""))
    for name in ("trio_parallel", "anyio"):
        speedup = big[name]["median"] / mine
        target = "engine no slower" if name == "trio_parallel" else ""
        out.append((labels[name], ms(big[name]["median"]), cpu(big[name]["cpu"]),
                    versus(speedup, "faster", "slower", "engine"), target,
                    verdict(speedup >= 1.0) if target else ""))
    batch = r["batch"]
    first = batch["engine"]
    out.append(_heading(f"run_sync: CPU-bound batch, {first['tasks']} tasks on "
                        f"{first['cores']} workers ({first['cores']} cores), best of 2"))
    bare = batch.get("bare")  # older result files have no bare row
    if bare is not None:
        out.append((f"bare processes, one per core: {ms(bare['batch'])} (one task alone "
                    f"{ms(bare['alone'])})", f"{bare['speedup']:.2f}x speed-up", "",
                    f"{bare['speedup'] / bare['cores']:.0%} of ideal ({bare['cores']}x)",
                    "(this machine's cores)", ""))
    for name in ("engine", "trio_parallel", "anyio"):
        b = batch[name]
        ideal = b["speedup"] / b["cores"]
        ratio = f"{ideal:.0%} of ideal ({b['cores']}x)"
        if bare is None:
            target = "within 10% of ideal" if name == "engine" else ""
            ok = ideal >= 0.9
        else:
            pace = bare["batch"] / b["batch"]  # the same work: 100% is no overhead
            ratio += f", {pace:.0%} of bare's pace"
            target = "within 10% of bare" if name == "engine" else ""
            ok = pace >= 0.9
        out.append((f"{labels[name]}: {ms(b['batch'])} (one task alone {ms(b['alone'])})",
                    f"{b['speedup']:.2f}x speed-up", cpu(b["cpu"]), ratio, target,
                    verdict(ok) if target else ""))
    return out


def remote_rows(s: dict[str, Any]) -> list[Row]:
    heading = _heading("workers through ssh (loopback sshd) against local workers")
    if "skipped" in s:
        return [heading, ("skipped: no sshd", "", "", s["skipped"], "", "")]
    rt, hello = s["round_trip"], s["hello"]
    out = [heading]
    out.append((f"pool.call, local worker (best of {rt['rounds']} round medians)",
                us(rt["local"]), "", "1.00x", "", ""))
    out.append(("pool.call, worker through ssh", us(rt["ssh"]), "",
                f"{rt['ssh'] / rt['local']:.2f}x local", "", ""))
    out.append(("spawn to hello, local worker", ms(hello["local"]), "", "1.00x", "", ""))
    out.append(("spawn to hello through ssh", ms(hello["ssh"]), "",
                f"{hello['ssh'] / hello['local']:.2f}x local", "", ""))
    out.append(("  of which: ssh login and exit alone (ssh host true)", ms(hello["ssh_true"]),
                "", f"{hello['ssh_true'] / hello['ssh']:.2f}x ssh spawn", "", ""))
    for key, label in (("ssh_killed", "busy remote worker gone after its ssh is SIGKILLed"),
                       ("parent_killed", "busy remote workers gone after their pool's "
                                         "process is SIGKILLed")):
        times = s["orphans"][key]
        worst = max(times) if times else float("nan")
        out.append((label, f"{ms(median(times))} (max {ms(worst)})", "",
                    f"{len(times)} runs", "< 3 s (issue 16)", verdict(worst < 3.0)))
    return out


def rows(r: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    if "latency" in r:
        out.extend(latency_rows(r["latency"]))
    if "throughput" in r:
        tp = r["throughput"]
        for workers in ("2", "4"):
            out.extend(throughput_rows(
                tp[workers], f"throughput, {workers} workers, {tp['callers']} callers: best of "
                             f"{tp['runs']} x {tp['seconds']:.1f} s"))
    if "idle" in r:
        out.extend(idle_rows(r["idle"]))
    if "contended" in r:
        out.extend(contended_rows(r["contended"]))
    if "scale" in r:
        out.extend(scale_rows(r["scale"]))
    if "startup" in r:
        out.extend(startup_rows(r["startup"]))
    if "origin" in r:
        out.extend(origin_rows(r["origin"]))
    if "cancel" in r:
        out.extend(cancel_rows(r["cancel"]))
    if "remote" in r:
        out.extend(remote_rows(r["remote"]))
    if "run_sync" in r:
        out.extend(run_sync_rows(r["run_sync"]))
    return out


def describe(m: dict[str, str]) -> str:
    load = f"; load average {m['load']} before the run" if "load" in m else ""
    pyc = f"; engine bytecode cache {m['bytecode']}" if "bytecode" in m else ""
    return (f"{m['cpus']} CPUs ({m['cpu']}), {m['os']}, {m['implementation']} "
            f"{m['python']}, trio {m['trio']}, engine {m['engine']}{load}{pyc}")


def print_table(r: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(title=f"engine benchmarks: {describe(r['machine'])}", box=box.SIMPLE_HEAD,
                  title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("measurement", "target") else "right",
                         no_wrap=True)
    for row in rows(r):
        if row[0].startswith("["):
            table.add_row(f"[bold]{row[0][1:-1]}[/]", *([""] * (len(COLUMNS) - 1)))
            continue
        result = {"PASS": "[green]PASS[/]", "FAIL": "[bold red]FAIL[/]"}.get(row[5], row[5])
        table.add_row(*row[:5], result)
    console.print(table)


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Machine: {describe(r['machine'])}", "",
             "| " + " | ".join(COLUMNS) + " |", "|---|---:|---:|---:|---|---:|"]
    for row in rows(r):
        if row[0].startswith("["):
            lines.append(f"| **{row[0][1:-1]}** | | | | | |")
        else:
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
