"""The README's two set-up commands and CI agree (layer 1; reads the files).

A fresh machine needs exactly two commands: the main job (installs the ``cli``
extra, runs ``engine stress``) and the tests (installs ``test``, runs the
suite). ``.ci/run`` must install and run what the README's test command does,
so a green CI means the README's command works.
"""

from __future__ import annotations

import re
import shlex

import pytest

from tests.imports import REPO

pytestmark = pytest.mark.layer1

PYTEST = "TEST_MODE=full_integration .venv/bin/python -m pytest -q -p no:cacheprovider -n auto"


def readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Fresh machine: the two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def steps(command: str) -> list[str]:
    return [step.strip() for step in command.split("&&")]


def test_the_readme_has_exactly_two_one_line_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), commands


def test_the_main_job_installs_the_cli_extra_and_runs_stress_with_chaos() -> None:
    main_job = steps(readme_commands()[0])
    assert main_job[0] == "python3 -m venv .venv"
    assert shlex.split(main_job[1]) == [".venv/bin/pip", "install", "-q", "-e", ".[cli]"]
    assert main_job[-1] == ".venv/bin/engine stress --duration 10 --chaos"


def test_ci_installs_and_runs_exactly_the_readme_test_command() -> None:
    tests = steps(readme_commands()[1])
    assert tests[0] == "python3 -m venv .venv"
    assert shlex.split(tests[1]) == [".venv/bin/pip", "install", "-q", "-e", ".[test]"]
    assert tests[-1] == PYTEST
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert ".venv/bin/pip install --quiet -e '.[test]'" in ci_lines
    assert PYTEST in ci_lines
    # Collecting no tests is a failure, not a pass.
    assert 'if [ "$status" -eq 5 ]; then' in ci_lines
