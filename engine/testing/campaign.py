"""Property-test campaigns: the pool state machine against your own worker app.

``engine campaign --app MODULE[:ATTR] --minutes N`` (or :func:`run_campaign`)
runs :class:`~engine.testing.machine.PoolMachine` with *real* worker processes
running your app, batch after batch, until the time budget is spent. Each
example starts a fresh pool and drives it through concurrent checkouts,
cancellations, kills at any moment (idle, leased, mid-call, around the
hand-off), session calls, ``end_session`` and close, checking the pool's
invariants after every step.

Your app is called only through generic commands: the built-in ``ping``, and
``echo`` if your app has it (it must return its arguments, as the default app's
does); restrict them with ``commands=`` / ``--commands``. The default app
(``engine.workers.programs``) also gets its fault and program commands.

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
from collections.abc import Callable, Sequence

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from engine.testing.machine import pool_machine

__all__ = ["CampaignResult", "main", "run_campaign"]

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


def run_campaign(app: str, minutes: float, *, size: int = 2, seed: int | None = None,
                 out: Callable[[str], object] = print, batch: int = 25, steps: int = 30,
                 commands: Sequence[str] | None = None, shrink: bool = True) -> CampaignResult:
    """Run the pool state machine against ``app`` for about ``minutes``.

    ``size``: workers per pool. ``seed``: makes the batches reproducible (each
    batch ``i`` uses ``seed + i``); default random. ``batch``: examples per
    Hypothesis run (the budget is checked between batches). ``steps``: at most
    this many rules per example. ``commands``: the app commands the machine may
    call (default: ``ping`` and ``echo``; every command for the default app).
    ``shrink=False`` reports the first failing sequence as found (faster, longer).
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes!r}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size!r}")
    allowed = frozenset(commands) if commands is not None else (
        None if app == DEFAULT_APP else GENERIC_COMMANDS)
    machine = pool_machine(workers="real", app=app, sizes=(size,), commands=allowed,
                           name="CampaignPoolMachine")
    base = seed if seed is not None else random.randrange(2**31)
    what = "every command" if allowed is None else ", ".join(sorted(allowed))
    out(f"engine campaign: app {app!r}, {size} worker(s) per pool, commands: {what}, "
        f"seed {base}, budget {minutes:g} min")
    started = time.monotonic()
    deadline = started + minutes * 60
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
        except Exception as exc:
            batches += 1
            report = _failure_report(exc, reported)
            out(report)
            result = CampaignResult(app, False, machine.totals["examples"],
                                    machine.totals["steps"], batches,
                                    time.monotonic() - started, base, report)
            out(f"FAILED after {result.examples} examples ({result.steps} steps) in "
                f"{result.seconds:.0f}s; rerun with --seed {base + batches - 1} to "
                "reproduce the batch")
            return result
        batches += 1
    result = CampaignResult(app, True, machine.totals["examples"], machine.totals["steps"],
                            batches, time.monotonic() - started, base)
    out(f"passed: {result.examples} examples, {result.steps} steps, {batches} batch(es) in "
        f"{result.seconds:.0f}s")
    return result


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
    """``engine campaign``: 0 if everything passed, 1 if a failure was found, 2 on usage."""
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
    return 0 if result.passed else 1
