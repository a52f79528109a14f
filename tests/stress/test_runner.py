"""The stress-test runner (``engine stress``).

Layer 3 (real worker processes): a short chaos run through the real command
line, whose JSON report must hold every invariant and add up; and a run in
which a worker dies behind the runner's back, which the runner must flag.
Layer 1: the pure pieces (mix parsing, exit classification). About 8 s in all.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from engine.stress.chaos import classify_exit
from engine.stress.runner import (
    LiveStatus,
    StressConfig,
    StressSetupError,
    parse_mix,
    run_stress,
)
from tests.leaks import child_pids

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.layer3
def test_chaos_run_holds_every_invariant_and_its_counts_add_up(tmp_path: Path) -> None:
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "stress", "--workers", "2", "--clients", "8",
         "--duration", "3.5", "--kill-every", "0.3", "--chaos",
         "--mix", "anon=60,session=30,slow=10,crash=2,hang=1,garbage=1",
         "--hang-timeout", "0.2", "--seed", "7",
         "--json", str(json_path), "--html", str(html_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(json_path.read_text())

    failed = [i for i in report["invariants"] if not i["ok"]]
    assert not failed, failed
    assert report["ok"] is True
    names = {i["name"] for i in report["invariants"]}
    assert {"every call ended", "detected deaths == injected deaths",
            "no process left after close",
            "sessions lost == sessions whose worker died"} <= names

    calls = report["calls"]
    assert calls["attempted"] > 0 and calls["succeeded"] > 0
    assert calls["attempted"] == calls["ended"]
    assert calls["succeeded"] + calls["failed"] == calls["attempted"]
    assert sum(calls["failed_by_type"].values()) == calls["failed"]
    assert sum(k["attempted"] for k in calls["by_kind"].values()) == calls["attempted"]
    assert sum(k["succeeded"] for k in calls["by_kind"].values()) == calls["succeeded"]
    assert calls["hung"] == 0 and calls["untyped_errors"] == 0

    deaths = report["deaths"]
    # Chaos really happened, and every death was accounted for by kind.
    assert deaths["injected"]["kill"] >= 1
    assert deaths["injected"]["crash"] >= 1
    assert deaths["injected"] == deaths["detected"]
    assert deaths["injected_total"] == deaths["detected_total"] == sum(
        deaths["injected"].values())
    assert deaths["pool_crash_counter"] == deaths["injected"]["kill"] + \
        deaths["injected"]["crash"]
    assert deaths["kills_attempted"] >= deaths["injected"]["kill"]
    # Deaths the runner caused are counted in its summary, not logged one per line.
    assert deaths["expected_deaths"] == deaths["pool_crash_counter"]
    assert "crashed: signal 9" not in proc.stderr and "crashed: exit code" not in proc.stderr
    assert f"of which {deaths['expected_deaths']} expected deaths" in proc.stdout
    # --chaos gives calls up mid-call (cancel, timeout): the summary says why the
    # drains need not match them (new-user audit).
    assert sum(report["cancellations"]["calls"].values()) > 0
    assert "a call given up before its request was written needs none" in proc.stdout
    # The report's own terms are explained where they appear.
    assert '(cancel and timeout: "succeeded" means given up mid-call as planned' in proc.stdout
    assert "epochs (an epoch: a session's life on one worker)" in proc.stdout
    # Failures the faults must cause, by type.
    by_type = calls["failed_by_type"]
    assert by_type.get("WorkerCrashed", 0) >= calls["by_kind"]["crash"]["attempted"]
    assert calls["by_kind"]["crash"]["succeeded"] == 0

    sessions = report["sessions"]
    assert sessions["lost_observed"] == sessions["worker_died"]
    assert sessions["lost_observed"] == (sessions["lost_during_run"]
                                         + sessions["lost_at_verification"])
    assert sessions["epochs"] >= sessions["worker_died"]
    assert report["processes"]["left_after_close"] == []
    assert report["processes"]["seen"] >= 2 + deaths["injected_total"]
    assert report["latency"]["call"]["count"] > 0
    assert report["latency"]["checkout_wait"]["count"] > 0

    page = html_path.read_text()
    assert page.count("<svg") == 2 and "PASS" in page and "<script" not in page
    assert "engine stress: PASS" in proc.stdout


@pytest.mark.layer3
async def test_a_death_the_runner_did_not_cause_fails_the_deaths_invariant(
        caplog: pytest.LogCaptureFixture) -> None:
    """The invariants can fail: a worker killed behind the runner's back is an
    unexplained death, and the run is reported as failed (and it is logged:
    only the deaths the runner causes are kept out of the log)."""
    caplog.set_level(logging.WARNING, logger="engine.pool")
    before = child_pids()
    killed: list[int] = []

    def on_status(status: LiveStatus) -> None:
        if status.phase == "load" and status.succeeded > 20 and not killed:
            victim = min(child_pids() - before)
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    config = StressConfig(workers=2, clients=4, duration=1.5, seed=3,
                          mix={"anon": 1.0}, sessions_per_client=0)
    report = await run_stress(config, on_status)

    assert killed, "the load never got going"
    deaths = {i["name"]: i for i in report["invariants"]}["detected deaths == injected deaths"]
    assert deaths["ok"] is False
    assert report["ok"] is False
    assert report["deaths"]["injected_total"] == 0
    assert report["deaths"]["detected_total"] == 1
    assert f"pid {killed[0]}" in report["deaths"]["unexplained"][0]
    assert report["deaths"]["expected_deaths"] == 0
    assert [r.getMessage() for r in caplog.records if "crashed: signal 9" in r.getMessage()
            and r.levelno == logging.WARNING and f"(pid {killed[0]})" in r.getMessage()]
    # The other invariants still hold: the pool coped with the death.
    others = [i for i in report["invariants"] if i["name"] != deaths["name"]]
    assert all(i["ok"] for i in others), others


@pytest.mark.layer3
async def test_an_app_without_the_mixs_commands_is_refused_before_the_load() -> None:
    """An app that lacks the commands the mix sends would make every call fail
    (a new user's app reported PASS with 0 calls succeeded): refused at start,
    naming the kinds and the commands, and no process is left."""
    before = child_pids()
    config = StressConfig(app="tests.apps.counters", workers=1, clients=2, duration=5.0,
                          mix={"anon": 1.0, "slow": 1.0}, sessions_per_client=0)
    with pytest.raises(StressSetupError, match=r"app 'tests.apps.counters' does not serve the "
                                               r"commands of the call mix \(anon needs "
                                               r"'cpu'; slow needs 'sleep'\)"):
        await run_stress(config)
    assert child_pids(settle=2.0) <= before


@pytest.mark.layer3
async def test_calls_given_up_mid_call_cost_no_worker_and_no_session() -> None:
    """cancel and timeout calls without chaos: every drain comes back clean, no
    worker restarts, no session is lost; with cancel_grace=0 (a kill per call
    given up) the new invariant fails, so it can."""
    mix = {"session": 2.0, "cancel": 1.0, "timeout": 1.0}
    config = StressConfig(workers=2, clients=4, duration=1.5, seed=5, mix=mix)
    report = await run_stress(config)
    assert report["ok"] is True, [i for i in report["invariants"] if not i["ok"]]
    cancels = report["cancellations"]
    assert cancels["calls"]["cancel"] > 0 and cancels["calls"]["timeout"] > 0
    assert cancels["given_up_as_planned"] == sum(cancels["calls"].values())
    assert cancels["drains"] > 0 and cancels["drained_clean"] == cancels["drains"]
    assert cancels["epochs_with_calls_given_up"] > 0 and cancels["of_which_lost"] == 0
    assert report["restarts"] == 0 and report["sessions"]["lost_observed"] == 0

    killing = attrs.evolve(config, pool_options={"cancel_grace": 0})
    report = await run_stress(killing)
    verdicts = {i["name"]: i["ok"] for i in report["invariants"]}
    assert verdicts["calls given up mid-call kept their sessions"] is False
    assert report["cancellations"]["drains"] == 0 and report["restarts"] > 0


@pytest.mark.layer1
def test_parse_mix() -> None:
    assert parse_mix("anon=60, session=30,slow=10") == {"anon": 60.0, "session": 30.0,
                                                       "slow": 10.0}
    assert parse_mix("crash=0.5,") == {"crash": 0.5}
    for bad, why in [("anon", "KIND=WEIGHT"), ("bogus=1", "unknown call kind"),
                     ("anon=x", "must be a number"), ("anon=-1", ">= 0"),
                     ("anon=inf", ">= 0")]:
        with pytest.raises(ValueError, match=why):
            parse_mix(bad)


@pytest.mark.layer1
def test_stress_config_validation() -> None:
    with pytest.raises(ValueError, match="at least one kind"):
        StressConfig(mix={"anon": 0})
    with pytest.raises(ValueError, match="duration or a number of calls"):
        StressConfig(duration=None, calls=None)
    with pytest.raises(ValueError, match="hang_timeout"):
        StressConfig(mix={"hang": 1}, hang_timeout=5.0, call_timeout=5.0)
    with pytest.raises(ValueError, match="workers"):
        StressConfig(workers=0)
    # The call timeout must outlast the give-up point only when calls are given up,
    # and the message names the flag, not an internal field (new-user audit).
    with pytest.raises(ValueError, match=r"call timeout \(--call-timeout, 0.01s\) must be "
                                         r"longer than 0.05s; raise it, or drop those kinds"):
        StressConfig(mix={"anon": 1, "cancel": 1}, call_timeout=0.01)
    assert StressConfig(mix={"anon": 1}, call_timeout=0.01).call_timeout == 0.01


@pytest.mark.layer1
@pytest.mark.parametrize(("reason", "cause"), [
    ("crashed: signal 9", "killed"),
    ("crashed: exit code 13", "crashed"),
    ("crashed: signal 15", "crashed"),
    ("worker left dirty by its last lease", "replaced"),
    ("start failed: no hello", "start_failure"),
    ("pool closing", "shutdown"),
])
def test_classify_exit(reason: str, cause: str) -> None:
    assert classify_exit(reason) == cause
