"""Workers import their app with the parent's ``sys.path`` (issue 18, point 2).

An app the parent can import only through its script's folder or a
``sys.path.insert`` loads in every worker, as multiprocessing users expect.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import trio

import engine
from engine.errors import WorkerStartError
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker, parent_sys_path
from engine.workers.runtime import SYS_PATH_VARIABLE

HANG_GUARD = 30.0
REPO = Path(__file__).resolve().parents[2]

APP_SOURCE = """\
    import os
    import sys

    from engine.workers.app import App

    app = App("pathed")

    @app.command()
    def sys_path(args, ctx):
        return sys.path

    @app.command()
    def variable(args, ctx):
        return os.environ.get(args)
"""


def write_app(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(APP_SOURCE))
    return directory


# --- layer 1: what the parent passes ---------------------------------------------


@pytest.mark.layer1
def test_the_parent_passes_its_sys_path_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = ["/a:b/with" + os.pathsep + "separator", "relative/dir", "", "/ünï/cödé"]
    monkeypatch.setattr(sys, "path", [*odd, Path("/as/a/path"), b"/as/bytes", 42])
    request = SpawnRequest(worker_id="w", app="a", start_timeout=1.0)
    value = parent_sys_path(request)
    assert value is not None
    assert json.loads(value) == [*odd, "/as/a/path", "/as/bytes"]  # 42: not a path entry


@pytest.mark.layer1
@pytest.mark.parametrize("changes", [{"inherit_sys_path": False},
                                     {"python": ("/opt/other/bin/python3",)}])
def test_no_sys_path_for_a_launcher_that_opts_out_or_another_interpreter(
        changes: dict[str, object]) -> None:
    request = attrs.evolve(SpawnRequest(worker_id="w", app="a", start_timeout=1.0), **changes)
    assert parent_sys_path(request) is None
    same = SpawnRequest(worker_id="w", app="a", start_timeout=1.0, python=(sys.executable,))
    assert parent_sys_path(same) is not None


@pytest.mark.layer1
def test_a_sys_path_too_long_for_the_environment_is_not_passed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "path", ["/x" * 1000] * 60)
    with caplog.at_level(logging.WARNING, logger="engine.worker"):
        assert parent_sys_path(SpawnRequest(worker_id="w-0.1", app="a",
                                            start_timeout=1.0)) is None
    assert "worker w-0.1 keeps its own sys.path" in caplog.text


# --- layer 3: real workers ---------------------------------------------------------


@pytest.mark.layer3
async def test_an_app_found_through_sys_path_insert_loads_in_every_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder name with the path separator in it: PYTHONPATH could not say it.
    folder = write_app(tmp_path / f"apps{os.pathsep}here", "pathed_app_insert")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "missing")])  # harmless
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app="pathed_app_insert", size=2) as pool:
            await pool.wait_ready(2, timeout=20)
            async with pool.checkout() as first, pool.checkout() as second:
                assert first.worker_id != second.worker_id
                for lease in (first, second):
                    assert await lease.call("sys_path") == sys.path
                    # Read and removed: the worker's own children never see it.
                    assert await lease.call("variable", SYS_PATH_VARIABLE) is None


@pytest.mark.layer3
async def test_a_script_folders_app_loads_in_workers(tmp_path: Path) -> None:
    folder = write_app(tmp_path / "project", "pathed_app_script")
    (folder / "main.py").write_text(textwrap.dedent("""\
        import trio
        import engine

        async def main():
            async with engine.open_pool(app="pathed_app_script", size=1) as pool:
                print(len(await pool.call("sys_path")))

        trio.run(main)
    """))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with trio.fail_after(HANG_GUARD):
        done = await trio.run_process([sys.executable, str(folder / "main.py")], cwd=elsewhere,
                                      env=env, capture_stdout=True, capture_stderr=True,
                                      check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert int(done.stdout) > 1


@pytest.mark.layer3
async def test_without_inheritance_the_worker_keeps_its_own_sys_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(write_app(tmp_path, "pathed_app_private")))
    request = SpawnRequest(worker_id="own-0.1", app="pathed_app_private", start_timeout=10.0,
                           inherit_sys_path=False)
    with trio.fail_after(HANG_GUARD):
        with pytest.raises(WorkerStartError, match="ModuleNotFoundError"):
            async with open_process_worker(request):
                pass
        async with open_process_worker(attrs.evolve(request, inherit_sys_path=True)) as worker:
            assert await worker.call("sys_path") == sys.path
