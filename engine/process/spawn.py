"""ProcessWorker: one worker subprocess, seen from the parent (Trio side).

``open_process_worker(request)`` spawns ``python -m engine.workers.runtime`` (after
an optional local wrapper prefix, or through a remote
:class:`~engine.process.launch.Launcher` such as ssh) in a new process group, so
the process we spawn and anything it spawns can be signalled as a whole (and a
Ctrl-C at the terminal reaches the pool, not its workers). Not a new session:
with the kernel's autogroup scheduling (on by default in desktop and many
server distributions) every session is a CPU-scheduling group of its own, and
a worker in a session of its own would compete with the whole application as
an equal: under load the parent, left in a group with everything else the
application runs, waits for a CPU while its workers idle (issue 19: 2-8x less
throughput with a busy loop per core, against peers whose workers stay in the
caller's session). It waits for the hello under ``start_timeout``, and on exit
always stops the process and waits for it: no zombie, no orphan.

A remote worker is signalled only through the local launcher process (its own
pid, from the hello, belongs to another host): killing the launcher closes the
worker's stdin at the far end, which ends it (see :mod:`.launch`).

Background tasks (in the context manager's own nursery): drain stderr (an
undrained pipe would deadlock the child), keeping a tail for crash reports and
passing each line where ``request.worker_output`` says (:mod:`.output`), and
watch for exit so that a call in flight is woken at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from engine.errors import WorkerStartError
from engine.process.channel import FramedChannel, PeerGone
from engine.process.channel_worker import ChannelWorker
from engine.process.handle import ExitInfo, SpawnRequest
from engine.process.launch import Launcher
from engine.process.output import line_sink
from engine.process.site_skip import skips_site
from engine.protocol import ABANDON_SIGNAL
from engine.workers.pickled import MAIN_VARIABLE
from engine.workers.runtime import PREFIX_VARIABLE, SYS_PATH_VARIABLE

logger = logging.getLogger("engine.worker")

# After the pipe hits EOF the process is normally already dead; give the exit
# watcher and the stderr drain a moment to report the status and last lines.
_EXIT_REPORT_WAIT = 1.0
_STDERR_SETTLE = 0.2
_TERM_WAIT = 1.0
# How long a clean worker gets to exit after the shutdown command.
_STOP_GRACE = 2.0
# A worker's output line longer than this is passed on in pieces.
_MAX_LINE_BYTES = 65536
# Linux refuses a single environment string longer than 128 KiB (MAX_ARG_STRLEN).
_MAX_SYS_PATH_BYTES = 100_000
# How a local worker runs the runtime: -c rather than -m, which would import
# runpy (with importlib.util and contextlib) in every worker, a tenth of its
# start-up. The command line still names the module.
_RUN_RUNTIME = ("-c", "from engine.workers.runtime import main; main()")
# waitid flags for a liveness check that leaves an exited child for the watcher.
_PEEK = os.WEXITED | os.WNOHANG | os.WNOWAIT


def build_argv(request: SpawnRequest) -> list[str]:
    """The command line to spawn: the runtime, after the local wrapper prefix, or
    wrapped by the remote launcher (interpreter, directory and environment of
    the far end included)."""
    worker_args = [
        "--app", request.app, "--worker-id", request.worker_id,
        "--max-frame-size", str(request.max_frame_size),
        "--busy-poll-us", str(round(request.busy_poll * 1e6)),
    ]
    if request.pickle_frame_size:
        worker_args += ["--pickle-frame-size", str(request.pickle_frame_size)]
    launcher = request.launcher
    if isinstance(launcher, Launcher):
        return launcher.command(worker_args, extra_env=request.env)
    python = list(request.python) or [sys.executable]
    # -S: the worker skips site when the parent's sys.path and prefix give it
    # all site would (see site_skip): a third of a pool's start-up here.
    env = {**os.environ, **(request.env or {})}
    no_site = ["-S"] if skips_site(request, env, parent_sys_path(request)) else []
    return [*launcher, *python, *no_site, *_RUN_RUNTIME, *worker_args]


def _child_env(request: SpawnRequest) -> dict[str, str]:
    env = dict(os.environ)
    if request.remote is not None:
        # The launcher (ssh needs HOME, SSH_AUTH_SOCK, ...) gets this process's
        # environment as it is; the worker's is set at the far end (build_argv).
        env.pop(SYS_PATH_VARIABLE, None)
        env.pop(PREFIX_VARIABLE, None)
        env.pop(MAIN_VARIABLE, None)
        return env
    if request.env:
        env.update(request.env)
    # The worker must import this very engine (it may not be installed, e.g. when
    # running from a source tree).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop(SYS_PATH_VARIABLE, None)  # never a value meant for another process
    env.pop(PREFIX_VARIABLE, None)
    env.pop(MAIN_VARIABLE, None)
    sys_path = parent_sys_path(request)
    if sys_path is not None:
        env[SYS_PATH_VARIABLE] = sys_path
        # A worker started without site (-S) would not find the venv's prefix.
        env[PREFIX_VARIABLE] = json.dumps([sys.prefix, sys.exec_prefix])
        main = parent_main() if request.pickle_frame_size else None
        if main is not None:
            env[MAIN_VARIABLE] = main
    return env


def parent_main() -> str | None:
    """How a worker finds this process's ``__main__`` for run_sync's functions
    defined there (see :mod:`engine.workers.pickled`): ``module:NAME`` when it
    ran with ``python -m NAME``, ``path:FILE`` for a script, None when there
    is no file (an interactive session)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if isinstance(name, str) and name and name != "__main__":
        if name.endswith(".__main__"):
            name = name[:-len(".__main__")]
        return f"module:{name}"
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and os.path.isfile(path):
        return f"path:{os.path.abspath(path)}"
    return None


def parent_sys_path(request: SpawnRequest) -> str | None:
    """The parent's ``sys.path`` as the worker runtime reads it, or None when
    the worker keeps its own.

    JSON, not ``os.pathsep``-joined: an entry may contain the separator. An
    environment variable, not PYTHONPATH or the command line: the runtime
    removes it before loading the app, so it never reaches the worker's own
    children (which may run another Python), and a remote launcher such as
    ssh does not carry it. Only for the parent's own interpreter: another
    Python (``python=``) would get a foreign standard library, and neither
    would a worker on another host (a remote launcher).
    """
    if not request.inherit_sys_path or request.remote is not None or (
            request.python and tuple(request.python) != (sys.executable,)):
        return None
    # What the import system would use: str entries, and bytes and path-likes
    # as their str (it skips anything else).
    entries = [os.fsdecode(entry) for entry in sys.path
               if isinstance(entry, str | bytes | os.PathLike)]
    encoded = json.dumps(entries, ensure_ascii=False)
    if len(encoded.encode("utf-8", "surrogateescape")) > _MAX_SYS_PATH_BYTES:
        logger.warning("sys.path is %d bytes long, more than a worker's environment takes; "
                       "worker %s keeps its own sys.path", len(encoded), request.worker_id)
        return None
    return encoded


class ProcessWorker(ChannelWorker):
    def __init__(self, process: trio.Process, request: SpawnRequest) -> None:
        assert process.stdin is not None and process.stdout is not None
        channel = FramedChannel(process.stdin, process.stdout, worker_id=request.worker_id,
                                max_frame_size=request.max_frame_size, pid=lambda: self.pid,
                                busy_poll=request.busy_poll,
                                cancel_grace=request.cancel_grace,
                                max_pickle_frame_size=request.pickle_frame_size,
                                nudge=self._interrupt_handler)
        super().__init__(request.worker_id, channel, request.stderr_tail_lines,
                         spawned_pid=process.pid, argv=tuple(build_argv(request)))
        self._process = process
        self._launcher = request.remote
        self._line_sink = line_sink(request.worker_output, request.worker_id)
        self._stderr_done = trio.Event()
        self._stop_reason = "exited"

    # --- identity and state -------------------------------------------------

    @property
    def os_pid(self) -> int:
        """The process we spawned and signal: with a launcher, not ``pid``
        (the interpreter's own, from the hello). For a remote worker, the local
        launcher process (ssh): the only one of its processes on this host."""
        return self._process.pid

    @property
    def remote(self) -> bool:
        """True when the worker runs on another host (a remote launcher): its
        ``pid`` is that host's, and only ``os_pid`` may be signalled here."""
        return self._launcher is not None

    @property
    def remote_launcher(self) -> str | None:
        return self._launcher.label if self._launcher is not None else None

    def exit_detail(self, info: ExitInfo | None) -> str:
        if self._launcher is None or info is None:
            return ""
        return self._launcher.describe_exit(info.exit_code, info.signal)

    def is_alive(self) -> bool:
        # The base's check by name, not super(): this runs at every hand-off.
        if not ChannelWorker.is_alive(self):
            return False
        # One waitid syscall that leaves the child unreaped (WNOWAIT), so the
        # exit watcher still collects its status; cheaper than Process.poll(),
        # which goes through Popen's locking. Runs at every hand-off.
        try:
            return os.waitid(os.P_PID, self._process.pid, _PEEK) is None
        except ChildProcessError:
            return False  # already reaped: the exit watcher is about to report it

    async def settle(self) -> None:
        # After the pipe hits EOF the process is normally already dead; give the
        # exit watcher and the stderr drain a moment to report status and last lines.
        with trio.move_on_after(_EXIT_REPORT_WAIT):
            await self.wait_exited()
        with trio.move_on_after(_STDERR_SETTLE):
            await self._stderr_done.wait()

    def _interrupt_handler(self) -> None:
        """An abandon frame was written: signal the worker so that its running
        handler is interrupted at once. Only a worker we spawned ourselves (the
        hello's pid is our child's: no launcher, no wrapper in between, not a
        remote worker); other workers notice the frame within their
        watchdog's interval. Our child is not reaped before the exit watcher
        records its exit (waitid peeks with WNOWAIT), so the pid can't belong
        to another process here."""
        pid = self._process.pid
        # A remote worker's hello pid is its host's: equal to our launcher's
        # pid only by chance, and SIGUSR2 would kill the local ssh.
        if self._launcher is not None or self.pid != pid or not self.is_alive():
            return
        try:
            os.kill(pid, ABANDON_SIGNAL)
        except ProcessLookupError:
            pass

    # --- lifecycle ------------------------------------------------------------

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self._process.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Leader and group already gone; fall back to the process itself in
            # case it left the group.
            if self._process.returncode is None:
                try:
                    self._process.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def stop(self, grace: float) -> ExitInfo:
        """Graceful stop: shutdown command, close stdin, then SIGTERM, then SIGKILL.

        Always waits for the process; callers should shield it.
        """
        if self.can_stop_gracefully:
            self._stop_reason = "stopped"
            with trio.move_on_after(min(grace, 1.0)):
                try:
                    await self.send_shutdown()
                except (PeerGone, trio.BusyResourceError):
                    pass  # already gone, or a call is in flight: stdin close and signals follow
        elif self.exit_info is None:
            self._stop_reason = "killed"
        await self._close_stdin()
        # Wait on the process itself, not on the exit watcher: when the scope
        # around the worker is cancelled (a start abandoned, a parent scope
        # timing out) the watcher task is cancelled too, and waiting for it to
        # report would hang this shielded stop forever.
        if self.exit_info is None and grace > 0 and self._stop_reason == "stopped":
            with trio.move_on_after(grace):
                await self._reap()
        if self.exit_info is None and self._stop_reason == "stopped":
            self._signal_group(signal.SIGTERM)
            with trio.move_on_after(_TERM_WAIT):
                await self._reap()
        if self.exit_info is None:
            self._signal_group(signal.SIGKILL)
        return await self._reap()

    async def _close_stdin(self) -> None:
        assert self._process.stdin is not None
        try:
            await self._process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    # --- background tasks -----------------------------------------------------

    async def _watch_exit(self) -> None:
        await self._reap()

    async def _reap(self) -> ExitInfo:
        """Wait for the process (trio.Process.wait may be awaited by several tasks)
        and record its exit, once."""
        returncode = await self._process.wait()
        if self.record_exit(ExitInfo.from_returncode(returncode, self._stop_reason)):
            # Grandchildren die with the worker, and a grandchild holding our
            # pipe open must not keep a caller waiting for an EOF that never
            # comes. (The call in flight was woken already; it runs after this.)
            self._signal_group(signal.SIGKILL)
        info = self.exit_info
        assert info is not None
        return info

    async def _drain_stderr(self) -> None:
        stream = self._process.stderr
        assert stream is not None
        pending = b""
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                if len(pending) >= _MAX_LINE_BYTES:
                    # No newline for a long while: pass it on in pieces rather
                    # than hold an unbounded line.
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    self._output_line(line)
            if pending:
                self._output_line(pending)
        finally:
            self._stderr_done.set()

    def _output_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self.record_stderr_line(line)
        if self._line_sink is not None:
            self._line_sink(line)


@asynccontextmanager
async def open_process_worker(request: SpawnRequest) -> AsyncIterator[ProcessWorker]:
    """Spawn a worker, wait for its hello, yield it; on exit stop it and wait for it."""
    argv = build_argv(request)
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0, env=_child_env(request),
        )
    except OSError as exc:
        remote = request.remote
        raise WorkerStartError(f"could not execute {argv[0]!r}: {exc}",
                               worker_id=request.worker_id, argv=tuple(argv),
                               launcher=remote.label if remote is not None else None) from exc
    if request.pickle_frame_size:
        _enlarge_pipes(process)
    worker = ProcessWorker(process, request)
    try:
        async with worker.running(start_timeout=request.start_timeout, grace=_STOP_GRACE,
                                  background=(worker._watch_exit, worker._drain_stderr)):
            yield worker
    finally:
        # Belt and braces: whatever happened above, the process is reaped.
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                worker.kill()
                await process.wait()
        await _close_pipes(process)


# Linux's F_SETPIPE_SZ (fcntl.F_SETPIPE_SZ from Python 3.10 on).
_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size


def _enlarge_pipes(process: trio.Process) -> None:
    """Give a worker that takes pickle frames (run_sync: megabytes of bytes
    each way) 1 MiB pipes instead of 64 KiB: 16 times fewer writes, reads and
    wake-ups for a large value. Best effort: where the OS refuses (another
    system, a lower pipe-max-size) the pipes stay as they are."""
    import fcntl

    for stream in (process.stdin, process.stdout):
        if isinstance(stream, trio.lowlevel.FdStream):
            try:
                fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass


async def _close_pipes(process: trio.Process) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
