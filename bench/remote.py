"""Workers through ssh against local workers, on a loopback sshd (issue 16).

The far end is this machine (``engine.testing.sshd.loopback_sshd``: a private
sshd on 127.0.0.1), so every figure is what ssh itself adds: the frames go
through the ssh client, the encrypted connection and sshd, twice per call.

* Round trip: ``pool.call("echo")`` on a pool of one local worker and on a
  pool of one worker through ``engine.Launcher.ssh``, interleaved rounds, the
  best round median of each; the ratio ssh / local.
* Spawn to hello: ``open_process_worker`` of a local worker and of one through
  ssh (connection, key exchange, authentication, the remote shell, then the
  same interpreter start), interleaved, medians; and ``ssh host true`` alone,
  the launcher's own share.
* Orphans: how long a busy remote worker outlives what ended it, measured in
  ``/proc`` (the far end is here): its local ssh client SIGKILLed, and the
  process running the pool SIGKILLed (then only stdin EOF reaches it).

Skipped, with the reason in the table, when sshd is not installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import engine
from bench.common import PAYLOAD, median, time_calls
from engine.process.handle import SpawnRequest
from engine.process.spawn import open_process_worker
from engine.testing.sshd import LoopbackSshd, SshdUnavailable, loopback_sshd

REPO = Path(__file__).resolve().parent.parent
_ORPHAN_LIMIT = 30.0  # a bench never hangs: give up and report after this

# The process that runs the pool in the parent-SIGKILL case (as in
# tests/remote/test_ssh_pool.py): two busy remote workers.
_PARENT = """
import json, sys, trio, engine

spec = json.loads(sys.argv[1])

async def main():
    launcher = engine.Launcher.ssh("127.0.0.1", **spec["ssh"])
    async with engine.open_pool(size=2, name=spec["name"], launcher=launcher,
                                app="tests.apps.busy_marker", call_timeout=None) as pool:
        await pool.wait_ready(2, timeout=60)
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(pool.call, "block", {})

trio.run(main)
"""


def _ssh_spec(sshd: LoopbackSshd) -> dict[str, Any]:
    return {"options": list(sshd.client_options), "python": sys.executable,
            "workdir": str(REPO), "env": {"PYTHONPATH": str(REPO)}}


def _launcher(sshd: LoopbackSshd) -> engine.Launcher:
    return engine.Launcher.ssh(sshd.host, **_ssh_spec(sshd))


async def round_trips(sshd: LoopbackSshd, rounds: int, per_round: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"local": [], "ssh": []}
    async with engine.open_pool(size=1, call_timeout=None, name="bench-local") as local, \
            engine.open_pool(size=1, call_timeout=None, name="bench-ssh",
                             launcher=_launcher(sshd)) as remote:
        await local.wait_ready(1, timeout=60)
        await remote.wait_ready(1, timeout=60)
        pools = {"local": local, "ssh": remote}
        for pool in pools.values():  # warm both (and their busy-poll estimates)
            await time_calls(lambda pool=pool: pool.call("echo", PAYLOAD), per_round)
        for _ in range(rounds):
            for name, pool in pools.items():
                samples = await time_calls(lambda pool=pool: pool.call("echo", PAYLOAD),
                                           per_round)
                out[name].append(median(samples))
                await trio.sleep(0.005)  # the previous contender stops polling
    best = {name: min(values) for name, values in out.items()}
    return {"local": best["local"], "ssh": best["ssh"], "rounds": rounds,
            "per_round": per_round, "round_medians": out}


async def spawn_to_hello(sshd: LoopbackSshd, n: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"local": [], "ssh": [], "ssh_true": []}
    for i in range(n + 1):
        for name, launcher in (("local", ()), ("ssh", _launcher(sshd))):
            request = SpawnRequest(worker_id=f"bench-hello-{name}-{i}",
                                   app="engine.workers.programs", start_timeout=60,
                                   launcher=launcher)
            t = time.perf_counter()
            async with open_process_worker(request):
                elapsed = time.perf_counter() - t
            if i:  # the first round pays for cold caches
                out[name].append(elapsed)
        t = time.perf_counter()
        await trio.run_process(sshd.ssh_argv("true"), stdin=subprocess.DEVNULL)
        if i:
            out["ssh_true"].append(time.perf_counter() - t)
    result: dict[str, Any] = {name: median(values) for name, values in out.items()}
    result["samples"] = out
    return result


def _processes_with(marker: str, exclude: int = 0, *, word: bool = False) -> list[int]:
    """Live processes whose command line contains ``marker`` (as a whole
    argument or shell word when ``word``: a worker id, not its prefix)."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), exclude):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as g:
                zombie = g.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        hit = needle in re.split(rb"[\0 ']", cmdline) if word else needle in cmdline
        if hit and not zombie:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _gone_after(marker: str, exclude: int = 0, *, word: bool = False) -> float:
    """Seconds until no process carries ``marker`` (polled every 5 ms: an OS
    condition at the far end); NaN if they outlive the bench's patience. A
    process seen once is followed by its pid: an exiting process's command
    line reads empty a moment before it is a zombie."""
    started = time.perf_counter()
    seen: set[int] = set()
    while True:
        seen.update(_processes_with(marker, exclude, word=word))
        seen = {pid for pid in seen if _alive(pid)}
        if not seen:
            return time.perf_counter() - started
        if time.perf_counter() - started > _ORPHAN_LIMIT:
            return float("nan")
        await trio.sleep(0.005)


async def _entered(stream: trio.abc.ReceiveStream, count: int) -> None:
    """Read forwarded worker output until ``count`` workers said they block."""
    text = b""
    while text.count(b"blocking in ") < count:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise RuntimeError(f"the pool's process ended early: {text.decode()!r}")
        text += chunk


async def ssh_killed(sshd: LoopbackSshd, n: int) -> list[float]:
    """A busy remote worker's local ssh client SIGKILLed: until the worker is gone."""
    out = []
    for i in range(n):
        marker = f"bench-orphan-ssh-{os.getpid()}-{i}"
        spec = {"name": marker, "ssh": _ssh_spec(sshd)}
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", _PARENT, json.dumps(spec)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert parent.stderr is not None
        try:
            with trio.fail_after(60):
                await _entered(parent.stderr, 2)
            # The ssh clients are the parent's children; kill one of them.
            client, worker = _an_ssh_client(marker, parent.pid)
            os.kill(client, signal.SIGKILL)
            out.append(await _gone_after(worker, parent.pid, word=True))
        finally:
            parent.kill()
            await parent.wait()
            await parent.stderr.aclose()
            await _gone_after(marker)
    return out


async def parent_killed(sshd: LoopbackSshd, n: int) -> list[float]:
    """The process running a pool of two busy remote workers SIGKILLed: until
    both workers (and their ssh clients) are gone."""
    out = []
    for i in range(n):
        marker = f"bench-orphan-parent-{os.getpid()}-{i}"
        spec = {"name": marker, "ssh": _ssh_spec(sshd)}
        parent = await trio.lowlevel.open_process(
            [sys.executable, "-c", _PARENT, json.dumps(spec)], cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert parent.stderr is not None
        try:
            with trio.fail_after(60):
                await _entered(parent.stderr, 2)
            parent.send_signal(signal.SIGKILL)
            await parent.wait()
            out.append(await _gone_after(marker))
        finally:
            if parent.returncode is None:
                parent.kill()
                await parent.wait()
            await parent.stderr.aclose()
    return out


def _an_ssh_client(marker: str, parent: int) -> tuple[int, str]:
    """A child of ``parent`` running ssh for pool ``marker``, and its worker's id."""
    for pid in _processes_with(marker, parent):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = re.split(r"[\0 ']", f.read().decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
        ids = [w for w in words if w.startswith(f"{marker}-")]
        if ppid == parent and ids:
            return pid, ids[0]
    raise RuntimeError(f"no ssh client of pool {marker} found below pid {parent}")


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-sshd-") as directory:
        try:
            with loopback_sshd(Path(directory)) as sshd:
                log("remote: round trips through ssh vs local")
                rounds, per_round = (4, 200) if quick else (10, 300)
                out: dict[str, Any] = {"round_trip": trio.run(round_trips, sshd, rounds,
                                                              per_round)}
                log("remote: spawn to hello through ssh vs local")
                out["hello"] = trio.run(spawn_to_hello, sshd, 3 if quick else 10)
                log("remote: how long a busy remote worker outlives its ssh / its pool")
                n = 2 if quick else 5
                ssh = trio.run(ssh_killed, sshd, n)
                parent = trio.run(parent_killed, sshd, n)
                out["orphans"] = {"ssh_killed": ssh, "parent_killed": parent}
                return out
        except SshdUnavailable as exc:
            log(f"remote: skipped ({exc})")
            return {"skipped": str(exc)}
