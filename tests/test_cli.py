"""The ``engine`` command line: help, usage errors, the campaign hand-off."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.layer1


def test_python_dash_m_engine_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "engine", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "stress" in proc.stdout and "campaign" in proc.stdout


def test_console_script_stress_help() -> None:
    script = shutil.which("engine", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the engine console script is not installed in this environment")
    proc = subprocess.run([script, "stress", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--workers", "--clients", "--duration", "--calls", "--kill-every",
                   "--mix", "--chaos", "--json", "--html", "--seed"):
        assert option in proc.stdout
    assert "invariants checked at the end" in proc.stdout


@pytest.mark.layer3
def test_an_app_module_in_the_current_directory_is_found(tmp_path: Path) -> None:
    """``engine stress --app myapp`` next to ``myapp.py`` (a console script's
    sys.path does not hold the current directory; ``python -m`` does): the
    parent and its workers find it (new-user audit)."""
    script = shutil.which("engine", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the engine console script is not installed in this environment")
    (tmp_path / "myapp_in_cwd.py").write_text(
        "from engine.workers.programs import app  # the default app's commands\n")
    proc = subprocess.run([script, "stress", "--app", "myapp_in_cwd", "--workers", "1",
                           "--clients", "2", "--calls", "20", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine stress: PASS" in proc.stdout


def test_stress_help_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stress", "--help"]) == 0
    out = capsys.readouterr().out
    assert "call kinds" in out and "garbage" in out and "examples:" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["stress", "--workers", "0"], "--workers: must be at least 1"),
    (["stress", "--clients", "many"], "--clients: expected a whole number"),
    (["stress", "--duration", "-3"], "--duration: must be a finite number > 0"),
    (["stress", "--mix", "anon=60,bogus=5"], "unknown call kind 'bogus'"),
    (["stress", "--mix", "anon=0"], "at least one kind needs a weight above 0"),
    (["stress", "--kill-every", "0"], "--kill-every: must be a finite number > 0"),
    (["stress", "--restart-backoff", "1"], "expected MIN,MAX"),
    (["stress", "--pool", "no_such_field=1"], "unknown PoolConfig field(s): 'no_such_field'"),
    (["stress", "--pool", "cancel_grce=1"],
     "unknown PoolConfig field(s): 'cancel_grce' (did you mean 'cancel_grace'?)"),
    (["stress", "--pool", "size=3"], "use --workers"),
    (["stress", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["stress", "--json", "/nonexistent/dir/r.json"],
     "--json /nonexistent/dir/r.json: the folder /nonexistent/dir does not exist"),
    (["stress", "--html", "/"], "--html /: is a directory; give a file name"),
    (["stress", "--sessions", "0"], "the session kind needs sessions: --sessions 0 leaves it "
                                    "none"),
    (["launch"], "invalid choice: 'launch'"),
    ([], "required: COMMAND"),
])
def test_bad_options_exit_2_with_a_clear_message(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "usage: engine" in err


def test_campaign_is_handed_the_rest_of_the_arguments(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("engine.testing.campaign")

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.testing.campaign", fake)
    assert main(["campaign", "--examples", "5", "myapp"]) == 7
    assert seen == [["--examples", "5", "myapp"]]


def test_campaign_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # None in sys.modules makes the import fail as if the module did not exist.
    monkeypatch.setitem(sys.modules, "engine.testing.campaign", None)
    assert main(["campaign"]) == 2
    assert "engine.testing.campaign is not available" in capsys.readouterr().err
