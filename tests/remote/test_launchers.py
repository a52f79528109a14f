"""Launchers without a far end (layer 1): the command a remote launcher runs,
its validation, per-slot launchers in PoolConfig, and the reports it shapes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any

import attrs
import pytest

import engine
from engine.errors import WorkerCrashed, WorkerStartError
from engine.pool.config import PoolConfig, make_config, spawn_request
from engine.pool.core import CoreCounts
from engine.pool.introspection import PoolStatistics, placement
from engine.process.handle import SpawnRequest
from engine.process.launch import Launcher
from engine.process.spawn import _child_env, build_argv, parent_sys_path
from engine.workers.runtime import SYS_PATH_VARIABLE

pytestmark = pytest.mark.layer1

RUNTIME_ARGS = ["--app", "a", "--worker-id", "w"]


def test_ssh_launcher_quotes_the_far_command_into_one_argument() -> None:
    ssh = Launcher.ssh("user@db1", options=("-p", "2222"), python="/opt/py 3/bin/python",
                       workdir="/srv/my app", env={"PYTHONPATH": "/srv/my app", "X": "a'b"})
    argv = ssh.command(RUNTIME_ARGS)
    assert argv[:-1] == ["ssh", "-T", "-e", "none", "-o", "BatchMode=yes", "-p", "2222",
                         "user@db1"]
    # The remote shell splits the one string back into the far end's argv.
    assert shlex.split(argv[-1]) == [
        "sh", "-c", 'cd -- "$0" && exec "$@"', "/srv/my app",
        "env", "PYTHONPATH=/srv/my app", "X=a'b",
        "/opt/py 3/bin/python", "-m", "engine.workers.runtime", *RUNTIME_ARGS]
    assert ssh.label == "ssh user@db1" and ssh.failure_status == 255


def test_an_argv_launcher_passes_the_far_command_as_is() -> None:
    kubectl = Launcher(argv=["kubectl", "exec", "-i", "worker-0", "--"], env={"A": "1"})
    assert kubectl.command(RUNTIME_ARGS) == [
        "kubectl", "exec", "-i", "worker-0", "--", "env", "A=1",
        "python3", "-m", "engine.workers.runtime", *RUNTIME_ARGS]
    bare = Launcher(argv=("srun", "-N1"), python=("python3.11", "-X", "utf8"))
    assert bare.command(RUNTIME_ARGS) == [
        "srun", "-N1", "python3.11", "-X", "utf8", "-m", "engine.workers.runtime",
        *RUNTIME_ARGS]
    assert bare.label == "srun -N1"


def test_pool_env_goes_to_the_far_end_under_the_launchers() -> None:
    launcher = Launcher(argv=("x",), env={"A": "launcher"})
    argv = launcher.command([], extra_env={"A": "pool", "B": "pool"})
    assert argv[1:4] == ["env", "A=launcher", "B=pool"]


def test_the_cd_wrapper_runs_in_a_posix_shell(tmp_path: Any) -> None:
    # The far end's wrapper, run here: it changes directory (a name with a
    # space and a leading dash) and execs the command with its environment.
    target = tmp_path / "-my dir"
    target.mkdir()
    launcher = Launcher(argv=("env",), workdir=str(target), env={"SEEN": "yes"},
                        python=(sys.executable,))
    argv = launcher.command([])
    program = argv.index("-m")
    argv[program:] = ["-c", "import os; print(os.getcwd(), os.environ['SEEN'])"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.split() == [*str(target).split(), "yes"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"argv": ()}, "Launcher.argv must be a non-empty sequence"),
    ({"argv": ("ssh", "")}, "Launcher.argv"),
    ({"argv": ("x",), "python": ()}, "Launcher.python"),
    ({"argv": ("x",), "env": {"1X": "v"}}, "not an environment variable name"),
    ({"argv": ("x",), "env": {"A": 1}}, r"Launcher.env\['A'\] must be a string"),
    ({"argv": ("x",), "env": ["A=1"]}, "Launcher.env must map"),
    ({"argv": ("x",), "workdir": ""}, "Launcher.workdir"),
    ({"argv": ("x",), "shell": "yes"}, "Launcher.shell must be True or False"),
    ({"argv": ("x",), "failure_status": 256}, "failure_status"),
])
def test_bad_launchers_are_refused_clearly(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Launcher(**kwargs)


@pytest.mark.parametrize(("destination", "options"), [("", ()), ("-oProxyCommand=x", ()),
                                                      ("db1", "-p 22")])
def test_bad_ssh_arguments_are_refused(destination: str, options: Any) -> None:
    with pytest.raises(ValueError, match=r"Launcher\.ssh"):
        Launcher.ssh(destination, options=options)


def test_describe_exit_tells_the_launchers_failure_from_the_workers() -> None:
    ssh = Launcher.ssh("db1")
    assert ssh.describe_exit(3, None) == "'ssh db1' reported the remote command's exit status 3"
    assert ssh.describe_exit(255, None).startswith(
        "'ssh db1' exited with status 255: ssh's own failure (connection or authentication)")
    assert ssh.describe_exit(None, 9) == ("the local launcher 'ssh db1' was killed by SIGKILL; "
                                          "the remote worker ends when its stdin closes")


def test_reports_name_the_remote_launcher_and_host() -> None:
    crash = WorkerCrashed(worker_id="p-0.1", pid=77, exit_code=255, host="db1",
                          launcher="ssh db1", detail="why", stderr_tail=("boom",))
    assert str(crash).startswith(
        "worker p-0.1 (pid 77 on db1, a remote worker started through 'ssh db1') "
        "exited with code 255 (why); last stderr: 'boom'")
    assert (crash.host, crash.launcher) == ("db1", "ssh db1")
    local = WorkerCrashed(worker_id="p-0.1", pid=77, exit_code=1)
    assert str(local).startswith("worker p-0.1 (pid 77) exited with code 1")
    start = WorkerStartError("no hello", worker_id="p-0.1", launcher="ssh db1")
    assert str(start).startswith(
        "worker p-0.1 (a remote worker started through 'ssh db1') failed to start: no hello")


# --- PoolConfig and SpawnRequest ---------------------------------------------------------


def test_per_slot_launchers_from_a_sequence_or_a_callable() -> None:
    ssh = Launcher.ssh("db1")
    config = PoolConfig(size=3, launchers=[(), ["nice"], ssh])
    assert [config.launcher_for(i) for i in range(3)] == [(), ("nice",), ssh]
    requests = [spawn_request(config, "p", slot, 1) for slot in range(3)]
    assert [r.remote for r in requests] == [None, None, ssh]

    asked: list[int] = []

    def choose(slot: int) -> Any:
        asked.append(slot)
        return Launcher.ssh(f"db{slot % 2}")

    config = PoolConfig(size=4, launchers=choose)
    assert asked == [0, 1, 2, 3]  # once per slot, when the config is built
    assert [config.launcher_for(i).label for i in range(4)] == [  # type: ignore[union-attr]
        "ssh db0", "ssh db1", "ssh db0", "ssh db1"]
    # Another size asks again, for every slot of the new size.
    assert make_config(config, {"size": 2}).launcher_for(1).label == "ssh db1"  # type: ignore[union-attr]
    assert asked == [0, 1, 2, 3, 0, 1]


def test_a_single_launcher_may_be_remote_too() -> None:
    ssh = Launcher.ssh("db1")
    config = PoolConfig(size=2, launcher=ssh)
    assert spawn_request(config, "p", 1, 1).remote is ssh


@pytest.mark.parametrize(("config", "match"), [
    ({"size": 2, "launchers": [()]}, "has 1 entries for size=2"),
    ({"size": 1, "launchers": ["ssh db1"]}, r"launchers\[0\] must be a tuple of strings"),
    ({"size": 1, "launchers": "ssh"}, "must be a sequence with one launcher per slot"),
    ({"size": 1, "launchers": [()], "launcher": ("nice",)}, "both set"),
    ({"size": 2, "launchers": lambda slot: 42}, r"launchers\(0\) must be"),
    ({"size": 2, "launchers": lambda slot: [][slot]}, r"launchers\(0\) raised IndexError"),
    ({"launcher": "ssh db1"}, "PoolConfig.launcher must be"),
    ({"launcher": ("ssh", "")}, "PoolConfig.launcher must be"),
])
def test_bad_launcher_config_is_an_error_at_once(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PoolConfig(**config)


def test_private_config_state_is_not_a_keyword() -> None:
    with pytest.raises(ValueError, match="unknown PoolConfig field"):
        make_config(None, {"_slot_launchers": ()})


def test_a_remote_worker_gets_its_environment_at_the_far_end_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SYS_PATH_VARIABLE, "[]")
    monkeypatch.setenv("PYTHONPATH", "/here")
    ssh = Launcher(argv=("ssh", "db1"), shell=True)
    request = SpawnRequest(worker_id="w", app="a", start_timeout=1.0, launcher=ssh,
                           env={"POOL": "1"})
    # The local launcher process: this environment, untouched (no sys.path
    # hand-over, no engine source dir on PYTHONPATH: paths of this machine).
    env = _child_env(request)
    assert SYS_PATH_VARIABLE not in env and env["PYTHONPATH"] == "/here" and "POOL" not in env
    assert parent_sys_path(request) is None
    # The worker's: PoolConfig.env, set at the far end.
    argv = build_argv(request)
    assert argv[:2] == ["ssh", "db1"] and "POOL=1" in shlex.split(argv[2])
    assert "python3" in shlex.split(argv[2])  # the far end's interpreter, not ours
    local = SpawnRequest(worker_id="w", app="a", start_timeout=1.0, launcher=("nice",))
    assert local.remote is None and build_argv(local)[:2] == ["nice", sys.executable]


# --- introspection ------------------------------------------------------------------------


class _Remote:
    """The members introspection reads of a handle (ProcessWorker has them)."""

    host = "db1"
    remote_launcher = "ssh db1"
    os_pid = os.getpid()


def test_statistics_count_workers_per_host() -> None:
    counts = CoreCounts(**{field.name: 0 for field in attrs.fields(CoreCounts)})
    stats = PoolStatistics.from_counts(
        counts, name=None, leases=0, breaker="closed", closed=False,
        workers=[_Remote(), None, object(), _Remote()])  # type: ignore[list-item]
    assert stats.hosts == (("?", 1), ("db1", 2)) and stats.remote == 2
    where = placement(_Remote())  # type: ignore[arg-type]
    assert (where.host, where.remote_launcher, where.os_pid) == ("db1", "ssh db1", os.getpid())


def test_launcher_is_public() -> None:
    assert engine.Launcher is Launcher
