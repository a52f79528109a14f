"""What workers print is seen (issue 18, point 6): ``PoolConfig.worker_output``.

``forward`` (default) writes each line to the parent's stderr as
``[worker-id] line`` through a bounded buffer and a writer thread, so a slow or
full stderr never blocks the pool; ``log`` logs it; ``discard`` drops it. All
three keep the stderr tail for crash reports.
"""

from __future__ import annotations

import io
import logging
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import trio

import engine
from engine.errors import WorkerCrashed
from engine.process.output import FORWARDER, StderrForwarder, line_sink

HANG_GUARD = 30.0
MIB = 1 << 20

NOISY_APP = """\
    import sys

    from engine.workers.app import App

    app = App("noisy")

    @app.command()
    def say(args, ctx):
        print(args)
        return None

    @app.command()
    def flood(args, ctx):
        # 1 MiB to each stream in one call: lines, then one long line on stderr.
        line = "o" * 99 + "\\n"
        sys.stdout.write(line * (args["mib"] * 1024 * 1024 // 100))
        sys.stdout.flush()
        sys.stderr.write("e" * (args["mib"] * 1024 * 1024) + "\\n")
        sys.stderr.write("flood done\\n")
        return "flooded"
"""


class BlockedStream(io.TextIOBase):
    """A stderr whose writes wait until released: a pipe nobody reads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return len(text)  # anything else writing to stderr in the test: not blocked
        self.entered.set()
        self.release.wait()
        self.text.append(text)
        return len(text)


@pytest.fixture
def noisy_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "noisy_app.py").write_text(textwrap.dedent(NOISY_APP))
    monkeypatch.syspath_prepend(str(tmp_path))  # workers inherit sys.path
    return "noisy_app"


async def flush_forwarder(forwarder: StderrForwarder = FORWARDER) -> None:
    assert await trio.to_thread.run_sync(forwarder.flush, 10.0)


# --- layers 1 and 2: the forwarder and the sinks ------------------------------------


@pytest.mark.layer2
async def test_the_forwarder_writes_lines_in_order() -> None:
    out = io.StringIO()
    forwarder = StderrForwarder(stream=lambda: out)
    for i in range(1000):
        forwarder.submit(f"[w-0.1] line {i}\n")
    await flush_forwarder(forwarder)
    assert out.getvalue() == "".join(f"[w-0.1] line {i}\n" for i in range(1000))
    assert forwarder.lines_dropped == 0


@pytest.mark.layer2
async def test_a_blocked_stderr_drops_lines_and_says_how_many() -> None:
    stream = BlockedStream()
    forwarder = StderrForwarder(max_pending_chars=1000, stream=lambda: stream)
    try:
        forwarder.submit("first\n")
        # The writer is stuck in write():
        await trio.to_thread.run_sync(stream.entered.wait, abandon_on_cancel=True)
        # submit() keeps returning at once: 10 accepted (100 chars each), the rest dropped.
        for i in range(500):
            forwarder.submit(f"{i:>98}\n")
        assert forwarder.lines_dropped == 490
    finally:
        stream.release.set()
    await flush_forwarder(forwarder)
    written = "".join(stream.text)
    assert written.startswith("first\n")
    assert written.endswith(f"{9:>98}\n[engine] 490 lines of worker output dropped: stderr "
                            "was not keeping up\n")


@pytest.mark.layer1
def test_the_sinks(caplog: pytest.LogCaptureFixture) -> None:
    assert line_sink("discard", "w-0.1") is None
    log = line_sink("log", "w-0.1")
    assert log is not None
    with caplog.at_level(logging.INFO, logger="engine.worker"):
        log("hello")
    record = caplog.records[-1]
    assert record.getMessage() == "[w-0.1] hello" and record.levelno == logging.INFO
    assert record.worker_id == "w-0.1"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="worker_output must be one of forward, log, discard"):
        line_sink("loud", "w-0.1")


@pytest.mark.layer1
def test_the_config_field_is_validated() -> None:
    assert engine.PoolConfig().worker_output == "forward"
    with pytest.raises(ValueError, match=r"PoolConfig\.worker_output must be one of forward, "
                                         r"log, discard, got 'loud'"):
        engine.PoolConfig(worker_output="loud")


# --- layer 3: real workers ---------------------------------------------------------


@pytest.mark.layer3
async def test_print_in_a_handler_reaches_the_parents_stderr_by_default(
        noisy_app: str, capfd: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=noisy_app, size=1, name="out") as pool:
            await pool.call("say", "hello from a handler")
    # The pool's close waited for the worker's last lines; then they are written.
    await flush_forwarder()
    assert "[out-0.1] hello from a handler\n" in capfd.readouterr().err


@pytest.mark.layer3
async def test_log_mode_logs_and_discard_mode_keeps_only_the_tail(
        noisy_app: str, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(HANG_GUARD), caplog.at_level(logging.INFO, logger="engine.worker"):
        async with engine.open_pool(app=noisy_app, size=1, name="logged",
                                    worker_output="log") as pool:
            await pool.call("say", "to the log")
        async with engine.open_pool(size=1, name="quiet", worker_output="discard",
                                    restart_backoff=(0.01, 0.05, 1.0)) as pool:
            async with pool.checkout() as lease:
                await lease.call("noise", {"text": "only in the tail"})
                with pytest.raises(WorkerCrashed) as crashed:
                    await lease.call("crash", {"code": 3})
    await flush_forwarder()
    assert "[logged-0.1] to the log" in caplog.messages
    assert crashed.value.stderr_tail == ("only in the tail",)
    assert not any("only in the tail" in message for message in caplog.messages)
    err = capfd.readouterr().err
    assert "to the log" not in err and "only in the tail" not in err


@pytest.mark.layer3
async def test_a_mebibyte_on_each_stream_in_one_call_returns(
        noisy_app: str, capfd: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(HANG_GUARD):
        async with engine.open_pool(app=noisy_app, size=1, name="flood") as pool:
            dropped_before = FORWARDER.lines_dropped
            assert await pool.call("flood", {"mib": 1}) == "flooded"
            assert await pool.call("say", "still here") is None
            assert pool.statistics().restarts == 0
    await flush_forwarder()
    err = capfd.readouterr().err
    forwarded = err.count("[flood-0.1] " + "o" * 99 + "\n")
    dropped = FORWARDER.lines_dropped - dropped_before
    # Every stdout line was forwarded or counted as dropped (and said so).
    assert forwarded + dropped >= MIB // 100
    assert dropped == 0 or "of worker output dropped" in err
    assert "[flood-0.1] still here\n" in err or dropped > 0


@pytest.mark.layer3
async def test_a_blocked_parent_stderr_never_blocks_the_pool(
        noisy_app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = BlockedStream()
    monkeypatch.setattr(sys, "stderr", stream)
    dropped_before = FORWARDER.lines_dropped
    try:
        with trio.fail_after(HANG_GUARD):
            async with engine.open_pool(app=noisy_app, size=1, name="blocked") as pool:
                await pool.call("say", "first")
                # The writer is stuck in write():
                await trio.to_thread.run_sync(stream.entered.wait, abandon_on_cancel=True)
                assert await pool.call("flood", {"mib": 1}) == "flooded"
                for i in range(20):
                    await pool.call("say", i)
                assert pool.statistics().restarts == 0
        assert FORWARDER.lines_dropped > dropped_before
    finally:
        stream.release.set()
    await flush_forwarder()
    assert "lines of worker output dropped: stderr was not keeping up" in "".join(stream.text)
