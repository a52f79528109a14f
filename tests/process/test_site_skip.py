"""Workers skip ``site`` (``python -S``) only when nothing it runs is needed
(issue 17: pool start-up; engine.process.site_skip)."""

from __future__ import annotations

import site
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import engine
from engine.process.handle import SpawnRequest
from engine.process.site_skip import pth_runs_code, site_runs_code, skips_site
from engine.process.spawn import build_argv, parent_sys_path

HANG_GUARD = 30.0


def request(**fields: object) -> SpawnRequest:
    return SpawnRequest(worker_id="w-0.1", app="a", start_timeout=1.0, **fields)  # type: ignore[arg-type]


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site-packages of our own, read afresh (the real answer is cached)."""
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path)])
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)
    site_runs_code.cache_clear()
    yield tmp_path
    site_runs_code.cache_clear()


@pytest.mark.layer1
@pytest.mark.parametrize("lines, coverage, runs", [
    ("/some/path\n../relative\n# a comment\n", False, False),
    ("import thirdparty_hook; thirdparty_hook.install()\n", False, True),
    ("import\tos\n", False, True),
    ("importable/dir\n", False, False),  # a path entry, not an import line
    ("import os; os.getenv('COVERAGE_PROCESS_START') and 1\n", False, False),
    ("import os; os.getenv('COVERAGE_PROCESS_START') and 1\n", True, True),
])
def test_pth_lines(tmp_path: Path, lines: str, coverage: bool, runs: bool) -> None:
    path = tmp_path / "some.pth"
    path.write_text(lines)
    assert pth_runs_code(str(path), coverage) is runs


@pytest.mark.layer1
@pytest.mark.parametrize("name", ["distutils-precedence.pth", "__editable__.engine-0.1.0.pth"])
def test_known_harmless_pth_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("import whatever; whatever.run()\n")
    assert not pth_runs_code(str(path), coverage=True)


@pytest.mark.layer1
def test_a_pth_import_line_keeps_site(site_dir: Path) -> None:
    (site_dir / "paths.pth").write_text("/extra/path\n")
    assert not site_runs_code(False)
    site_runs_code.cache_clear()
    (site_dir / "hook.pth").write_text("import somehook; somehook.install()\n")
    assert site_runs_code(False)


@pytest.mark.layer1
def test_a_sitecustomize_keeps_site(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not site_runs_code(False)
    site_runs_code.cache_clear()
    monkeypatch.setitem(sys.modules, "sitecustomize", sys)
    assert site_runs_code(False)


@pytest.mark.layer1
def test_coverage_of_subprocesses_keeps_site(site_dir: Path) -> None:
    (site_dir / "a1_coverage.pth").write_text(
        "import os; os.getenv('COVERAGE_PROCESS_START') and __import__('coverage')\n")
    plain = request()
    sys_path = parent_sys_path(plain)
    assert skips_site(plain, {}, sys_path) or sys.flags.no_site
    assert not skips_site(plain, {"COVERAGE_PROCESS_START": "/x/.coveragerc"}, sys_path) \
        or sys.flags.no_site


@pytest.mark.layer1
def test_only_this_interpreter_with_the_parents_sys_path_skips_site(site_dir: Path) -> None:
    plain = request()
    assert skips_site(plain, {}, parent_sys_path(plain))
    assert "-S" in build_argv(plain)
    # Another interpreter, or this one named explicitly (the way to ask for a
    # full site), or a worker that keeps its own sys.path: as usual.
    for python in (("/opt/other/python3",), (sys.executable,)):
        other = request(python=python)
        assert not skips_site(other, {}, parent_sys_path(other))
        assert "-S" not in build_argv(other)
    assert not skips_site(plain, {}, None)
    own = request(inherit_sys_path=False)
    assert "-S" not in build_argv(own)


APP_SOURCE = """\
    import os
    import sys

    from engine.workers.app import App

    app = App("sited")

    @app.command()
    def started(args, ctx):
        import attrs  # from site-packages: the parent's sys.path has it
        return {"no_site": sys.flags.no_site, "prefix": sys.prefix,
                "exec_prefix": sys.exec_prefix, "exit": callable(exit),
                "quit": callable(quit), "attrs": attrs.__name__,
                "variable": os.environ.get("ENGINE_WORKER_PREFIX")}
"""


@pytest.mark.layer3
@pytest.mark.parametrize("python", [(), (sys.executable,)])
async def test_a_worker_started_either_way_looks_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: tuple[str, ...]) -> None:
    (tmp_path / "sited_app.py").write_text(textwrap.dedent(APP_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    expected_no_site = int(skips_site(request(python=python), {}, ""))
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app="sited_app", size=1, python=python) as pool:
            await pool.wait_ready(1, timeout=20)
            answer = await pool.call("started")
    assert answer == {"no_site": expected_no_site, "prefix": sys.prefix,
                      "exec_prefix": sys.exec_prefix, "exit": True, "quit": True,
                      "attrs": "attrs", "variable": None}
