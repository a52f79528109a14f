"""Workers on another host, through a real sshd on 127.0.0.1 (layer 3).

The session-scoped ``sshd`` fixture runs ``engine.testing.sshd.loopback_sshd``:
an sshd child with its own host key, authorized key and configuration in a
temporary directory (the machine's ssh configuration is neither read nor
changed), stopped and waited for at the end of the session. The tests skip,
saying why, when sshd is not installed (``.ci/run`` installs it).

The far end is this machine, so the tests can see the remote workers in
``/proc``: every test gives its pool a unique name, which is in every worker
id and so in the command line of both the local ssh client and the remote
interpreter (:func:`processes_with`).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import engine
from engine.testing.sshd import LoopbackSshd, SshdUnavailable, loopback_sshd
from tests.leaks import SESSION_CHILDREN, pid_alive

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    try:
        with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
            SESSION_CHILDREN.add(server.process.pid)
            try:
                yield server
            finally:
                SESSION_CHILDREN.discard(server.process.pid)
    except SshdUnavailable as exc:
        pytest.skip(f"no sshd to test remote workers against: {exc}; .ci/run installs it")


def ssh_launcher(sshd: LoopbackSshd, **overrides: Any) -> engine.Launcher:
    """Workers on "the other host" (127.0.0.1 through sshd), told explicitly
    what ssh does not carry: the interpreter, the directory and PYTHONPATH
    (this engine and the tests' apps import from the source tree)."""
    options: dict[str, Any] = {"options": sshd.client_options, "python": sys.executable,
                               "workdir": str(REPO), "env": {"PYTHONPATH": str(REPO)}}
    options.update(overrides)
    return engine.Launcher.ssh(sshd.host, **options)


@pytest.fixture
def launcher(sshd: LoopbackSshd) -> Callable[..., engine.Launcher]:
    return lambda **overrides: ssh_launcher(sshd, **overrides)


@pytest.fixture
def marker(request: pytest.FixtureRequest) -> Iterator[str]:
    """A pool name unique to this test; after the test no process may carry it."""
    name = f"rt{uuid.uuid4().hex[:8]}"
    yield name
    left = wait_no_processes(name, timeout=10.0)
    for pid in left:  # never leave them to the next test, whatever failed
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not left, f"processes of pool {name} left after the test: {left}"


def processes_with(marker: str) -> list[int]:
    """Live processes (zombies excluded) whose command line contains ``marker``."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and pid_alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def _left(marker: str, seen: set[int]) -> set[int]:
    """Processes carrying ``marker``, and those seen carrying it that are still
    alive: an exiting process's command line reads empty a moment before it
    becomes a zombie, so once seen a process is followed by its pid."""
    seen.update(processes_with(marker))
    seen.intersection_update(pid for pid in seen if pid_alive(pid))
    return seen


def wait_no_processes(marker: str, timeout: float) -> list[int]:
    """Poll /proc until no process carries ``marker`` (there is no event for a
    process on "another host" ending); return those left after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while _left(marker, seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    return sorted(seen)


async def seconds_until_gone(marker: str, limit: float) -> float:
    """How long until no process carries ``marker``: polled every 10 ms (what
    is measured is an OS condition on the far end); fails after ``limit``."""
    started = time.monotonic()
    seen: set[int] = set()
    while _left(marker, seen):
        elapsed = time.monotonic() - started
        if elapsed > limit:
            raise AssertionError(f"processes of {marker} still alive after {limit:g} s: "
                                 f"{sorted(seen)}")
        await trio.sleep(0.01)  # an OS condition on the far end: nothing to wait on
    return time.monotonic() - started


def record_outlive(case: str, seconds: float) -> None:
    """Print a measured outlive time (pytest -s shows them; the report quotes them)."""
    print(f"\n[outlive] {case}: {seconds * 1000:.0f} ms", file=sys.stderr)
