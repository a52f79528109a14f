"""Mutation testing of engine's pure modules, with mutmut (issue 15).

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python tools/mutation.py                      # every module
    .venv/bin/python tools/mutation.py engine/protocol.py   # some modules

The modules and the tests that pin each one are listed in pyproject.toml,
``[tool.mutmut.engine-modules]``, one line per module. For each module this
script copies ``engine/`` and ``tests/`` into ``build/mutation/<module>/``,
writes mutmut's configuration there (``[tool.mutmut]`` plus that module as
``only_mutate`` and its tests as the test selection) and runs ``mutmut run``
under ``nice``, with Hypothesis' ``mutation`` profile (fixed examples, no
shrinking) and ``TEST_MODE=bridge_mock`` (layers 1-2). mutmut then runs each
mutant against those of the module's tests that execute the mutated function.

It prints, per module, the mutants killed (a time-out counts: the suite's time
limit turns a hang into a failure), the survivors accepted as equivalent (in
``tools/mutation-equivalents.txt``) and the survivors nobody reviewed, then
the run time. It exits 1 when a module scores below the bar:

    score = killed / (mutants - accepted equivalents) >= 90%

An equivalent is keyed by what the mutation does, not by mutmut's numbering
(which shifts when the function changes): ``<module>:<function>: <line> ->
<mutated line>``, with the reason after `` :: ``. Unreviewed survivors are
printed in that form, ready to paste once reviewed. To look at a mutant
yourself: ``cd build/mutation/<module> && ../../../.venv/bin/mutmut show NAME``
(or ``browse``).
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
from collections.abc import Iterator
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


def load_config() -> tuple[str, dict[str, list[str]]]:
    """The ``[tool.mutmut]`` section's text (for the scratch copies) and the module table."""
    text = (REPO / "pyproject.toml").read_text()
    section = tomllib.loads(text)["tool"]["mutmut"]
    modules = section.get("engine-modules")
    if not modules:
        raise SystemExit("pyproject.toml has no [tool.mutmut.engine-modules] table")
    for module, tests in modules.items():
        for path in [module, *tests]:
            if not (REPO / path).is_file():
                raise SystemExit(f"[tool.mutmut.engine-modules] names {path}, which does not exist")
    return text, modules


def load_equivalents() -> dict[str, str]:
    """``key -> reason`` from the equivalents file (``#`` comments, blank lines allowed)."""
    accepted: dict[str, str] = {}
    for number, line in enumerate(EQUIVALENTS.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, reason = line.rpartition(SEPARATOR)
        if not sep or not key.strip() or not reason.strip():
            raise SystemExit(f"{EQUIVALENTS.name}:{number}: expected "
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


def run_mutmut(workdir: Path, jobs: int, verbose: bool) -> None:
    mutmut = Path(sys.executable).parent / "mutmut"
    if not mutmut.exists():
        raise SystemExit(f"mutmut is not installed next to {sys.executable}: "
                         "pip install -e '.[mutation]'")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env.update(HYPOTHESIS_PROFILE="mutation", TEST_MODE="bridge_mock")
    log = workdir / "mutmut.log"
    with log.open("w") as out:
        proc = subprocess.run([str(mutmut), "run", "--max-children", str(jobs)], cwd=workdir,
                              env=env, stdout=None if verbose else out,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "" if verbose else log.read_text()[-3000:]
        raise SystemExit(f"mutmut failed in {workdir} (exit {proc.returncode}):\n{tail}")


def read_mutants(workdir: Path, module: str) -> list[Mutant]:
    meta = workdir / "mutants" / (module + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return [Mutant(name, code) for name, code in sorted(codes.items())]


def describe(workdir: Path, module: str, mutant: Mutant) -> str:
    """The mutant's stable key: module, function and the lines it changes."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(workdir)
    try:
        reset_config()
        diff = get_diff_for_mutant(mutant.name, path=module)
    finally:
        os.chdir(here)
    removed = [_squash(line[1:]) for line in _changes(diff, "-")]
    added = [_squash(line[1:]) for line in _changes(diff, "+")]
    function = mutant.name.rpartition(".")[2].rpartition("__mutmut_")[0]
    function = function.removeprefix("x_").replace("xǁ", "").replace("ǁ", ".")
    return f"{module}:{function}: {' / '.join(removed)} -> {' / '.join(added)}"


def _changes(diff: str, sign: str) -> Iterator[str]:
    for line in diff.splitlines():
        if line.startswith(sign) and not line.startswith(sign * 3):
            yield line


def _squash(code: str) -> str:
    return re.sub(r"\s+", " ", code).strip()


def run_module(module: str, tests: list[str], pyproject: str, jobs: int,
               verbose: bool, accepted: dict[str, str]) -> ModuleResult:
    workdir = SCRATCH / module_slug(module)
    start = time.monotonic()
    prepare(workdir, scratch_pyproject(pyproject, module, tests))
    run_mutmut(workdir, jobs, verbose)
    seconds = time.monotonic() - start
    result = ModuleResult(module, read_mutants(workdir, module), seconds)
    for mutant in result.mutants:
        if mutant.code is None:
            raise SystemExit(f"mutmut left {mutant.name} unchecked; see {workdir}/mutmut.log")
        if mutant.killed:
            continue
        mutant.key = describe(workdir, module, mutant)
        if mutant.key in accepted:
            result.equivalent.append((mutant, accepted[mutant.key]))
        else:
            result.unreviewed.append(mutant)
    return result


# --- report ------------------------------------------------------------------------


def report(results: list[ModuleResult], accepted: dict[str, str], seconds: float) -> bool:
    ok = True
    print(f"\n{'module':<28} {'mutants':>7} {'killed':>6} {'equiv':>5} {'survived':>8} "
          f"{'score':>6} {'time':>6}")
    for r in results:
        passed = r.score >= BAR
        ok &= passed
        print(f"{r.path:<28} {len(r.mutants):>7} {r.killed:>6} {len(r.equivalent):>5} "
              f"{len(r.unreviewed):>8} {r.score:>6.1%} {r.seconds:>5.0f}s"
              + ("" if passed else f"  BELOW {BAR:.0%}"))
    equivalents = [pair for r in results for pair in r.equivalent]
    if equivalents:
        print(f"\nSurvivors accepted as equivalent ({len(equivalents)}, {EQUIVALENTS.name}):")
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
        print(f"\nEntries of {EQUIVALENTS.name} that match no survivor (remove them):")
        for key in stale:
            print(f"  {key}")
    print(f"\nmutation run: {seconds:.0f}s wall, bar {BAR:.0%} per module: "
          + ("passed" if ok else "FAILED"))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all listed)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="mutants tested in parallel (default: CPU count)")
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
    results = []
    for module in args.modules or list(table):
        print(f"mutating {module} ...", flush=True)
        results.append(run_module(module, table[module], pyproject, args.jobs, args.verbose,
                                  accepted))
    return 0 if report(results, accepted, time.monotonic() - start) else 1


if __name__ == "__main__":
    sys.exit(main())
