"""The worker side: ``python -m engine.workers.runtime --app MODULE[:ATTR] --worker-id ID``.

One worker process serves one request at a time over the framed JSON protocol
of :mod:`engine.protocol` (design section 3): requests on stdin, responses on a
private copy of the original stdout, logs on stderr.

Exit codes (the parent maps them onto its errors):

====  ====================================================================
0     stdin closed (EOF) or the ``shutdown`` command
2     bad command line (an error hello is sent first)
3     start failure: the app could not be imported or found, or an
      ``on_start`` hook raised (an error hello is sent first)
4     the parent sent a malformed frame or request: the stream cannot be
      trusted any more (an id-0 ``ProtocolError`` response is sent first)
5     the frame channel broke (reading stdin or writing responses failed)
70    orphaned: the parent process died, or stdin closed while a request was
      still being served (the watchdog ended the worker)
====  ====================================================================

Abandoned requests (design section 8): when a caller gives up on a call, the
parent writes an abandon frame (``{"abandon": id}``) and, for a worker it
spawned itself, sends it ``ABANDON_SIGNAL`` (SIGUSR2, reserved by the engine in
workers). The runtime is single-threaded: the main loop reads stdin, then runs
the handler. The signal's handler runs in the main thread between bytecodes;
only while an app handler runs (a flag set just before the call and cleared
right after, the whole cost on the hot path) does it read what stdin holds,
and if that is the abandon of the running request it raises
:class:`~engine.workers.app.RequestAbandoned` inside the handler (a blocking
``time.sleep`` included, which the signal interrupts). The worker answers a
``Cancelled`` error and goes on serving. At any other moment the signal does
nothing: the main loop reads the frame itself (PEP 475 retries its read, and
a read from the signal handler then could leave a request in the decoder
while the main loop blocks). A request whose abandon is already buffered behind
it is answered ``Cancelled`` without running; an abandon for a request answered
already is ignored, so every request gets exactly one reply. Workers started
through a launcher cannot be signalled: the watchdog thread notices stdin
becoming readable while a handler runs (within its interval) and signals the
main thread itself. A handler that swallows the exception, or is stuck in C,
keeps running until the parent's ``cancel_grace`` ends and it kills the worker.

Only the standard library is imported (plus :mod:`engine.protocol`,
:mod:`engine.errors`, :mod:`engine.busy_poll` and :mod:`engine.workers.app`,
which are stdlib-only):
spawn-to-hello must stay close to a bare interpreter's start-up. ``traceback``
is imported only when something fails.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from engine.busy_poll import MAX_BUSY_POLL_US, BusyPollPolicy
from engine.errors import ProtocolError
from engine.protocol import (
    ABANDON_SIGNAL,
    CANCELLED,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    PICKLE_CODEC,
    PICKLE_COMMAND,
    PICKLE_FLAG,
    SCALAR_TYPES,
    Abandon,
    FrameDecoder,
    Request,
    decode_body,
    decode_pickle_body,
    encode_frame,
    error_response,
    find_unencodable,
    hello_message,
    keys_are_strings,
    parse_incoming,
)
from engine.workers.app import (
    BUILTIN_COMMANDS,
    App,
    Context,
    RequestAbandoned,
    SessionStore,
    rss_mb,
)
from engine.workers.pickled import ReadyFrame

TYPE_CHECKING = False  # avoids importing typing in workers (about 3 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any, NoReturn

    #: What the main loop has read but not served yet, in order (a decoding
    #: error is kept in its place, so the frames before it are still served).
    Inbox = list[Request | Abandon | ProtocolError]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3
EXIT_PROTOCOL_ERROR = 4
EXIT_CHANNEL_BROKEN = 5
EXIT_ORPHANED = 70  # EX_SOFTWARE in sysexits.h: we did not fail, our parent vanished

WATCHDOG_INTERVAL = 0.1
_MAIN_THREAD = __import__("_thread").get_ident()  # this module is imported by the main thread
# How long a worker still serving after its stdin closed may go on (see
# start_watchdog); an idle worker reads the EOF and exits at once. One that is
# exiting gets longer for its atexit handlers (the pool's own stop grace), but
# not forever: a non-daemon thread of the app must not keep it alive.
STDIN_EOF_GRACE = 0.5
STDIN_EOF_EXIT_LIMIT = 2.0
MIN_FRAME_SIZE = 1024  # the hello and any error response must always fit
READ_SIZE = 65536
LARGE_READ_SIZE = 1 << 20  # after a full read: a large frame is coming
# Error messages and tracebacks are cut to these sizes so an error response
# fits a frame even when a handler raises with a gigantic message.
MAX_ERROR_MESSAGE = 8192
MAX_TRACEBACK = 65536

# The parent's sys.path, as a JSON list (see adopt_parent_sys_path).
SYS_PATH_VARIABLE = "ENGINE_WORKER_SYS_PATH"
# The parent's [sys.prefix, sys.exec_prefix], for a worker started without site.
PREFIX_VARIABLE = "ENGINE_WORKER_PREFIX"

USAGE = ("usage: python -m engine.workers.runtime --app MODULE[:ATTR] --worker-id ID "
         "[--max-frame-size N] [--busy-poll-us N] [--pickle-frame-size N]")


class UsageError(Exception):
    """The command line is wrong; reported in an error hello, exit code 2."""


class AppNotFound(Exception):
    """The app module imported fine but holds no usable ``App``."""


# --- the frame channel -------------------------------------------------------


class BusyPoller:
    """The worker's way to busy-poll stdin: ``poll(0)``, yielding the CPU between polls.

    Blocking lets the CPU idle, and an idle CPU takes tens of microseconds to
    wake when the next request comes: more than a whole small call. Whether and
    how long to poll first is the shared policy's call (:mod:`engine.busy_poll`);
    this polls until the time it gave, yielding the CPU between polls so that
    the parent (which may share it) is not held up.
    """

    __slots__ = ("_keep_polling", "_poll")

    def __init__(self, fd: int, keep_polling: Callable[[float], bool]) -> None:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        self._poll = poller.poll
        self._keep_polling = keep_polling  # the policy's: the budget, and contention

    def poll_until(self, until: float) -> None:
        """Return once a request is readable, or when the policy says to stop
        (the clock reached ``until``, or this process lost its CPU meanwhile)."""
        poll, keep_polling, yield_cpu = self._poll, self._keep_polling, os.sched_yield
        while not poll(0) and keep_polling(until):
            yield_cpu()


class Channel:
    """The private frame fd. Everything written to it goes through here."""

    __slots__ = ("busy_poll", "fd", "max_frame_size", "max_pickle_frame_size")

    def __init__(self, fd: int, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.fd = fd
        self.max_frame_size = max_frame_size
        self.max_pickle_frame_size = 0  # 0: JSON only (no run_sync)
        self.busy_poll = 0.0  # seconds, 0: off; see engine.busy_poll

    def write(self, data: bytes) -> None:
        """Write all of ``data``; a pipe may take it in several pieces."""
        try:
            written = os.write(self.fd, data)
            if written < len(data):  # a full pipe took a part: write the rest
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self.fd, view):]
        except OSError as exc:
            # The parent closed its end: nobody is left to answer.
            _die(EXIT_CHANNEL_BROKEN, f"frame channel broken ({exc}); exiting")

    def send_error(self, request_id: int, type_name: str, message: str,
                   tb: str | None = None) -> None:
        message = _clip(message, MAX_ERROR_MESSAGE)
        tb = None if tb is None else _clip(tb, MAX_TRACEBACK)
        try:
            frame = encode_frame(error_response(request_id, type_name, message, tb),
                                 self.max_frame_size)
        except ProtocolError:
            # Even the clipped error is too big for a tiny max_frame_size; the
            # type alone still tells the caller what happened.
            frame = encode_frame(error_response(request_id, type_name, "(message too large)"),
                                 self.max_frame_size)
        self.write(frame)


def _clip(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[:limit] + f"... [{len(text) - limit} more characters]"
    # Lone surrogates (from bytes decoded with surrogateescape) cannot be UTF-8
    # encoded; replace them instead of failing to report the error at all.
    return text.encode("utf-8", "replace").decode("utf-8")


def _die(code: int, message: str) -> NoReturn:
    try:
        sys.stderr.write(f"engine worker: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is gone too; the exit code still says it
    os._exit(code)


def move_frame_channel() -> int:
    """Keep the real stdout for frames; point fd 1 and ``sys.stdout`` at stderr.

    A stray ``print`` (or a C library writing to fd 1) in user code then lands
    in the parent's stderr log instead of corrupting the framing.
    """
    frame_fd = os.dup(1)  # non-inheritable: grandchildren never get the channel
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Line buffering plus write-through: a log line reaches the parent when it
    # is written, not when a buffer fills.
    reconfigure = getattr(sys.stderr, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True, write_through=True)
    return frame_fd


def move_request_channel() -> int:
    """Keep the real stdin for requests; point fd 0 at ``/dev/null``.

    User code that reads stdin (``input()``, a library prompting) then gets
    EOF at once, as in a multiprocessing worker, instead of blocking on the
    request pipe or, worse, reading the parent's next frames. The private fd
    is not inherited: a grandchild cannot hold the pipe open either.
    """
    request_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
    finally:
        os.close(devnull)
    return request_fd


# --- the orphan watchdog -----------------------------------------------------


class Watchdog:
    """The watchdog thread's orders: besides the orphan check, an optional probe
    run on every tick (set once the worker exists; see :meth:`Worker.probe_abandon`)."""

    __slots__ = ("probe",)

    def __init__(self) -> None:
        self.probe: Callable[[], None] | None = None


def start_watchdog(interval: float = WATCHDOG_INTERVAL, stdin_fd: int = 0) -> Watchdog:
    """End the process once its parent has died or its stdin has closed, even
    while a handler is busy.

    A thread that calls ``os._exit`` works whatever the main thread is doing
    (sleeping, computing, blocked in a read). PR_SET_PDEATHSIG is not an option:
    Trio spawns children from a helper thread, and that signal fires when the
    *thread* exits, not the parent process. Each tick also runs the returned
    watchdog's ``probe`` (the abandon check for workers no signal reaches).

    The parent's death is not always visible as a new parent pid: a worker
    started through ssh (or kubectl, docker, srun) is the child of sshd's
    session process, which lives on while the local ssh client does, and that
    client outlives a SIGKILLed pool, waiting for the remote command. What
    reaches the worker is stdin EOF, which a busy worker does not read. So the
    thread also polls stdin for a hang-up (it reads nothing: the bytes are the
    main thread's). An idle worker reads the EOF itself and exits cleanly
    (exit 0, its atexit handlers run, for up to ``STDIN_EOF_EXIT_LIMIT``
    seconds); one still serving ``STDIN_EOF_GRACE`` seconds after the hang-up
    is ended with ``EXIT_ORPHANED``: nobody is left to read its replies (the
    pool never closes stdin during a call it waits on).
    """
    # _thread, not threading: importing threading costs about 1 ms of every
    # start, and a _thread thread is a daemon (it never delays the exit).
    import _thread
    import select

    parent = os.getppid()
    watchdog = Watchdog()
    hangup = select.poll()
    # POLLHUP (a pipe's writers gone) is always reported; POLLRDHUP (Linux)
    # covers a socket whose peer shut down writing. Nothing is read.
    hangup.register(stdin_fd, getattr(select, "POLLRDHUP", 0))
    wait_ms = max(1, round(interval * 1000))

    def watch() -> None:
        closed_at = None
        while True:
            if closed_at is None:
                events = hangup.poll(wait_ms)  # doubles as the watchdog's sleep
                if events and not events[0][1] & select.POLLNVAL:
                    closed_at = time.monotonic()
                elif events:  # no stdin at all: the main thread's read will say so
                    closed_at = float("inf")
            else:
                time.sleep(interval)
            if os.getppid() != parent:
                os._exit(EXIT_ORPHANED)
            limit = STDIN_EOF_EXIT_LIMIT if _serve_returned else STDIN_EOF_GRACE
            if closed_at is not None and time.monotonic() - closed_at >= limit:
                os._exit(EXIT_ORPHANED)
            probe = watchdog.probe
            if probe is not None:
                try:
                    probe()
                except Exception:  # never let it end the orphan check
                    pass

    _thread.start_new_thread(watch, ())
    return watchdog


# Set once serve() returned: the worker is exiting on its own, and its atexit
# handlers get STDIN_EOF_EXIT_LIMIT after a hang-up, not STDIN_EOF_GRACE.
_serve_returned = False


# --- command line and app loading --------------------------------------------


class Options:
    __slots__ = ("app", "busy_poll", "max_frame_size", "pickle_frame_size", "worker_id")

    def __init__(self, app: str, worker_id: str, max_frame_size: int,
                 busy_poll: float = 0.0, pickle_frame_size: int = 0) -> None:
        self.app = app
        self.worker_id = worker_id
        self.max_frame_size = max_frame_size
        self.busy_poll = busy_poll  # seconds
        # > 0: accept pickle frames up to this size (run_sync); the parent
        # passes it only to workers it trusts to unpickle what it sends.
        self.pickle_frame_size = pickle_frame_size


def parse_args(argv: list[str]) -> Options:
    """A tiny hand-written parser: argparse costs more than this whole runtime."""
    values: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        key, eq, value = item.partition("=")
        if key not in ("--app", "--worker-id", "--max-frame-size", "--busy-poll-us",
                       "--pickle-frame-size"):
            raise UsageError(f"unexpected argument {item!r}; {USAGE}")
        if not eq:
            value = next(items, "")
        if not value:
            raise UsageError(f"{key} needs a value; {USAGE}")
        values[key] = value
    missing = [k for k in ("--app", "--worker-id") if k not in values]
    if missing:
        raise UsageError(f"missing {' and '.join(missing)}; {USAGE}")
    return Options(values["--app"], values["--worker-id"],
                   _parse_frame_size(values.get("--max-frame-size")),
                   _parse_busy_poll(values.get("--busy-poll-us")),
                   _parse_pickle_frame_size(values.get("--pickle-frame-size")))


def _parse_pickle_frame_size(text: str | None) -> int:
    if text is None:
        return 0
    try:
        size = int(text)
    except ValueError:
        raise UsageError(f"--pickle-frame-size must be an integer, got {text!r}") from None
    if not (size == 0 or MIN_FRAME_SIZE <= size < PICKLE_FLAG):
        raise UsageError(f"--pickle-frame-size must be 0 (off) or between {MIN_FRAME_SIZE} "
                         f"and {PICKLE_FLAG - 1}, got {size}")
    return size


def _parse_busy_poll(text: str | None) -> float:
    if text is None:
        return 0.0
    try:
        micros = int(text)
    except ValueError:
        raise UsageError(f"--busy-poll-us must be an integer, got {text!r}") from None
    if not 0 <= micros <= MAX_BUSY_POLL_US:
        raise UsageError(f"--busy-poll-us must be between 0 and {MAX_BUSY_POLL_US}, got {micros}")
    return micros * 1e-6


def _parse_frame_size(text: str | None) -> int:
    if text is None:
        return DEFAULT_MAX_FRAME_SIZE
    try:
        size = int(text)
    except ValueError:
        raise UsageError(f"--max-frame-size must be an integer, got {text!r}") from None
    if size < MIN_FRAME_SIZE:
        raise UsageError(f"--max-frame-size must be at least {MIN_FRAME_SIZE}, got {size}")
    return size


def adopt_parent_sys_path() -> None:
    """Make ``sys.path`` the parent's, as multiprocessing does, before the app loads.

    The parent passes its ``sys.path`` in ``ENGINE_WORKER_SYS_PATH`` (a JSON
    list), so an app the parent can import (from its script's folder, a
    ``sys.path.insert``) loads here too. The variable is removed, so the
    worker's own children never see it. Entries missing on this side are
    harmless (the import system skips them). The engine stays importable:
    its modules are loaded already, and the package's own ``__path__`` finds
    the rest. Raises UsageError when the value is not a JSON list of strings.
    """
    raw = os.environ.pop(SYS_PATH_VARIABLE, None)
    if raw is None:
        return
    import json  # loaded already (engine.protocol): costs nothing

    try:
        entries = json.loads(raw)
    except ValueError:
        entries = None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise UsageError(f"{SYS_PATH_VARIABLE} must be a JSON list of strings, got {raw[:80]!r}")
    sys.path[:] = entries
    _adopt_site(os.environ.pop(PREFIX_VARIABLE, None))


def _adopt_site(prefix: str | None) -> None:
    """A worker the parent started without site (``-S``, engine.process.site_skip):
    what site would have set and a handler may use, so that the worker looks
    like one started as usual: the venv's ``sys.prefix`` (site sets it from
    ``pyvenv.cfg``) and the ``exit``/``quit``/``help`` builtins. Its sys.path
    is the parent's already."""
    if not sys.flags.no_site:
        return
    import json

    try:
        prefixes = json.loads(prefix) if prefix is not None else None
    except ValueError:
        prefixes = None
    if isinstance(prefixes, list) and len(prefixes) == 2 \
            and all(isinstance(p, str) for p in prefixes):
        sys.prefix, sys.exec_prefix = prefixes
    import site  # with -S its import runs nothing: these only define builtins

    site.setquit()
    site.setcopyright()
    site.sethelper()


def load_app(spec: str) -> App:
    """Import ``MODULE[:ATTR]`` and return its ``App``.

    Without ``:ATTR`` the module's ``app`` is used, or else its only ``App``
    instance; an explicit ``ATTR`` must name an ``App``.
    """
    import importlib

    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, App):
            raise AppNotFound(f"{module_name}.{attr} is {_describe(found)}, not an engine "
                              "App; name a MODULE:ATTR that holds App(...) as the pool's app")
        return found
    default = getattr(module, "app", None)
    if isinstance(default, App):
        return default
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) == 1:
        return apps[0]
    what = "no App instance" if not apps else f"{len(apps)} App instances"
    raise AppNotFound(f"module {module_name!r} has {what}; define `app = App(...)` in "
                      "it, or give the pool's app as MODULE:ATTR naming the one to use")


def _describe(value: object) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _format_exception(exc: BaseException, skip_frames: int = 0) -> str:
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception as format_failure:  # e.g. MemoryError while formatting
        return f"<traceback unavailable: {type(format_failure).__name__}>"


def _exception_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        return f"<unprintable {type(exc).__name__}>"


# --- the worker ---------------------------------------------------------------


def _poll_stats(policy: BusyPollPolicy | None) -> dict[str, Any] | None:
    """How the worker's busy-polling fares (None: polling is off)."""
    if policy is None:
        return None
    return {"waits": policy.waits, "deschedules": policy.deschedules,
            "contended": policy.contended, "typical_wait_us": policy.typical_wait * 1e6}


class Worker:
    """Serves requests from stdin until EOF, ``shutdown`` or a protocol error."""

    def __init__(self, app: App, worker_id: str, channel: Channel, stdin_fd: int = 0) -> None:
        self.app = app
        self.worker_id = worker_id
        self.channel = channel
        self.stdin_fd = stdin_fd
        self.sessions = SessionStore()
        self.started = time.monotonic()
        self.requests = 0
        self.calls = 0
        self.errors = 0
        self.cancelled = 0  # requests answered Cancelled (interrupted or never run)
        self.poll_policy: BusyPollPolicy | None = None  # for stats: is polling paying?
        self.stopping = False
        self.decoder = FrameDecoder(channel.max_frame_size, channel.max_pickle_frame_size)
        # Abandoned requests (module docstring). `running`: the id of the
        # request whose handler runs (0: none); `interrupted`: the last id
        # RequestAbandoned was raised for (once per request: a handler that
        # swallows it keeps running until the parent's grace ends). What the
        # signal handler reads goes to the decoder and the inbox, and
        # `stashed` tells the main loop to serve that first.
        self.running = 0
        self.interrupted = 0
        self.inbox: Inbox = []
        self.stashed = False
        self.eof = False  # stdin closed, as seen by the signal handler
        self._in_signal = False
        self._stdin_ready: Callable[[int], list[tuple[int, int]]] | None = None
        self._watchdog_ready: Callable[[int], list[tuple[int, int]]] | None = None
        # One lookup per request: command -> (handler, counts in ``calls``).
        # Commands the app registers later are still found through app.handler.
        self._dispatch: dict[str, tuple[Callable[[Any, Context], Any], bool]] = {
            "ping": (self.ping, False), "health": (self.health, False),
            "stats": (self.stats, False), "cleanup_session": (self.cleanup_session, False),
            "shutdown": (self.shutdown, False),
        }
        for name in app.commands():
            handler = app.handler(name)
            if handler is not None:
                self._dispatch[name] = (handler, True)
        if channel.max_pickle_frame_size:
            from engine.workers.pickled import make_handler

            self._dispatch[PICKLE_COMMAND] = (
                make_handler(channel.max_pickle_frame_size, _format_exception), True)

    def commands(self) -> list[str]:
        return [*BUILTIN_COMMANDS, *self.app.commands()]

    def hello(self, schemas: bool = True) -> dict[str, Any]:
        # The node name says where the worker runs when a launcher put it on
        # another host (its pid is that host's); os.uname costs no import.
        codecs = (PICKLE_CODEC,) if self.channel.max_pickle_frame_size else ()
        return hello_message(self.worker_id, os.getpid(), self.app.name, self.commands(),
                             os.uname().nodename, self.app.schemas() if schemas else None,
                             codecs)

    # -- the loop

    def serve(self, stdin_fd: int | None = None) -> int:
        """Serve until EOF, ``shutdown`` or a protocol error; returns the exit code."""
        if stdin_fd is None:
            stdin_fd = self.stdin_fd
        elif stdin_fd != self.stdin_fd:
            self.stdin_fd = stdin_fd
            if self._stdin_ready is not None:
                self._watch_stdin()  # poll the new fd
        decoder = self.decoder
        max_frame_size = decoder.max_frame_size
        partial = False  # the decoder holds bytes of a frame not yet complete
        read = os.read
        read_size = READ_SIZE
        budget = self.channel.busy_poll
        policy = None
        if budget > 0:
            # Nothing is known of the requests to come: the first wait does not poll.
            policy = self.poll_policy = BusyPollPolicy(budget, typical_wait=budget)
            poll_until = BusyPoller(stdin_fd, policy.keep_polling).poll_until
        while True:
            if self.stashed:
                # The abandon signal's handler read stdin while a handler ran:
                # serve what it read before reading more.
                self.stashed = False
                try:
                    self._serve_inbox()
                except ProtocolError as exc:
                    return self._protocol_error(exc)
                if self.stopping or (self.eof and not self.stashed):
                    return EXIT_OK  # shutdown was served, or stdin closed
                partial = decoder.buffered > 0
                continue
            if policy is not None and (until := policy.begin_wait()):
                poll_until(until)
            try:
                chunk = read(stdin_fd, read_size)
            except OSError as exc:
                _die(EXIT_CHANNEL_BROKEN, f"reading requests failed ({exc}); exiting")
            if policy is not None:
                policy.frame_arrived()  # how long the request took decides the next wait
            if not chunk:
                return EXIT_OK  # the parent closed stdin: a request to stop
            # A full read: a large frame is coming (run_sync's bytes); read
            # more at once until a read comes back short.
            read_size = LARGE_READ_SIZE if len(chunk) >= READ_SIZE else READ_SIZE
            try:
                size = len(chunk) - HEADER_SIZE
                if not partial and 0 < size <= max_frame_size \
                        and int.from_bytes(chunk[:HEADER_SIZE], "big") == size:
                    # The usual case, one read holding exactly one request:
                    # decode it straight from the chunk, past the decoder.
                    self.handle(parse_incoming(decode_body(chunk[HEADER_SIZE:])))
                elif not partial and 0 < size <= self.channel.max_pickle_frame_size \
                        and int.from_bytes(chunk[:HEADER_SIZE], "big") == size | PICKLE_FLAG:
                    # The same for a small pickle request (a run_sync call).
                    self.handle(parse_incoming(decode_pickle_body(chunk[HEADER_SIZE:])))
                else:
                    decoder.feed(chunk)
                    self._collect()
                    self._serve_inbox()
                    partial = decoder.buffered > 0
            except ProtocolError as exc:
                return self._protocol_error(exc)
            if self.stopping:
                return EXIT_OK  # shutdown was served

    def _protocol_error(self, exc: ProtocolError) -> int:
        self.channel.send_error(0, "ProtocolError", str(exc))
        return EXIT_PROTOCOL_ERROR

    def _collect(self) -> None:
        """Move every whole message the decoder holds to the inbox, in order.

        A decoding error goes into the inbox in its place (the frames before it
        are served first) and ends the collection: the stream can't be trusted
        after it.
        """
        decoder, inbox = self.decoder, self.inbox
        try:
            while (message := decoder.next_message()) is not None:
                inbox.append(parse_incoming(message))
        except ProtocolError as exc:
            inbox.append(exc)

    def _serve_inbox(self) -> None:
        """Serve the inbox in order, until it is empty or ``shutdown`` was served.

        Only a decoding error kept in the inbox raises ProtocolError here:
        handler failures are answered inside :meth:`handle`.
        """
        inbox = self.inbox
        while inbox and not self.stopping:
            item = inbox.pop(0)
            if type(item) is Request:
                if any(type(m) is Abandon and m.id == item.id for m in inbox):
                    self._answer_unstarted(item)  # abandoned before it could start
                else:
                    self.handle(item)
            elif isinstance(item, ProtocolError):
                inbox.clear()
                raise item
            # An Abandon: its request was answered already; nothing to do.

    def handle(self, request: Request | Abandon) -> None:
        if type(request) is not Request:
            return  # an abandon for a request answered already: nothing to do
        self.requests += 1
        entry = self._dispatch.get(request.command)
        if entry is None:
            late = self.app.handler(request.command)
            if late is None:
                self._unknown_command(request)
                return
            entry = (late, True)
        handler, app_call = entry
        if app_call:
            self.calls += 1
        ctx = Context(request.session, self.worker_id, request.id, self.sessions,
                      self.channel.write)
        try:
            # `running` is set and cleared inside this try: RequestAbandoned can
            # only be raised while it is set, so it can never escape handle().
            self.running = request.id
            try:
                result = handler(request.args, ctx)
            finally:
                self.running = 0
        except RequestAbandoned as exc:
            self._answer_interrupted(request, exc)
            return
        except Exception as exc:
            self._handler_failed(request, exc)
            return
        channel = self.channel
        if type(result) is ReadyFrame:  # a run_sync reply, a frame already
            for part in result.parts:
                channel.write(part)
            return
        # The reply, inlined (ok_response too): this is the path every call takes.
        message = {"id": request.id, "ok": True, "result": result}
        try:
            frame = encode_frame(message, channel.max_frame_size)
            # The same rule as for the caller's args: a dict key that is not a
            # str is refused, not silently turned into one (keys_are_strings).
            sendable = type(result) in SCALAR_TYPES or keys_are_strings(result)
        except (ProtocolError, RecursionError):
            sendable = False
        if not sendable:
            self._unsendable_result(request.id, message)
            return
        channel.write(frame)

    # -- abandoned requests (see the module docstring)

    def install_abandon_handler(self) -> None:
        """Take ABANDON_SIGNAL (before the hello: the parent may send it from then on)."""
        self._watch_stdin()
        previous = signal.getsignal(ABANDON_SIGNAL)
        if previous not in (signal.SIG_DFL, None, self.on_abandon_signal):
            name = signal.Signals(ABANDON_SIGNAL).name
            sys.stderr.write(f"engine worker: app {self.app.name!r} installed a handler for "
                             f"{name}, which the engine reserves to interrupt abandoned "
                             "requests; it is replaced\n")
        signal.signal(ABANDON_SIGNAL, self.on_abandon_signal)

    def _watch_stdin(self) -> None:
        import select  # already imported when busy-polling (the default)

        # One poll object per thread: CPython refuses a concurrent poll() on
        # the same object (RuntimeError), and the watchdog thread polls too.
        pollers = []
        for _ in range(2):
            poller = select.poll()
            poller.register(self.stdin_fd, select.POLLIN)
            pollers.append(poller.poll)
        self._stdin_ready, self._watchdog_ready = pollers

    def on_abandon_signal(self, signum: int, frame: FrameType | None) -> None:
        """ABANDON_SIGNAL's handler (main thread, between bytecodes)."""
        running = self.running
        if not running or running == self.interrupted or self._in_signal:
            # No handler runs: the main loop reads the frame itself. Never read
            # stdin here then: a read interrupted by this signal is retried
            # (PEP 475) and would block with a request left in the decoder.
            return
        self._in_signal = True
        try:
            self._read_pending()
            inbox = self.inbox
            for item in inbox:
                if type(item) is Abandon and item.id == running:
                    inbox.remove(item)
                    self.interrupted = running
                    raise RequestAbandoned(running)
        finally:
            self._in_signal = False

    def _read_pending(self) -> None:
        """Read what stdin holds now, without blocking, into the decoder and inbox."""
        ready = self._stdin_ready
        if ready is None or self.eof:
            return
        while ready(0):
            try:
                chunk = os.read(self.stdin_fd, READ_SIZE)
            except OSError:
                chunk = b""  # the main loop's own read reports a broken channel
            self.stashed = True
            if not chunk:
                self.eof = True
                return
            try:
                self.decoder.feed(chunk)
            except ProtocolError as exc:
                self.inbox.append(exc)
                return
            self._collect()

    def probe_abandon(self) -> None:
        """The watchdog's check (its own thread): while a handler runs, stdin can
        only become readable with an abandon frame (or EOF). Signal the main
        thread then, as the parent would have if it could reach this process."""
        running = self.running
        ready = self._watchdog_ready
        if running and running != self.interrupted and not self.eof and ready is not None \
                and ready(0):
            signal.pthread_kill(_MAIN_THREAD, ABANDON_SIGNAL)

    def _answer_interrupted(self, request: Request, exc: RequestAbandoned) -> None:
        self.cancelled += 1
        tb = _format_exception(exc, skip_frames=1)
        self.channel.send_error(
            request.id, CANCELLED,
            f"request {request.id} ({request.command!r}) was abandoned by the parent; its "
            "handler was interrupted", tb)

    def _answer_unstarted(self, request: Request) -> None:
        self.requests += 1
        self.cancelled += 1
        self.channel.send_error(
            request.id, CANCELLED,
            f"request {request.id} ({request.command!r}) was abandoned by the parent before "
            "its handler started")

    def _unknown_command(self, request: Request) -> None:
        import difflib  # the error path only: not at start-up

        own = self.app.commands()
        close = difflib.get_close_matches(str(request.command), own, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(own) or "none"
        self.channel.send_error(
            request.id, "UnknownCommand",
            f"unknown command {request.command!r} for app {self.app.name!r}{hint}; its "
            f"commands: {known} (besides the built-in {', '.join(BUILTIN_COMMANDS)})",
        )

    def _handler_failed(self, request: Request, exc: Exception) -> None:
        self.errors += 1
        # Skip the frame of handle() itself: the traceback starts in the handler.
        tb = _format_exception(exc, skip_frames=1)
        self.channel.send_error(request.id, type(exc).__name__, _exception_message(exc), tb)

    def _unsendable_result(self, request_id: int, message: dict[str, Any]) -> None:
        # The result holds something JSON cannot carry (the walk says what and
        # where), or its frame is too large. This costs a walk and perhaps a
        # second encoding, but only on this failure path.
        self.errors += 1
        found = find_unencodable(message["result"], "result")
        if found is not None:
            self.channel.send_error(request_id, "UnserializableResult", found[2])
            return
        try:
            size = len(encode_frame(message, sys.maxsize))
        except ProtocolError as exc:  # nothing the walk knows, e.g. nested too deeply
            self.channel.send_error(request_id, "UnserializableResult", str(exc))
            return
        if size <= self.channel.max_frame_size:
            # It encodes and fits: only the key check gave up, nested too deeply.
            self.channel.send_error(request_id, "UnserializableResult",
                                    "result is nested too deeply to check; flatten it")
            return
        self.channel.send_error(
            request_id, "ResultTooLarge",
            f"the result frame has {size} bytes, more than max_frame_size="
            f"{self.channel.max_frame_size}; return less data per call",
        )

    # -- built-in commands

    def ping(self, args: Any, ctx: Context) -> dict[str, Any]:
        return {"pid": os.getpid(), "worker_id": self.worker_id, "app": self.app.name}

    def health(self, args: Any, ctx: Context) -> dict[str, Any]:
        return {"status": "ok", "rss_mb": rss_mb(), "sessions": len(self.sessions),
                "calls": self.calls}

    def stats(self, args: Any, ctx: Context) -> dict[str, Any]:
        return {
            "calls": self.calls, "requests": self.requests, "errors": self.errors,
            "cancelled": self.cancelled, "sessions": len(self.sessions), "rss_mb": rss_mb(),
            "uptime": time.monotonic() - self.started, "pid": os.getpid(),
            "worker_id": self.worker_id, "app": self.app.name,
            "busy_poll": _poll_stats(self.poll_policy),
        }

    def cleanup_session(self, args: Any, ctx: Context) -> dict[str, Any]:
        session = ctx.session
        if isinstance(args, dict) and args.get("session") is not None:
            session = args["session"]
            if not isinstance(session, str):
                raise TypeError(f"cleanup_session: 'session' must be a string, got {session!r}")
        elif args is not None and not isinstance(args, dict):
            raise TypeError(f"cleanup_session: args must be an object or null, got {args!r}")
        return {"removed": self.sessions.drop(session)}

    def shutdown(self, args: Any, ctx: Context) -> dict[str, Any]:
        self.stopping = True  # the loop stops after this reply is written
        return {"shutting_down": True}


# --- start-up -----------------------------------------------------------------


def _start_failure(channel: Channel, exc: BaseException, message: str, code: int) -> NoReturn:
    """Report a failure before the hello: error hello on the channel, traceback on stderr."""
    tb = _format_exception(exc)
    try:
        sys.stderr.write(f"engine worker: {message}\n{tb}")
    except (OSError, ValueError):
        pass
    channel.send_error(0, type(exc).__name__, message, tb)
    _flush_and_exit(code)


def _flush_and_exit(code: int) -> NoReturn:
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    # os._exit: the app may have started non-daemon threads that would keep a
    # normal interpreter shutdown waiting forever.
    os._exit(code)


def _load(channel: Channel, options: Options) -> App:
    try:
        app = load_app(options.app)
    except BaseException as exc:  # SystemExit at import is a start failure too
        _start_failure(channel, exc, f"cannot load app {options.app!r}: "
                       f"{type(exc).__name__}: {_exception_message(exc)}", EXIT_START_FAILED)
    try:
        app.run_start_hooks()
    except BaseException as exc:
        _start_failure(channel, exc, f"on_start hook of app {app.name!r} failed: "
                       f"{type(exc).__name__}: {_exception_message(exc)}", EXIT_START_FAILED)
    return app


def main(argv: list[str] | None = None) -> NoReturn:
    global _serve_returned
    try:
        frame_fd = move_frame_channel()
    except OSError as exc:
        _die(EXIT_CHANNEL_BROKEN, f"no frame channel on fd 1 ({exc}); exiting")
    try:
        request_fd = move_request_channel()
    except OSError as exc:
        _die(EXIT_CHANNEL_BROKEN, f"no request channel on fd 0 ({exc}); exiting")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    watchdog = start_watchdog(stdin_fd=request_fd)
    channel = Channel(frame_fd)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
        adopt_parent_sys_path()
    except UsageError as exc:
        _start_failure(channel, exc, str(exc), EXIT_USAGE)
    channel.max_frame_size = options.max_frame_size
    channel.max_pickle_frame_size = options.pickle_frame_size
    channel.busy_poll = options.busy_poll
    worker = Worker(_load(channel, options), options.worker_id, channel, request_fd)
    worker.install_abandon_handler()
    watchdog.probe = worker.probe_abandon
    try:
        hello = encode_frame(worker.hello(), channel.max_frame_size)
    except ProtocolError as too_big:
        # The argument shapes are optional (only the test kit reads them):
        # a small max_frame_size must not stop a worker that could serve.
        try:
            hello = encode_frame(worker.hello(schemas=False), channel.max_frame_size)
        except ProtocolError as exc:
            _start_failure(channel, exc, f"cannot send the hello: {exc}", EXIT_START_FAILED)
        sys.stderr.write(f"engine worker: hello sent without its argument shapes: {too_big}\n")
    channel.write(hello)
    code = worker.serve()
    _serve_returned = True
    # A normal exit from here on, so the app's atexit handlers and finalizers run.
    sys.exit(code)


if __name__ == "__main__":
    main()
