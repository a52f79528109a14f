"""Abandoned requests in the worker runtime, as a real subprocess (layer 3).

The parent's side of cooperative cancellation is tested with pools
(``tests/pool/test_cancellation.py``); here the runtime alone: an abandon frame
for the running request interrupts its handler (with the signal, or through
the watchdog when no signal comes), one for a request not started yet answers
it without running it, one for a request already answered is ignored, and
every request still gets exactly one reply.

Sequencing: the ``block`` handler below prints ``started <id>`` to stderr
(fd 1 is stderr in a worker) before it blocks, and the test waits for that line
(:meth:`WorkerProcess.wait_stderr`, a selector with a deadline): no sleeps.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from engine.protocol import ABANDON_SIGNAL, CANCELLED, abandon_message, encode_frame, make_request
from tests.workers.test_runtime import TIMEOUT, WorkerProcess, write_app

pytestmark = pytest.mark.layer3

APP = """
    import time
    from engine.workers.app import App, RequestAbandoned

    app = App("abandon")

    @app.command("block")
    def block(args, ctx):
        state = ctx.state
        state["step"] = "started"
        try:
            # Announced inside the try: the interrupt may come right after it.
            print(f"started {ctx.request_id}", flush=True)
            time.sleep(args.get("seconds", 60))
        finally:
            state["step"] = "cleaned up"  # try/finally keeps the state consistent
        return {"slept": True}

    @app.command("stubborn")
    def stubborn(args, ctx):
        deadline = time.monotonic() + args["seconds"]
        swallowed = 0
        announced = False
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not announced:
                    announced = True
                    print(f"started {ctx.request_id}", flush=True)
                time.sleep(left)
            except BaseException:
                swallowed += 1
        return {"swallowed": swallowed}

    @app.command("step")
    def step(args, ctx):
        return ctx.state.get("step")

    @app.command("mark")
    def mark(args, ctx):
        ctx.state["marked"] = ctx.state.get("marked", 0) + 1
        return ctx.state["marked"]
"""


class AbandonWorker(WorkerProcess):
    def wait_stderr(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until the worker wrote ``text`` on stderr (a protocol acknowledgement)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.stderr:
            if not self._pump(deadline):
                raise EOFError(f"worker closed stdout; stderr: {self.stderr_text()!r}")

    def abandon(self, request_id: int, *, signal_it: bool = True) -> None:
        self.send_raw(encode_frame(abandon_message(request_id)))
        if signal_it:
            os.kill(self.pid, ABANDON_SIGNAL)

    def reply(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.read_message(timeout)


@pytest.fixture
def worker(tmp_path: Path) -> Any:
    env = write_app(tmp_path, "abandon_app", APP)
    w = AbandonWorker(app="abandon_app", env=env)
    try:
        w.hello()
        yield w
    finally:
        w.close()


@pytest.mark.parametrize("signal_it", [True, False], ids=["signal", "watchdog"])
def test_abandon_interrupts_the_running_handler(worker: AbandonWorker, signal_it: bool) -> None:
    """With the signal (a local worker) or without it (through a launcher, the
    watchdog notices the frame): the sleeping handler is interrupted, its
    finally runs, the request is answered Cancelled and the worker serves on."""
    request_id = worker.send("block", {"seconds": 60}, session="a")
    worker.wait_stderr(f"started {request_id}")
    worker.abandon(request_id, signal_it=signal_it)
    reply = worker.reply()
    assert reply["id"] == request_id and not reply["ok"], reply
    assert reply["error"]["type"] == CANCELLED
    assert "interrupted" in reply["error"]["message"]
    assert "in block" in reply["error"]["traceback"]  # where it was interrupted
    assert worker.call("step", session="a") == "cleaned up"
    assert worker.call("ping")["pid"] == worker.pid
    assert worker.call("stats")["cancelled"] == 1


def test_a_request_abandoned_before_it_started_is_not_run(worker: AbandonWorker) -> None:
    """Request and abandon arrive together: answered Cancelled, never run."""
    worker.send_raw(encode_frame(make_request(1, "mark", None, "s"))
                    + encode_frame(abandon_message(1))
                    + encode_frame(make_request(2, "mark", None, "s")))
    worker.next_id = 3
    first, second = worker.reply(), worker.reply()
    assert first["id"] == 1 and first["error"]["type"] == CANCELLED
    assert "before its handler started" in first["error"]["message"]
    assert second == {"id": 2, "ok": True, "result": 1}  # the first mark never ran


def test_an_abandon_for_an_answered_request_is_ignored(worker: AbandonWorker) -> None:
    """The parent gave up just as the reply came: the abandon gets no reply, and
    the next request's reply is the next frame (nothing stray in between)."""
    request_id = worker.send("mark", None, "s")
    assert worker.reply()["id"] == request_id
    worker.abandon(request_id)  # the signal finds no handler running: nothing happens
    assert worker.request("mark", None, "s")["result"] == 2
    assert worker.call("stats")["cancelled"] == 0


def test_a_handler_that_swallows_the_interrupt_runs_on(worker: AbandonWorker) -> None:
    """``except BaseException`` catches RequestAbandoned: the handler finishes
    (the parent's grace decides whether to wait that long) and its normal
    reply is the one reply of the request."""
    request_id = worker.send("stubborn", {"seconds": 0.5})
    worker.wait_stderr(f"started {request_id}")
    worker.abandon(request_id)
    reply = worker.reply()
    assert reply == {"id": request_id, "ok": True, "result": {"swallowed": 1}}
    assert worker.call("ping")["pid"] == worker.pid


def test_the_signal_alone_does_nothing(worker: AbandonWorker) -> None:
    """No abandon frame: a stray signal interrupts nothing, idle or busy."""
    os.kill(worker.pid, ABANDON_SIGNAL)
    request_id = worker.send("block", {"seconds": 0.2})
    worker.wait_stderr(f"started {request_id}")
    os.kill(worker.pid, ABANDON_SIGNAL)
    assert worker.reply() == {"id": request_id, "ok": True, "result": {"slept": True}}


def test_the_default_app_hang_ignores_an_abandon(tmp_path: Path) -> None:
    """``hang`` only ends with a kill: abandoned, it carries on (the pool kills
    it once cancel_grace has passed)."""
    w = AbandonWorker()
    try:
        w.hello()
        # Both in one write: once the noise reply is back, hang is already read
        # (not abandoned before it started) and runs next.
        w.send_raw(encode_frame(make_request(1, "noise", {"text": "busy"}))
                   + encode_frame(make_request(2, "hang", {})))
        assert w.reply()["id"] == 1
        request_id = 2
        w.abandon(request_id)
        with pytest.raises(TimeoutError):
            w.reply(timeout=0.3)
        assert w.proc.poll() is None
    finally:
        w.close()


def test_an_app_handler_for_the_reserved_signal_is_replaced(tmp_path: Path) -> None:
    env = write_app(tmp_path, "usr2_app", """
        import signal
        from engine.workers.app import App
        app = App("usr2")
        signal.signal(signal.SIGUSR2, lambda *_: None)
    """)
    w = AbandonWorker(app="usr2_app", env=env)
    try:
        w.hello()
        w.wait_stderr("reserves to interrupt abandoned requests")
        assert "SIGUSR2" in w.stderr_text()
    finally:
        w.close()
    assert signal.SIGUSR2 == ABANDON_SIGNAL
