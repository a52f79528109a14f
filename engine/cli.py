"""The ``engine`` command (also ``python -m engine``).

Subcommands:

* ``engine stress``: run the stress-test runner against a pool (see
  :mod:`engine.stress.runner`); exit 0 when every invariant held, 1 when one failed,
  2 on bad options, 3 when the pool could not start.
* ``engine campaign``: property-test campaigns (:mod:`engine.testing.campaign`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

_STRESS_EPILOG = """\
call kinds (for --mix, as KIND=WEIGHT; weights are relative):
  anon     echo a small payload or run a little CPU work, no session
  session  create, execute and list programs in one of the client's sessions
           (each client owns --sessions sessions; state lives in one worker)
  slow     sleep --slow-seconds in the worker
  fail     a handler that raises (RemoteError; the worker lives)
  crash    the worker exits mid-call (WorkerCrashed; the pool replaces it)
  hang     the worker never answers; --hang-timeout expires (CallTimeout)
  garbage  the worker writes garbage on the frame channel (ProtocolError)
  cancel   a session's 2 s sleep, cancelled by its caller 50 ms in (the pool
           drains the worker: it must come back with every session)
  timeout  the same, given up through a 50 ms call timeout (CallTimeout)

With --mix, kinds not named get weight 0. --chaos kills a random worker every
0.5 s (unless --kill-every is given) and adds crash=0.1,hang=0.05,garbage=0.05,
cancel=1,timeout=1 for kinds --mix does not name.

invariants checked at the end (exit 1 if one fails):
  every call ended with a result or a typed EngineError (none lost or hung);
  detected worker deaths == injected ones, pid by pid and by kind;
  no worker process is left after the pool closed;
  SessionLost count == sessions whose worker died (every still-bound session
  is called once more after the load, so each loss is observed exactly once);
  a session a call was given up on (cancel, timeout) keeps its state unless its
  worker died (workers killed after --pool cancel_grace are counted apart);
  plus: counts add up, every answer was correct, the pool recovered.

examples:
  engine stress --chaos --duration 10
  engine stress --workers 4 --clients 32 --kill-every 0.2 --duration 30 \\
      --json report.json --html report.html
  engine stress --calls 5000 --mix anon=80,session=20 --seed 1
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") \
            from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _mix(text: str) -> dict[str, float]:
    from engine.stress.runner import parse_mix

    try:
        mix = parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return mix


def _backoff(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in seconds, got {text!r}")
    low, high = (_positive_float(p) for p in parts)
    if low > high:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX, got {text!r}")
    return low, high


def _pool_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        value = json.loads(raw)  # numbers, true/false/null, [lists]
    except ValueError:
        value = raw  # a bare string, e.g. affinity=hint
    if isinstance(value, list):
        value = tuple(value)
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="A supervised pool of Python worker processes for Trio: tools.")
    from engine import __version__

    parser.add_argument("--version", action="version", version=f"engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    stress = sub.add_parser(
        "stress", help="load a pool with concurrent clients and chaos; check invariants",
        description="Start a pool, run concurrent clients against it with a mix of calls,\n"
                    "optionally kill workers and inject faults, then check that every call\n"
                    "ended, every death was detected, no session loss went unreported and\n"
                    "no process was left behind.",
        epilog=_STRESS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pool = stress.add_argument_group("pool")
    pool.add_argument("--app", default="engine.workers.programs",
                      help="worker app, MODULE or MODULE:ATTR, found on sys.path and in "
                           "the current directory (default: %(default)s)")
    pool.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                      help="pool size (default: %(default)s)")
    pool.add_argument("--call-timeout", type=_positive_float, default=5.0, metavar="S",
                      help="per-call timeout (default: %(default)s)")
    pool.add_argument("--checkout-timeout", type=_positive_float, default=5.0, metavar="S",
                      help="how long a caller waits for a worker (default: %(default)s)")
    pool.add_argument("--start-timeout", type=_positive_float, default=10.0, metavar="S",
                      help="worker start timeout (default: %(default)s)")
    pool.add_argument("--restart-backoff", type=_backoff, default=None, metavar="MIN,MAX",
                      help="restart backoff bounds in seconds (default: the pool's)")
    pool.add_argument("--pool", type=_pool_option, action="append", default=[],
                      metavar="FIELD=VALUE",
                      help="any other PoolConfig field, e.g. --pool healthy_period=1 "
                           "(repeatable; values are JSON, or else strings)")
    load = stress.add_argument_group("load")
    load.add_argument("--clients", type=_positive_int, default=16, metavar="N",
                      help="concurrent clients, each making one call at a time "
                           "(default: %(default)s)")
    load.add_argument("--duration", type=_positive_float, default=None, metavar="S",
                      help="run for S seconds (default: 10 unless --calls is given)")
    load.add_argument("--calls", type=_positive_int, default=None, metavar="N",
                      help="stop after N calls (with --duration: whichever comes first)")
    load.add_argument("--mix", type=_mix, default=None, metavar="SPEC",
                      help="call mix, e.g. anon=60,session=30,slow=10,crash=0,hang=0,"
                           "garbage=0 (the default); see below")
    load.add_argument("--slow-seconds", type=_positive_float, default=0.05, metavar="S",
                      help="duration of a slow call (default: %(default)s)")
    load.add_argument("--sessions", type=_non_negative_int, default=2, metavar="N",
                      help="sessions per client (default: %(default)s)")
    load.add_argument("--seed", type=int, default=None,
                      help="random seed, for a repeatable mix and kill schedule")
    chaos = stress.add_argument_group("chaos")
    chaos.add_argument("--kill-every", type=_positive_float, default=None, metavar="S",
                       help="SIGKILL a random ready or busy worker every S seconds")
    chaos.add_argument("--hang-timeout", type=_positive_float, default=0.25, metavar="S",
                       help="call timeout of 'hang' calls (default: %(default)s)")
    chaos.add_argument("--chaos", action="store_true",
                       help="shorthand: --kill-every 0.5 and a small crash/hang/garbage mix")
    out = stress.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    out.add_argument("--html", metavar="PATH",
                     help="write a self-contained HTML report with latency and throughput "
                          "charts")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no live display, even on a terminal")
    out.add_argument("-v", "--verbose", action="count", default=0,
                     help="log pool warnings (-v) or worker output too (-vv) to stderr")
    stress.set_defaults(subparser=stress)
    sub.add_parser("campaign", help="run a property-test campaign (engine.testing.campaign)",
                   add_help=False)
    return parser


def _check_output_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse report paths that cannot be written before the run, not after it
    (a run of minutes whose report then fails to save prints no verdict)."""
    for flag, path in (("--json", args.json), ("--html", args.html)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            parser.error(f"{flag} {path}: is a directory; give a file name")
        if not os.path.isdir(folder):
            parser.error(f"{flag} {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or (os.path.exists(path)
                                              and not os.access(path, os.W_OK)):
            parser.error(f"{flag} {path}: cannot be written here")


def _stress_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    from engine.stress.runner import CHAOS_KILL_EVERY, CHAOS_MIX, DEFAULT_MIX, StressConfig

    _check_output_paths(args, parser)

    reserved = {"app": "--app", "size": "--workers", "call_timeout": "--call-timeout",
                "checkout_timeout": "--checkout-timeout", "start_timeout": "--start-timeout",
                "restart_backoff": "--restart-backoff", "seed": "--seed"}
    for key, _value in args.pool:
        if key in reserved:
            parser.error(f"--pool {key}=...: use {reserved[key]} instead")
        if key in ("worker_factory", "policy"):
            parser.error(f"--pool {key}=...: needs a Python object; not settable here")
    mix = dict(args.mix) if args.mix is not None else dict(DEFAULT_MIX)
    kill_every = args.kill_every
    if args.chaos:
        kill_every = kill_every if kill_every is not None else CHAOS_KILL_EVERY
        for kind, weight in CHAOS_MIX.items():
            if args.mix is None or kind not in args.mix:
                mix[kind] = weight
    duration = args.duration if args.duration is not None or args.calls is not None else 10.0
    try:
        config = StressConfig(
            app=args.app, workers=args.workers, clients=args.clients, duration=duration,
            calls=args.calls, kill_every=kill_every, mix=mix, call_timeout=args.call_timeout,
            checkout_timeout=args.checkout_timeout, hang_timeout=args.hang_timeout,
            slow_seconds=args.slow_seconds, sessions_per_client=args.sessions,
            start_timeout=args.start_timeout, restart_backoff=args.restart_backoff,
            pool_options=dict(args.pool), seed=args.seed)
        from engine.pool.config import make_config

        make_config(None, config.pool_overrides())  # the pool's own validation, early
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    return config


def _setup_logging(verbose: int) -> None:
    # Chaos makes the pool log a warning per crash: useful when asked for, noise
    # on top of the live display otherwise.
    level = logging.ERROR if verbose == 0 else logging.WARNING if verbose == 1 else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _missing(exc: ModuleNotFoundError, package: str) -> bool:
    return exc.name is not None and (exc.name == package or exc.name.startswith(package + "."))


def _console() -> Console | None:
    """A rich console, or None on an install without the ``cli`` extra."""
    try:
        from rich.console import Console
    except ModuleNotFoundError as exc:
        if not _missing(exc, "rich"):
            raise
        return None
    console = Console()
    if not console.is_terminal:
        # Piped or redirected: no live view, and a width that keeps the tables
        # readable in a log file instead of rich's 80-column fallback.
        console = Console(width=110)
    return console


def run_stress_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import trio

    from engine.stress.runner import StressSetupError, run_stress
    from engine.stress.text import render_plain, render_rich

    config = _stress_config(args, parser)
    _setup_logging(args.verbose)
    console = _console()
    if console is None and not args.quiet and sys.stdout.isatty():
        print("engine stress: the live display needs rich: pip install 'engine[cli]' "
              "(showing the final report only)", file=sys.stderr)
    live = console if console is not None and console.is_terminal and not args.quiet else None
    try:
        if live is not None:
            from engine.stress.live import LiveDisplay

            with LiveDisplay(live) as display:
                report = trio.run(run_stress, config, display.update)
        else:
            report = trio.run(run_stress, config)
    except StressSetupError as exc:
        print(f"engine stress: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("engine stress: interrupted; the pool was closed", file=sys.stderr)
        return EXIT_INTERRUPTED
    # Files first: a closed stdout (``| head``) must not lose them.
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if args.html:
        from engine.stress.html import render_html

        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render_html(report))
    if console is None:
        render_plain(report, sys.stdout)
    else:
        render_rich(report, console)
    for kind, path in (("JSON", args.json), ("HTML", args.html)):
        if path:
            print(f"{kind} report: {path}")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def run_campaign(argv: Sequence[str]) -> int:
    import importlib

    try:
        campaign = importlib.import_module("engine.testing.campaign")
    except ModuleNotFoundError as exc:
        if _missing(exc, "hypothesis"):
            print("engine campaign: needs Hypothesis, which this install lacks: "
                  "pip install 'engine[testing]'", file=sys.stderr)
            return EXIT_USAGE
        if exc.name not in ("engine.testing.campaign", "engine.testing"):
            raise
        print("engine campaign: engine.testing.campaign is not available in this "
              "installation", file=sys.stderr)
        return EXIT_USAGE
    result = campaign.main(list(argv))
    return int(result or 0)


def _search_current_directory() -> None:
    """Find ``--app`` modules in the current directory, as ``python -m`` does
    (a console script's ``sys.path[0]`` is its own bin directory, so
    ``engine stress --app myapp`` next to ``myapp.py`` failed to import it).
    Workers inherit the parent's ``sys.path``, so they find it too."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``engine`` console script; returns the exit code."""
    _search_current_directory()
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The campaign has its own parser: hand it everything after the subcommand.
    if args_list and args_list[0] == "campaign":
        return run_campaign(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
        return run_stress_command(args, args.subparser)
    except SystemExit as exc:  # --help, --version, or a usage error (code 2)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return EXIT_USAGE
