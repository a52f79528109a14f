"""Layer 3: discovery, the client and response shapes against real workers (issue 6)."""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import client
from engine.discovery import detect_service, whereis
from engine.errors import BridgeUnavailable, WorkerCrashed

pytestmark = pytest.mark.layer3

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


async def test_ten_concurrent_sessions_see_only_their_own_programs() -> None:
    name = unique("clientpool")
    async with engine.open_pool(size=3, name=name) as pool:
        await pool.wait_ready(3, timeout=20)
        seen: dict[str, set[str]] = {}

        async def session_work(index: int) -> None:
            session = f"s{index}"
            mine = {f"{session}-p{k}" for k in range(index % 4 + 1)}
            for program_id in sorted(mine):
                info = await client.create_program(program_id, ["a"], ["b"], "echo",
                                                   session=session)
                assert info.id == program_id
            listing = await client.list_programs(session=session)
            assert listing.total_count == len(listing.programs)
            seen[session] = {p.id for p in listing.programs}
            assert seen[session] == mine
            result = await client.execute_program(sorted(mine)[0], {"a": index},
                                                  session=session)
            assert dict(result.outputs) == {"b": index}

        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(session_work, index)
        assert len(seen) == 10
        for a, b in itertools.combinations(seen.values(), 2):
            assert not a & b
        assert pool.statistics().sessions == 10


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(n=st.integers(min_value=0, max_value=20), others=st.integers(min_value=1, max_value=3))
def test_total_count_matches_programs_from_real_workers(n: int, others: int) -> None:
    async def scenario() -> None:
        async with engine.open_pool(size=2) as pool:
            for k in range(others):
                await client.create_program(f"other{k}", ["x"], ["y"], "echo",
                                            session=f"other{k}", service=pool)
            for k in range(n):
                await client.create_program(f"p{k}", ["a"], ["b"], "echo",
                                            session="main", service=pool)
            listing = await client.list_programs(session="main", service=pool)
            assert listing.total_count == n == len(listing.programs)
            raw = await pool.call("list_programs", {}, session="main")
            assert isinstance(raw, dict) and raw["total_count"] == n

    trio.run(scenario)


async def test_detect_service_prefers_live_pool_then_bridge() -> None:
    pool_name, bridge_name = unique("dpool"), unique("dbridge")
    async with engine.open_bridge(name=bridge_name) as bridge:
        assert detect_service() is bridge
        async with engine.open_pool(size=1, name=pool_name) as pool:
            assert detect_service() is pool
            assert whereis(bridge_name) is bridge
            ping = await client.ping()  # through the pool
            assert ping.pid in pool.worker_pids()
        # The pool closed: it counts as absent; the bridge serves.
        assert whereis(pool_name) is None
        assert detect_service() is bridge
        assert (await client.ping(service=bridge_name)).pid > 0
    with pytest.raises(BridgeUnavailable, match=r"^Python bridge not available:"):
        detect_service()


async def test_bridge_restarts_its_worker_after_a_crash() -> None:
    async with engine.open_bridge(restart_backoff=(0.01, 0.05, 1.0)) as bridge:
        await bridge.wait_ready(timeout=20)
        first = await bridge.call("ping")
        with pytest.raises(WorkerCrashed) as crash:
            await bridge.call("crash", {"code": 3})
        assert crash.value.exit_code == 3
        await bridge.wait_ready(timeout=20)
        second = await bridge.call("ping")
        assert second["pid"] != first["pid"]
        assert bridge.statistics().restarts == 1


async def test_open_bridge_rejects_a_size() -> None:
    with pytest.raises(ValueError, match="size"):
        async with engine.open_bridge(size=2):
            pass  # pragma: no cover
