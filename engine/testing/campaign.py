"""Property-test campaigns: the pool state machine against your own worker app.

``engine campaign --app MODULE[:ATTR] --minutes N`` (or :func:`run_campaign`)
runs :class:`~engine.testing.machine.PoolMachine` with *real* worker processes
running your app, batch after batch, until the time budget is spent. Each
example starts a fresh pool and drives it through concurrent checkouts,
cancellations, kills at any moment (idle, leased, mid-call, around the
hand-off), session calls, ``end_session`` and close, checking the pool's
invariants after every step.

By default your app is called through the built-in ``ping``, ``echo`` if
your app has it (the machine assumes ``echo`` returns its arguments unchanged,
as the default app's does, and reports anything else as a failure), and every
command that declares the shape of its arguments (``@app.command(name,
args=...)``, see :mod:`engine.workers.schema`), with arguments drawn from that
shape. ``commands=`` / ``--commands`` names the commands instead; a named
command without a declared shape gets arbitrary JSON. The default app
(``engine.workers.programs``) gets its fault and program commands.

Any answer from an app command is accepted, but the campaign counts them: when
most calls of a command fail with a remote error (the handler raised, or
``UnknownCommand``), the campaign reports that as a finding and fails, naming
the command and its error counts. Calls that never ran the handler's real code
prove nothing.

It prints either the first failure, with the shrunk step sequence that
reproduces it, or how many examples and steps passed. Failures are saved in
Hypothesis' example database (``.hypothesis/`` in the current directory), so
the next campaign replays them first. Shrinking a failure runs to completion
and may take longer than the budget.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from engine.testing.machine import BudgetSpent, pool_machine

__all__ = ["CampaignResult", "app_call_finding", "main", "run_campaign"]

DEFAULT_APP = "engine.workers.programs"
GENERIC_COMMANDS = frozenset({"ping", "echo"})


@attrs.frozen
class CampaignResult:
    """What a campaign found. ``failure`` holds the report (error and shrunk steps)."""

    app: str
    passed: bool
    examples: int
    steps: int
    batches: int
    seconds: float
    seed: int
    failure: str | None = None
    #: Outcomes of app-command calls: ``{command: {"ok" or error type: count}}``.
    app_calls: dict[str, dict[str, int]] = attrs.field(factory=dict)
    #: Worker deaths the campaign caused on purpose (kills, crash calls): the
    #: pool counted them instead of logging each (``Pool.expect_death``).
    expected_deaths: int = 0
    #: The app's worker could not start: nothing was run (``failure`` says why).
    setup_failed: bool = False


def _app_start_problem(app: str) -> str | None:
    """Start one worker of ``app``: None if it starts, else why not."""
    import trio

    from engine.errors import EngineError
    from engine.pool.pool import open_pool

    async def start() -> str | None:
        try:
            async with open_pool(app=app, size=1, worker_output="discard") as pool:
                await pool.wait_ready(1)
        except EngineError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    return trio.run(start)


def run_campaign(app: str, minutes: float, *, size: int = 2, seed: int | None = None,
                 out: Callable[[str], object] = print, batch: int = 25, steps: int = 30,
                 commands: Sequence[str] | None = None, shrink: bool = True) -> CampaignResult:
    """Run the pool state machine against ``app`` for about ``minutes``.

    ``size``: workers per pool. ``seed``: makes the batches reproducible (each
    batch ``i`` uses ``seed + i``); default random. ``batch``: examples per
    Hypothesis run (no example starts once the budget is spent, so the
    campaign ends about one example after it). ``steps``: at most
    this many rules per example. ``commands``: the app commands the machine may
    call (default: ``ping``, ``echo`` and every command with a declared
    argument shape; every command for the default app).
    ``shrink=False`` reports the first failing sequence as found (faster, longer).
    A command most of whose calls failed with a remote error is a finding:
    the result does not pass and ``failure`` says which and how.
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes!r}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size!r}")
    unusable = _app_start_problem(app)
    if unusable is not None:
        # Every example would wait for a worker that never starts, and the
        # first report would be the driver's time-out, not the cause.
        out(f"engine campaign: app {app!r} cannot start, so nothing was run: {unusable}")
        return CampaignResult(app, False, 0, 0, 0, 0.0, seed or 0,
                              f"app {app!r} cannot start: {unusable}", setup_failed=True)
    allowed = frozenset(commands) if commands is not None else (
        None if app == DEFAULT_APP else GENERIC_COMMANDS)
    declared = commands is None and app != DEFAULT_APP
    machine = pool_machine(workers="real", app=app, sizes=(size,), commands=allowed,
                           call_declared=declared, name="CampaignPoolMachine")
    base = seed if seed is not None else random.randrange(2**31)
    what = "every command" if allowed is None else ", ".join(sorted(allowed))
    if declared:
        what += " and every command with declared args"
    out(f"engine campaign: app {app!r}, {size} worker(s) per pool, commands: {what}, "
        f"seed {base}, budget {minutes:g} min")
    started = time.monotonic()
    deadline = started + minutes * 60
    # Examples are not started past the deadline, even within a batch: the
    # campaign ends about one example after its budget, not one batch.
    machine.stop_after = deadline
    batches = 0
    while batches == 0 or time.monotonic() < deadline:
        hypothesis_seed(base + batches)(machine)
        reported: list[str] = []

        def capture(value: object, reported: list[str] = reported) -> None:
            reported.append(str(value))

        config = settings(
            max_examples=batch, stateful_step_count=steps, deadline=None,
            derandomize=False, print_blob=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.reuse, Phase.generate,
                    *([Phase.shrink] if shrink else [])],
        )
        try:
            with with_reporter(capture):
                run_state_machine_as_test(machine, settings=config)
        except BudgetSpent:
            batches += 1  # the budget ended this batch between two examples
            break
        except Exception as exc:
            batches += 1
            report = _failure_report(exc, reported)
            out(report)
            result = CampaignResult(app, False, machine.totals["examples"],
                                    machine.totals["steps"], batches,
                                    time.monotonic() - started, base, report,
                                    _by_command(machine.app_calls),
                                    machine.totals["expected_deaths"])
            out(f"FAILED after {result.examples} examples ({result.steps} steps) in "
                f"{result.seconds:.0f}s; rerun with --seed {base + batches - 1} to "
                "reproduce the batch")
            return result
        batches += 1
    calls = _by_command(machine.app_calls)
    finding = app_call_finding(calls)
    result = CampaignResult(app, finding is None, machine.totals["examples"],
                            machine.totals["steps"], batches, time.monotonic() - started,
                            base, finding, calls, machine.totals["expected_deaths"])
    if calls:
        out("app commands: " + "; ".join(f"{name} {_counts(outcomes)}"
                                         for name, outcomes in calls.items()))
    summary = (f"{result.examples} examples, {result.steps} steps, {batches} batch(es) in "
               f"{result.seconds:.0f}s, {result.expected_deaths} worker deaths "
               "caused on purpose (kills, crash calls)")
    if finding is not None:
        out(finding)
        out(f"FAILED (finding) after {summary}")
    else:
        out(f"passed: {summary}")
    return result


def _by_command(app_calls: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    calls: dict[str, dict[str, int]] = {}
    for (command, outcome), count in sorted(app_calls.items()):
        calls.setdefault(command, {})[outcome] = count
    return calls


def _counts(outcomes: Mapping[str, int]) -> str:
    total = sum(outcomes.values())
    failed = {kind: n for kind, n in outcomes.items() if kind != "ok"}
    detail = ", ".join(f"{kind} {n}" for kind, n in sorted(failed.items(), key=lambda i: -i[1]))
    calls = "1 call" if total == 1 else f"{total} calls"
    return f"{calls}, {outcomes.get('ok', 0)} ok" + (f", {detail}" if detail else "")


def app_call_finding(calls: Mapping[str, Mapping[str, int]]) -> str | None:
    """The finding when some app command failed in most of its calls: the pool
    was exercised, the command hardly (its handler's real work never ran)."""
    bad = {name: outcomes for name, outcomes in calls.items()
           if sum(n for kind, n in outcomes.items() if kind != "ok") * 2 > sum(outcomes.values())}
    if not bad:
        return None
    unknown = [name for name, outcomes in bad.items() if "UnknownCommand" in outcomes]
    lines = ["engine campaign finding: most calls of these commands failed with a remote "
             "error, so the campaign proves little about them:"]
    lines += [f"  {name}: {_counts(outcomes)}" for name, outcomes in bad.items()]
    advice = ("declare each command's argument shape (@app.command(name, args={...}), see "
              "engine.workers.schema) so that the campaign sends arguments the command "
              "accepts, or narrow the shape to the arguments it must accept")
    if unknown:
        advice = (f"the app does not have {', '.join(unknown)} (UnknownCommand): check the "
                  "names given to --commands; otherwise " + advice)
    lines.append(advice)
    return "\n".join(lines)


def _failure_report(exc: BaseException, reported: list[str]) -> str:
    """The error, then the step sequence (Hypothesis puts it in the exception's
    notes, or reports it), without the invariant checks between steps."""
    text = "".join(traceback.format_exception_only(exc))
    text += "".join(f"{r}\n" for r in reported if r not in text)
    lines = [line for line in text.splitlines()
             if line.strip() not in ("state.consistent()",)]
    return "\n".join(["engine campaign found a failure:", "", *lines])


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine campaign",
        description="Run the pool state machine against a worker app with real workers "
                    "and report the shrunk failure, or how many examples passed.")
    parser.add_argument("--app", required=True, metavar="MODULE[:ATTR]",
                        help="the worker app to test")
    parser.add_argument("--minutes", type=_positive_float, default=1.0,
                        help="time budget (default 1)")
    parser.add_argument("--size", type=_positive_int, default=2,
                        help="workers per pool (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="reproducible batches")
    parser.add_argument("--batch", type=_positive_int, default=25,
                        help="examples per batch (default 25)")
    parser.add_argument("--steps", type=_positive_int, default=30,
                        help="at most this many steps per example (default 30)")
    parser.add_argument("--no-shrink", action="store_true",
                        help="report the first failing sequence without shrinking it")
    parser.add_argument("--commands", default=None, metavar="CMD[,CMD...]",
                        help="app commands to call (default: ping,echo; all for the "
                             "default app)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``engine campaign``: 0 if everything passed, 1 if a failure or a finding (app
    commands that mostly failed) was found, 2 on usage, 3 if the app's worker
    cannot start."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    commands = None if args.commands is None else [
        c.strip() for c in args.commands.split(",") if c.strip()]
    result = run_campaign(args.app, args.minutes, size=args.size, seed=args.seed,
                          batch=args.batch, steps=args.steps, commands=commands,
                          shrink=not args.no_shrink)
    if result.setup_failed:
        return 3  # as engine stress: the run could not be set up
    return 0 if result.passed else 1
