"""The bench's own process handling (layer 3: real subprocesses).

The bench must leave nothing behind and read CPU right: the CPU hogs die with
their block (error included) and with the bench itself; the spin floor answers,
reports its child's CPU, stops spinning once idle and is waited for; the
``/proc`` readers find grandchildren and a child's CPU.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from bench.common import PAYLOAD
from bench.cpu import CpuMeter, _stat_cpu, descendants, process_cpu
from bench.hog import cpu_hogs
from bench.spin import open_spin_floor
from engine.process.procfs import pid_alive

pytestmark = pytest.mark.layer3

ROOT = str(Path(__file__).resolve().parents[2])
HANG_GUARD = 20.0  # turns a hang into a failure; never a timing assertion


def _wait_for_exit(pid: int) -> bool:
    """True once ``pid`` (not necessarily our child) has exited: its pidfd polls
    readable then, zombie or reaped."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(HANG_GUARD * 1000))
    finally:
        os.close(pidfd)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_hogs_are_killed_and_waited_for_when_their_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), cpu_hogs(2) as pids:
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        raise RuntimeError("boom")
    # Waited for, not just killed: gone from /proc (the leak fixture checks
    # that no child, zombie included, is left).
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


def test_a_hog_dies_with_the_process_that_started_it() -> None:
    # A bench SIGKILLed in the contended section runs no cleanup: its hogs must
    # end on their own rather than burn a core forever.
    starter = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys; sys.path.insert(0, {ROOT!r})\n"
         "from bench.hog import cpu_hogs\n"
         "with cpu_hogs(1) as pids:\n"
         "    print(pids[0], flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert starter.stdin is not None and starter.stdout is not None
    try:
        hog = int(starter.stdout.readline())
        assert pid_alive(hog)
    finally:
        starter.kill()
        starter.wait()
        starter.stdin.close()
        starter.stdout.close()
    assert _wait_for_exit(hog), f"hog {hog} outlived the process that started it"


def test_spin_floor_echoes_reports_its_cpu_stops_spinning_and_is_waited_for() -> None:
    with open_spin_floor() as spin:
        assert spin.call("echo", PAYLOAD) == PAYLOAD
        before = spin.child_cpu()
        for i in range(300):
            assert spin.call("echo", {"i": i}) == {"i": i}
        assert spin.child_cpu() > before
        assert trio.run(spin.call_through_trio, "echo", PAYLOAD) == PAYLOAD
        # Idle, it goes back to sleep (it would be a CPU hog to the contenders
        # measured after it otherwise).
        deadline = time.monotonic() + HANG_GUARD
        while _state(spin.pid) != "S":
            assert time.monotonic() < deadline, "the spin floor's child never went idle"
            time.sleep(0.01)
    assert spin.process.returncode == 0


def test_descendants_and_cpu_of_another_process() -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
        " stdin=subprocess.PIPE)\n"
        "start = time.process_time()\n"
        "while time.process_time() - start < 0.05:\n"
        "    pass\n"
        "print(child.pid, time.process_time(), flush=True)\n"
        "sys.stdin.read()\n"
        "child.stdin.close()\n"
        "child.wait()\n")
    middle = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert middle.stdin is not None and middle.stdout is not None
    try:
        grandchild, reported = middle.stdout.readline().split()
        assert {middle.pid, int(grandchild)} <= descendants()
        # Blocked on stdin now, so its counters are up to date (it has entered
        # the scheduler since it reported).
        deadline = time.monotonic() + HANG_GUARD
        while _state(middle.pid) != "S":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cpu = process_cpu(middle.pid)
        assert cpu is not None and cpu >= float(reported)
        stat = _stat_cpu(middle.pid)
        assert stat is not None and stat >= 0.02  # 10 ms ticks: coarse, but there
        parent, workers = CpuMeter([middle.pid, 2**22 + 1]).stop()  # a pid that is not
        assert parent >= 0 and workers >= 0
    finally:
        middle.stdin.close()
        middle.wait(timeout=HANG_GUARD)
        middle.stdout.close()
    assert process_cpu(middle.pid) is None


def test_the_probe_replaces_reading_proc() -> None:
    readings = iter([1.0, 1.25])
    parent, workers = CpuMeter([os.getpid()], probe=lambda: next(readings)).stop()
    assert workers == 0.25 and parent >= 0


def test_sigint_reaches_the_bench_not_the_hogs() -> None:
    # A Ctrl-C at the terminal goes to the whole foreground process group,
    # hogs included: they ignore it, the bench kills them.
    with cpu_hogs(1) as (hog,):
        deadline = time.monotonic() + HANG_GUARD
        while True:  # the handler is installed once the hog's code runs
            with open(f"/proc/{hog}/status") as f:
                ignored = next(int(line.split()[1], 16) for line in f
                               if line.startswith("SigIgn:"))
            if ignored & (1 << (signal.SIGINT - 1)):
                break
            assert time.monotonic() < deadline, "the hog never ignored SIGINT"
            time.sleep(0.01)
        os.kill(hog, signal.SIGINT)
        assert pid_alive(hog)
