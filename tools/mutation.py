"""Mutation testing of engine's pure modules, with mutmut (issue 15).

    .venv/bin/pip install -e '.[test,mutation]'
    .venv/bin/python tools/mutation.py                      # every module
    .venv/bin/python tools/mutation.py engine/protocol.py   # some modules

The modules and the tests that pin each one are listed in pyproject.toml,
``[tool.mutmut.engine-modules]``: adding a module is adding one line there.
For each module this script copies ``engine/`` and ``tests/`` into
``build/mutation/<module>/``, writes mutmut's configuration there
(``[tool.mutmut]`` plus that module as ``only_mutate`` and its tests as the
test selection) and runs ``mutmut run`` under ``nice``, with Hypothesis'
``mutation`` profile (fixed examples, no shrinking) and
``TEST_MODE=bridge_mock`` (layers 1-2). mutmut runs each mutant against those
of the module's tests that execute the mutated function. ``--jobs`` modules
(default: one per CPU) are mutated at once; every run starts from scratch, so
a verdict never comes from an older version of the code or the tests.
Mutants accepted as equivalent are not run (they cannot die, and they cost
the most: every test of their function passes); ``--recheck`` runs them too
and reports the entries a test now kills.

It prints, per module, the mutants, those killed (a time-out counts: the
suite's time limit turns a hang into a failure), the survivors accepted as
equivalent (``tools/mutation-equivalents.txt``), the survivors nobody has
reviewed, the raw and the scored kill ratio, and the wall and CPU time; then
the accepted equivalents, the unreviewed survivors and the entries of the
equivalents file that matched nothing (stale: remove them). It exits 1 when a
module scores below the bar:

    score = killed / (mutants - accepted equivalents) >= 90%

An equivalent is keyed by what the mutation does, not by mutmut's numbering
(which shifts when the function changes): ``<module>:<function>: <line> ->
<mutated line>``, with the reason after `` :: ``; the same change made at two
places of one function is told apart by `` #2`` (and so on, in source order)
after the second's key. Unreviewed survivors are
printed in that form, ready to paste once reviewed. To look at a mutant
yourself: ``cd build/mutation/<module> && ../../../.venv/bin/mutmut show NAME``
(or ``browse``).

One trap: mutmut switches mutants on when a function is *called*, so code
that only runs at import (a module-level call, a validator factory evaluated
in a class body) keeps its original behaviour under every mutant. Its
mutants survive until a test calls that function itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRATCH = REPO / "build" / "mutation"
EQUIVALENTS = REPO / "tools" / "mutation-equivalents.txt"
BAR = 0.90
SEPARATOR = " :: "

# mutmut's exit codes for a mutant (mutmut.stats.status_by_exit_code), as verdicts
# here: a failing test run is a kill, and so is a run stopped for exceeding its
# CPU budget (SIGXCPU, then SIGKILL): the suite's time limit fails a hang too.
KILLED_CODES = {1, 3, 36, 24, -24, 152, 255, -9}
STATUS_BY_CODE = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


@dataclass
class Mutant:
    name: str
    code: int | None
    key: str = ""

    @property
    def killed(self) -> bool:
        return self.code in KILLED_CODES

    @property
    def status(self) -> str:
        return "killed" if self.killed else STATUS_BY_CODE.get(self.code, f"exit {self.code}")


@dataclass
class ModuleResult:
    path: str
    mutants: list[Mutant]
    seconds: float
    cpu: float
    equivalent: list[tuple[Mutant, str]] = field(default_factory=list)
    unreviewed: list[Mutant] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(m.killed for m in self.mutants)

    @property
    def score(self) -> float:
        scored = len(self.mutants) - len(self.equivalent)
        return self.killed / scored if scored else 1.0


# --- configuration -------------------------------------------------------------


def load_config(repo: Path = REPO) -> tuple[str, dict[str, list[str]]]:
    """pyproject.toml's text (for the scratch copies) and the module table."""
    text = (repo / "pyproject.toml").read_text()
    section = tomllib.loads(text)["tool"]["mutmut"]
    modules = section.get("engine-modules")
    if not modules:
        raise SystemExit("pyproject.toml has no [tool.mutmut.engine-modules] table")
    for module, tests in modules.items():
        for path in [module, *tests]:
            if not (repo / path).is_file():
                raise SystemExit(f"[tool.mutmut.engine-modules] names {path}, which does not exist")
    return text, modules


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """``key -> reason`` from the equivalents file (``#`` comments, blank lines allowed)."""
    accepted: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, reason = line.rpartition(SEPARATOR)
        if not sep or not key.strip() or not reason.strip():
            raise SystemExit(f"{path.name}:{number}: expected "
                             f"'<mutant>{SEPARATOR}<reason>', got {line!r}")
        accepted[key.strip()] = reason.strip()
    return accepted


def scratch_pyproject(text: str, module: str, tests: list[str]) -> str:
    # mutmut reads its settings from ./pyproject.toml; add this run's two lists to
    # the section (JSON string arrays are valid TOML).
    extra = (f"only_mutate = {json.dumps([module])}\n"
             f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n")
    return text.replace("[tool.mutmut]\n", "[tool.mutmut]\n" + extra, 1)


# --- running mutmut ----------------------------------------------------------------


def module_slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def prepare(workdir: Path, pyproject: str) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("engine", "tests"):
        shutil.copytree(REPO / name, workdir / name, ignore=ignore)
    (workdir / "pyproject.toml").write_text(pyproject)


# Run in a scratch copy: mutmut's own first step (copy the sources, write the
# mutants), then every mutant's diff to mutants/diffs.json. mutmut's internals,
# hence the pinned minor version; `mutmut run` afterwards finds the mutants
# written and does not write them again.
GENERATE = """
import json, sys
import mutmut.__main__ as mutmut
from mutmut.mutation.data import SourceFileMutationData
from mutmut.mutation.diff_apply import get_diff_for_mutant
mutmut.set_mutant_under_test("mutant_generation")
mutmut.makedirs("mutants", exist_ok=True)
mutmut.copy_src_dir()
mutmut.copy_also_copy_files()
mutmut.setup_source_paths()
mutmut.create_mutants(1)
data = SourceFileMutationData(path=sys.argv[1])
data.load()
with open("mutants/diffs.json", "w") as out:
    json.dump({name: get_diff_for_mutant(name, path=sys.argv[1])
               for name in data.exit_code_by_key}, out)
"""


def mutmut_command() -> Path:
    mutmut = Path(sys.executable).parent / "mutmut"
    if not mutmut.exists():
        raise SystemExit(f"mutmut is not installed next to {sys.executable}: "
                         "pip install -e '.[test,mutation]'")
    return mutmut


def run_logged(command: list[str], workdir: Path, log: Path, verbose: bool) -> float:
    """Run ``command`` in ``workdir``; return the CPU seconds it and its children used."""
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(HYPOTHESIS_PROFILE="mutation", TEST_MODE="bridge_mock")
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env,
                                stdout=None if verbose else out, stderr=subprocess.STDOUT)
        # wait4: the CPU time of this process and of the mutant processes it reaped.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "" if verbose else log.read_text()[-3000:]
        raise SystemExit(f"{command[1]} failed in {workdir} (exit {proc.returncode}):\n{tail}")
    return usage.ru_utime + usage.ru_stime


def mutant_key(module: str, name: str, diff: str) -> str:
    """``<module>:<function>: <removed lines> -> <added lines>``, whitespace squashed.

    ``name`` is mutmut's (``engine.protocol.xǁFrameDecoderǁfeed__mutmut_3``): the
    function is read from it, the number dropped.
    """
    lines = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
    removed = [_squash(line[1:]) for line in lines if line.startswith("-")]
    added = [_squash(line[1:]) for line in lines if line.startswith("+")]
    function = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    function = function.removeprefix("x_").replace("xǁ", "").replace("ǁ", ".")
    return f"{module}:{function}: {' / '.join(removed)} -> {' / '.join(added)}"


def keyed_mutants(module: str, diffs: dict[str, str]) -> list[Mutant]:
    """Mutmut's mutants (name -> diff) with their keys, in mutmut's order.

    Two mutations of a function can make the same change to the same text (a
    ``return True`` that occurs twice): the first keeps the plain key, the
    later ones get `` #2``, `` #3``... in source order, so that each can be
    accepted (or not) on its own.
    """
    def order(name: str) -> tuple[str, int]:
        function, _, number = name.rpartition("__mutmut_")
        return function, int(number) if number.isdigit() else 0

    seen: dict[str, int] = {}
    out = []
    for name in sorted(diffs, key=order):
        key = mutant_key(module, name, diffs[name])
        seen[key] = count = seen.get(key, 0) + 1
        out.append(Mutant(name, None, key if count == 1 else f"{key} #{count}"))
    return out


def _squash(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


def run_module(module: str, tests: list[str], pyproject: str, accepted: dict[str, str],
               recheck: bool, verbose: bool) -> ModuleResult:
    """Mutate one module in its scratch copy; mutants are tested one at a time.

    Mutants accepted as equivalent are not run unless ``recheck``: they cannot
    be killed, and they are the most expensive ones (every test of their
    function passes).
    """
    workdir = SCRATCH / module_slug(module)
    start = time.monotonic()
    prepare(workdir, scratch_pyproject(pyproject, module, tests))
    mutmut = mutmut_command()
    python = str(Path(sys.executable))
    cpu = run_logged([python, "-c", GENERATE, module], workdir, workdir / "generate.log", verbose)
    diffs: dict[str, str] = json.loads((workdir / "mutants" / "diffs.json").read_text())
    mutants = keyed_mutants(module, diffs)
    chosen = [m.name for m in mutants if recheck or m.key not in accepted]
    if chosen:
        # Names are given only when some are left out: a full run needs none.
        names = chosen if len(chosen) < len(mutants) else []
        cpu += run_logged([str(mutmut), "run", "--max-children", "1", *names], workdir,
                          workdir / "mutmut.log", verbose)
        meta = json.loads((workdir / "mutants" / (module + ".meta")).read_text())
        for mutant in mutants:
            mutant.code = meta["exit_code_by_key"][mutant.name]
    return ModuleResult(module, mutants, time.monotonic() - start, cpu)


def review(result: ModuleResult, accepted: dict[str, str]) -> None:
    """Sort the module's survivors into accepted equivalents and unreviewed ones."""
    for mutant in result.mutants:
        if mutant.killed:
            continue
        if mutant.key in accepted:
            result.equivalent.append((mutant, accepted[mutant.key]))
        elif mutant.code is None:
            raise SystemExit(f"mutmut left {mutant.name} unchecked; see "
                             f"{SCRATCH / module_slug(result.path)}/mutmut.log")
        else:
            result.unreviewed.append(mutant)


# --- report ------------------------------------------------------------------------


def report(results: list[ModuleResult], accepted: dict[str, str], seconds: float,
           recheck: bool) -> bool:
    ok = True
    print(f"\n{'module':<28} {'mutants':>7} {'killed':>6} {'equiv':>5} {'survived':>8} "
          f"{'raw':>6} {'score':>6} {'wall':>5} {'CPU':>5}")
    for r in results:
        passed = r.score >= BAR
        ok &= passed
        print(f"{r.path:<28} {len(r.mutants):>7} {r.killed:>6} {len(r.equivalent):>5} "
              f"{len(r.unreviewed):>8} {r.killed / len(r.mutants):>6.1%} {r.score:>6.1%} "
              f"{r.seconds:>4.0f}s {r.cpu:>4.0f}s"
              + ("" if passed else f"  BELOW {BAR:.0%}"))
    equivalents = [pair for r in results for pair in r.equivalent]
    if equivalents:
        rerun = "re-run, survived" if recheck else "not re-run; --recheck runs them"
        print(f"\nMutants accepted as equivalent ({len(equivalents)}, {EQUIVALENTS.name}; "
              f"{rerun}):")
        for mutant, reason in equivalents:
            print(f"  {mutant.key}\n      {reason}")
    unreviewed = [m for r in results for m in r.unreviewed]
    if unreviewed:
        print(f"\nSurvivors not reviewed ({len(unreviewed)}): kill each with a test, or add it "
              f"to {EQUIVALENTS.name} with the reason it cannot be killed:")
        for mutant in unreviewed:
            print(f"  [{mutant.status}] {mutant.name}\n  {mutant.key}{SEPARATOR}<reason>")
    ran = {r.path for r in results}
    matched = {m.key for r in results for m, _ in r.equivalent}
    stale = [key for key in accepted if key.partition(":")[0] in ran and key not in matched]
    if stale:
        print(f"\nEntries of {EQUIVALENTS.name} that match no surviving mutant (remove them):")
        for key in stale:
            print(f"  {key}")
    cpu = sum(r.cpu for r in results)
    print(f"\nmutation run: {seconds:.0f}s wall, {cpu:.0f}s CPU; bar {BAR:.0%} per module: "
          + ("passed" if ok else "FAILED"))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all listed)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="modules mutated in parallel (default: CPU count)")
    parser.add_argument("--recheck", action="store_true",
                        help="run the accepted equivalents too, to find entries a test now "
                             "kills (slower)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show mutmut's output")
    args = parser.parse_args(argv)
    pyproject, table = load_config()
    unknown = [m for m in args.modules if m not in table]
    if unknown:
        parser.error(f"not in [tool.mutmut.engine-modules]: {', '.join(unknown)}; "
                     f"known: {', '.join(table)}")
    accepted = load_equivalents()
    os.nice(10)  # a shared machine: mutants yield to everything else
    start = time.monotonic()
    modules = args.modules or list(table)
    print(f"mutating {len(modules)} module(s), {args.jobs} at a time: {', '.join(modules)}",
          flush=True)
    # One mutmut per module, each testing one mutant at a time, `jobs` modules at
    # once: mutmut's own start (mutant generation, a stats run and a clean run of
    # the tests) is serial, so this keeps every core busy where --max-children
    # would leave all but one idle during it.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_module, m, table[m], pyproject, accepted, args.recheck,
                               args.verbose) for m in modules]
        results = [future.result() for future in futures]
    for result in results:
        review(result, accepted)
    return 0 if report(results, accepted, time.monotonic() - start, args.recheck) else 1


if __name__ == "__main__":
    sys.exit(main())
