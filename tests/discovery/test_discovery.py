"""Discovery (engine.discovery) and the client adapter (engine.client) over stub services."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import trio

from engine import client
from engine.client.shapes import ExecutionResult, PingInfo, ProgramInfo, ProgramList, Signature
from engine.discovery import (
    Service,
    detect_service,
    lookup_kind,
    register,
    registered,
    whereis,
)
from engine.errors import BridgeUnavailable, RemoteError, ResponseShapeError

pytestmark = pytest.mark.layer1

NOTHING = (
    "Python bridge not available: nothing is registered; give open_pool() or open_bridge() "
    "a name= so that it registers itself"
)


class Stub:
    """A service whose ``call`` returns its inputs, or a scripted answer per command."""

    def __init__(self, kind: str, name: str | None, *, closed: bool = False,
                 answers: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.closed = closed
        self.answers = answers or {}
        self.calls: list[tuple[str, Any, str | None]] = []

    async def call(self, command: str, args: Any = None, *, session: str | None = None) -> Any:
        self.calls.append((command, args, session))
        await trio.lowlevel.checkpoint()
        if command in self.answers:
            return self.answers[command]
        return {"service": self.name, "command": command, "args": args, "session": session}


class PoolLike:
    """Shaped like the real Pool: class-level kind, closed property, extra call options.

    Assigning it to ``Service`` below is checked by mypy: the pool's wider
    ``call`` signature must still satisfy the protocol.
    """

    kind = "pool"

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(
        self, command: str, args: Any = None, *, session: str | None = None,
        timeout: float | None = None,
        retry: object = None,
    ) -> Any:
        await trio.lowlevel.checkpoint()
        return command


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    # The registry is process-wide: a test that leaves an entry would change
    # what every later test detects.
    assert registered() == {}, "a previous test left a registration behind"
    yield
    assert registered() == {}, "this test left a registration behind"


# --- the pool x bridge matrix ---------------------------------------------------

STATES = ("live", "closed", "absent")


@contextmanager
def services(pool_state: str, bridge_state: str) -> Iterator[tuple[Stub, Stub]]:
    """Register pool 'p' then bridge 'b' in the given states (absent: not registered)."""
    pool = Stub("pool", "p", closed=pool_state == "closed")
    bridge = Stub("bridge", "b", closed=bridge_state == "closed")
    with ExitStack() as stack:
        if pool_state != "absent":
            stack.enter_context(register("p", pool))
        if bridge_state != "absent":
            stack.enter_context(register("b", bridge))
        yield pool, bridge


DETECT = [
    ("live", "live", "pool"),
    ("live", "closed", "pool"),
    ("live", "absent", "pool"),
    ("closed", "live", "bridge"),
    ("absent", "live", "bridge"),
    ("closed", "closed",
     "Python bridge not available: pool 'p' is registered but closed; "
     "bridge 'b' is registered but closed"),
    ("closed", "absent", "Python bridge not available: pool 'p' is registered but closed"),
    ("absent", "closed", "Python bridge not available: bridge 'b' is registered but closed"),
    ("absent", "absent", NOTHING),
]


@pytest.mark.parametrize(("pool_state", "bridge_state", "expected"), DETECT)
def test_detect_service_matrix(pool_state: str, bridge_state: str, expected: str) -> None:
    with services(pool_state, bridge_state) as (pool, bridge):
        if expected in ("pool", "bridge"):
            assert detect_service() is {"pool": pool, "bridge": bridge}[expected]
        else:
            with pytest.raises(BridgeUnavailable) as info:
                detect_service()
            assert str(info.value) == expected


def by_name_expectation(own: str, other: str, name: str, other_name: str) -> str:
    """What detect_service(name) gives: 'found' or the exact error text."""
    kind = {"p": "pool", "b": "bridge"}[name]
    if own == "live":
        return "found"
    if own == "closed":
        return f"Python bridge not available: {kind} {name!r} is registered but closed"
    rest = f" (registered: {other_name!r})" if other != "absent" else ""
    return f"Python bridge not available: nothing is registered as {name!r}{rest}"


@pytest.mark.parametrize("pool_state", STATES)
@pytest.mark.parametrize("bridge_state", STATES)
def test_lookup_by_name_and_by_kind_matrix(pool_state: str, bridge_state: str) -> None:
    with services(pool_state, bridge_state) as (pool, bridge):
        for service, own, other, name, other_name in [
            (pool, pool_state, bridge_state, "p", "b"),
            (bridge, bridge_state, pool_state, "b", "p"),
        ]:
            live = service if own == "live" else None
            assert whereis(name) is live
            assert lookup_kind(service.kind) is live
            expected = by_name_expectation(own, other, name, other_name)
            if expected == "found":
                assert detect_service(name) is service
            else:
                with pytest.raises(BridgeUnavailable) as info:
                    detect_service(name)
                assert str(info.value) == expected


def test_exact_by_name_messages() -> None:
    # The generated expectations above, spelled out once.
    with pytest.raises(BridgeUnavailable, match=r"^Python bridge not available: nothing is "
                       r"registered as 'x'$"):
        detect_service("x")
    with register("p", Stub("pool", "p")), register("b", Stub("bridge", "b")):
        with pytest.raises(BridgeUnavailable) as info:
            detect_service("x")
    assert str(info.value) == (
        "Python bridge not available: nothing is registered as 'x' (registered: 'p', 'b')"
    )
    assert info.value.why == "nothing is registered as 'x' (registered: 'p', 'b')"


def test_most_recent_live_pool_wins_and_closing_falls_back() -> None:
    old, new = Stub("pool", "old"), Stub("pool", "new")
    bridge = Stub("bridge", "b")
    with register("b", bridge), register("old", old), register("new", new):
        assert detect_service() is new
        new.closed = True
        assert detect_service() is old
        old.closed = True
        assert detect_service() is bridge
        assert lookup_kind("pool") is None


def test_service_of_another_kind_is_found_by_name_only() -> None:
    other = Stub("worker", "w")
    with register("w", other):
        assert whereis("w") is other
        assert lookup_kind("worker") is other
        assert detect_service("w") is other
        with pytest.raises(BridgeUnavailable) as info:
            detect_service()
    assert str(info.value) == (
        "Python bridge not available: worker 'w' is registered but is neither a pool nor a bridge"
    )


# --- register ------------------------------------------------------------------


def test_register_yields_the_service_and_unregisters_on_exit() -> None:
    pool = Stub("pool", "p")
    with register("p", pool) as entered:
        assert entered is pool
        assert registered() == {"p": pool}
    assert whereis("p") is None


def test_register_unregisters_when_the_block_raises() -> None:
    pool = Stub("pool", "p")
    with pytest.raises(RuntimeError, match="boom"), register("p", pool):
        raise RuntimeError("boom")
    assert registered() == {}


async def test_register_unregisters_when_the_block_is_cancelled() -> None:
    with trio.move_on_after(0.01):
        with register("p", Stub("pool", "p")):
            await trio.sleep_forever()
    assert registered() == {}


def test_duplicate_live_name_raises() -> None:
    with register("p", Stub("pool", "p")):
        with pytest.raises(ValueError) as info, register("p", Stub("bridge", "p2")):
            pass  # pragma: no cover - never entered
        assert str(info.value) == (
            "a live pool is already registered as 'p'; close it first or pick another name"
        )
        assert len(registered()) == 1


def test_closed_registration_is_replaced_and_its_exit_keeps_the_new_one() -> None:
    old, new = Stub("pool", "p"), Stub("pool", "p")
    with ExitStack() as stack:
        stack.enter_context(register("p", old))
        old.closed = True
        with register("p", new):
            stack.close()  # the old registration's exit runs while the new one holds the name
            assert whereis("p") is new
        assert registered() == {}


def test_register_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="non-empty string"), register("", Stub("pool", "")):
        pass  # pragma: no cover
    with pytest.raises(TypeError, match="is not a service"), register("x", object()):  # type: ignore[type-var]
        pass  # pragma: no cover


def test_registered_is_a_snapshot_including_closed_services() -> None:
    closed = Stub("bridge", "b", closed=True)
    with register("b", closed):
        snapshot = registered()
        assert snapshot == {"b": closed}
        snapshot.clear()
        assert registered() == {"b": closed}


def test_registry_is_shared_by_sequential_trio_runs() -> None:
    pool = Stub("pool", "p")

    async def first() -> None:
        with register("p", pool):
            assert await client.execute("ping") == {
                "service": "p", "command": "ping", "args": None, "session": None,
            }

    async def second() -> None:
        with pytest.raises(BridgeUnavailable):
            detect_service()
        with register("p", pool):  # the first run's exit freed the name
            assert detect_service() is pool

    trio.run(first)
    trio.run(second)


def test_stubs_and_pool_shaped_classes_satisfy_the_protocol() -> None:
    stub: Service = Stub("pool", "p")
    pool_like: Service = PoolLike("p")
    assert isinstance(stub, Service)
    assert isinstance(pool_like, Service)


# --- client.execute ---------------------------------------------------------------


async def test_execute_goes_through_detection() -> None:
    pool, bridge = Stub("pool", "p"), Stub("bridge", "b")
    with register("b", bridge), register("p", pool):
        result = await client.execute("echo", {"x": 1}, session="s1")
    assert result == {"service": "p", "command": "echo", "args": {"x": 1}, "session": "s1"}
    assert pool.calls == [("echo", {"x": 1}, "s1")]
    assert bridge.calls == []


async def test_execute_with_a_name_or_a_service() -> None:
    pool, bridge = Stub("pool", "p"), Stub("bridge", "b")
    with register("b", bridge), register("p", pool):
        assert (await client.execute("echo", service="b"))["service"] == "b"
    # A service object is used as given, registered or not, even closed: its
    # own error says more than discovery could.
    closed = Stub("pool", "gone", closed=True)
    assert (await client.execute("echo", [1], service=closed))["args"] == [1]
    assert (await client.execute("echo", service=PoolLike("x"))) == "echo"


async def test_execute_without_any_service_raises_bridge_unavailable() -> None:
    with pytest.raises(BridgeUnavailable) as info:
        await client.execute("ping")
    assert str(info.value) == NOTHING
    with register("p", Stub("pool", "p", closed=True)), pytest.raises(BridgeUnavailable) as info:
        await client.execute("ping", service="p")
    assert str(info.value) == "Python bridge not available: pool 'p' is registered but closed"


# --- typed helpers -------------------------------------------------------------------

P1 = {"id": "p1", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"}
INFO1 = ProgramInfo(id="p1", signature=Signature(inputs=("a",), outputs=("b",)), handler="echo")


async def test_create_program_sends_its_arguments_and_parses_the_answer() -> None:
    stub = Stub("pool", "p", answers={"create_program": P1})
    info = await client.create_program("p1", ["a"], ("b",), "echo", session="s", service=stub)
    assert info == INFO1
    assert stub.calls == [(
        "create_program",
        {"id": "p1", "signature": {"inputs": ["a"], "outputs": ["b"]}, "handler": "echo"},
        "s",
    )]


async def test_create_program_sends_a_description_only_when_given() -> None:
    stub = Stub("pool", "p", answers={"create_program": {**P1, "description": "d"}})
    info = await client.create_program("p1", ["a"], ["b"], "echo", description="d", service=stub)
    assert info.extra == {"description": "d"}
    assert stub.calls[0][1]["description"] == "d"


class Raising(Stub):
    """A stub whose calls fail the way a worker's handler does."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__("pool", "p")
        self.error = error

    async def call(self, command: str, args: Any = None, *, session: str | None = None) -> Any:
        await trio.lowlevel.checkpoint()
        raise self.error


async def test_delete_program_of_an_unknown_id_is_false() -> None:
    missing = RemoteError(type="ProgramNotFound", message="no program 'p1'")
    assert await client.delete_program("p1", service=Raising(missing)) is False
    other = RemoteError(type="ValueError", message="'id' must be a string")
    with pytest.raises(RemoteError) as info:
        await client.delete_program("p1", service=Raising(other))
    assert info.value is other


async def test_create_program_refuses_a_string_as_field_names() -> None:
    with pytest.raises(TypeError, match="not a string"):
        await client.create_program("p1", "ab", [], "echo", service=Stub("pool", "p"))


@pytest.mark.parametrize(
    "answer", [{"programs": [P1], "total_count": 1}, [P1]], ids=["map", "legacy-list"]
)
async def test_list_programs_accepts_map_and_list(answer: Any) -> None:
    stub = Stub("pool", "p", answers={"list_programs": answer})
    with register("p", stub):
        assert await client.list_programs(session="s") == ProgramList(programs=(INFO1,))
    assert stub.calls == [("list_programs", {}, "s")]


async def test_other_helpers_parse_their_answers() -> None:
    stub = Stub("bridge", "b", answers={
        "execute_program": {"outputs": {"b": 2}},
        "get_program_info": P1,
        "delete_program": {"deleted": True},
        "ping": {"pid": 42, "worker_id": "w-0", "app": "programs"},
    })
    with register("b", stub):
        assert await client.execute_program("p1", {"a": 2}) == ExecutionResult(outputs={"b": 2})
        assert await client.get_program_info("p1") == INFO1
        assert await client.delete_program("p1") is True
        assert await client.ping() == PingInfo(pid=42, worker_id="w-0")
    assert [call[:2] for call in stub.calls] == [
        ("execute_program", {"id": "p1", "inputs": {"a": 2}}),
        ("get_program_info", {"id": "p1"}),
        ("delete_program", {"id": "p1"}),
        ("ping", None),
    ]


BAD_ANSWERS = [
    ("list_programs", {"programs": [P1], "total_count": 2},
     "unexpected shape for list_programs answer: total_count is 2 but programs has 1 entry"),
    ("list_programs", {"programs": [P1]},
     "unexpected shape for list_programs answer: missing key 'total_count' in the answer"),
    ("create_program", "ok",
     "unexpected shape for create_program answer: the answer must be a map, got a string "
     "('ok')"),
    ("create_program", {**P1, "id": "p2"},
     "unexpected shape for create_program answer: id is 'p2', expected 'p1'"),
    ("get_program_info", None,
     "unexpected shape for get_program_info answer: the answer must be a map, got null"),
    ("execute_program", {"b": 2},
     "unexpected shape for execute_program answer: missing key 'outputs' in the answer"),
    ("delete_program", "yes",
     "unexpected shape for delete_program answer: the answer must be a boolean or a map "
     "{'deleted': bool}, got a string ('yes')"),
    ("ping", {"pid": 1.0, "worker_id": "w"},
     "unexpected shape for ping answer: pid must be a positive integer, got a float (1.0)"),
]


async def call_helper(command: str, stub: Stub) -> Any:
    if command == "list_programs":
        return await client.list_programs(service=stub)
    if command == "create_program":
        return await client.create_program("p1", ["a"], ["b"], "echo", service=stub)
    if command == "get_program_info":
        return await client.get_program_info("p1", service=stub)
    if command == "execute_program":
        return await client.execute_program("p1", {"a": 1}, service=stub)
    if command == "delete_program":
        return await client.delete_program("p1", service=stub)
    return await client.ping(service=stub)


@pytest.mark.parametrize(("command", "answer", "message"), BAD_ANSWERS)
async def test_helpers_raise_shape_errors_on_bad_answers(
    command: str, answer: Any, message: str
) -> None:
    stub = Stub("pool", "p", answers={command: answer})
    with pytest.raises(ResponseShapeError) as info:
        await call_helper(command, stub)
    assert str(info.value) == message
