"""The fakes' in-memory pipes (engine.testing.memory_pipe): pipe semantics the
channel relies on, and the wake-ups that replace a real pipe's notify_closing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from engine.process.transport import Interrupted, PeerGone, transport_for
from engine.testing.memory_pipe import PipeTransport, pipe_pair

pytestmark = pytest.mark.layer2


def transport() -> tuple[PipeTransport, trio.abc.SendStream, trio.abc.ReceiveStream]:
    to_child, child_stdin = pipe_pair()
    child_stdout, from_child = pipe_pair()
    io = transport_for(to_child, from_child)
    assert isinstance(io, PipeTransport)
    return io, child_stdout, child_stdin


async def test_bytes_in_order_then_eof() -> None:
    io, child_stdout, child_stdin = transport()
    await io.write(b"ab")
    await io.write(b"c")
    assert await child_stdin.receive_some() == b"abc"
    await child_stdout.send_all(b"xy")
    await child_stdout.aclose()
    assert await io.read() == b"xy"  # what was written before EOF is read first
    with pytest.raises(PeerGone, match="end of stream"):
        await io.read()


async def test_write_to_a_gone_reader_is_peer_gone() -> None:
    io, _, child_stdin = transport()
    await child_stdin.aclose()
    with pytest.raises(PeerGone):
        await io.write(b"lost")


@pytest.mark.parametrize("how", ["abort", "interrupt"])
async def test_abort_and_interrupt_wake_a_parked_read(how: str) -> None:
    io, child_stdout, _ = transport()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def reader() -> None:
                try:
                    await io.read()
                except (PeerGone, Interrupted) as exc:
                    errors.append(exc)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            io.abort() if how == "abort" else io.interrupt()
    assert [type(e) for e in errors] == [PeerGone if how == "abort" else Interrupted]
    if how == "interrupt":  # the transport stays usable
        await child_stdout.send_all(b"later")
        assert await io.read() == b"later"


async def test_a_cancelled_read_leaves_the_pipe_usable() -> None:
    io, child_stdout, _ = transport()
    with trio.move_on_after(0.01) as scope:
        await io.read()
    assert scope.cancelled_caught
    await child_stdout.send_all(b"ok")
    assert await io.read() == b"ok"
