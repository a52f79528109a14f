"""Functions that tests run in workers with ``run_sync`` (tests/pool/test_run_sync.py).

Standard library only, so that a worker imports this module in a moment.
Those that block announce that they started on a FIFO (``marker``: a line
``started <tag>``), so a test waits for that, never for a sleep.
"""

import os
import sys
import threading
import time

from engine.workers import current_context, current_session


class CustomError(Exception):
    """An exception class of the app's own, with two arguments."""

    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class Unpicklable(Exception):
    """An exception whose instances cannot be pickled (they hold a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def identity(value):
    return value


def add(a, b=0, *, c=0):
    return a + b + c


def pid():
    return os.getpid()


def sys_path():
    return list(sys.path)


def raise_value_error(*args):
    raise ValueError(*args)


def raise_custom(code, detail):
    raise CustomError(code, detail)


def raise_unpicklable(message):
    raise Unpicklable(message)


def return_lock():
    return threading.Lock()


def loud(size):
    """Write ``size`` bytes to each of stdout and stderr, in lines of 1 KiB."""
    line = "x" * 1023 + "\n"
    for _ in range(size // 1024):
        sys.stdout.write(line)
        sys.stderr.write(line)
    sys.stdout.flush()
    sys.stderr.flush()
    return size


def touch(path):
    with open(path, "w") as f:
        f.write("ran")


def announce(marker, tag):
    with open(marker, "w") as f:
        f.write(f"started {tag}\n")


def wait_for_release(marker, tag, release):
    """Announce, then block until the test writes a line ("go\\n") to the FIFO
    ``release``. Unbuffered, three bytes: a buffered readline could take the
    line meant for another function waiting on the same FIFO."""
    announce(marker, tag)
    with open(release, "rb", buffering=0) as f:
        f.read(3)
    return f"released {tag}"


def sleep_after_announcing(marker, tag, seconds):
    announce(marker, tag)
    time.sleep(seconds)
    return "slept"


def interval(seconds):
    """(start, end) on the system's monotonic clock, which every process shares."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def spin(n):
    """CPU-bound work: n iterations of an integer loop."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def remember(value):
    current_session()["value"] = value
    return current_context().session


def recall():
    return current_session().get("value")


async def asynchronous(path):
    """An async function: run_sync must refuse it without running its body."""
    touch(path)


async def asynchronous_generator():
    yield 1


def read_stdin():
    return sys.stdin.read()


def exit_with(code):
    sys.exit(code)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt("raised by the function")
