"""The event catalogue is the truth: every event the code emits is declared,
carries exactly the measurements and metadata declared for it, and every
declared event is emitted by some run; the README's table is rendered from it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import engine
from engine import telemetry
from engine.pool.contract import DefaultPolicy
from engine.telemetry.events import EVENTS, markdown_table
from engine.testing.fakes import FakeContext, FakeWorkerFactory, Script

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "engine"
CATALOGUE = ENGINE / "telemetry" / "events.py"


# --- layer 1: the source emits declared names only ---------------------------------


def _engine_sources() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if p != CATALOGUE)


@pytest.mark.layer1
def test_no_event_name_is_spelled_outside_the_catalogue() -> None:
    spelled = []
    for path in _engine_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple) and node.elts \
                    and isinstance(node.elts[0], ast.Constant) and node.elts[0].value == "engine":
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name in ("emit", "_emit") and node.args \
                        and not isinstance(node.args[0], ast.Name | ast.Attribute):
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno} (emit)")
    assert not spelled, (
        "event names spelled out instead of using a constant from "
        f"engine/telemetry/events.py: {spelled}")


@pytest.mark.layer1
def test_readme_event_table_is_rendered_from_the_catalogue() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, (
        "README.md's event table differs from the catalogue; paste "
        "`python -c 'from engine.telemetry.events import markdown_table; "
        "print(markdown_table())'` into it")


@pytest.mark.layer1
def test_catalogue_entries_are_well_formed() -> None:
    for name, spec in EVENTS.items():
        assert spec.name == name and name[0] == "engine"
        assert spec.doc and "pool" in spec.metadata
        assert len(set(spec.metadata)) == len(spec.metadata)
        assert len(set(spec.measurements)) == len(spec.measurements)


# --- layer 2: what runs emit matches what is declared -------------------------------


class _GarbageOncePolicy(DefaultPolicy):
    """Answers the first checkout with something that is not a decision (a contract
    violation: that worker is removed), then behaves."""

    def __init__(self) -> None:
        self.answered = False

    def on_checkout(self, worker: Any, request: Any) -> Any:
        if self.answered:
            return super().on_checkout(worker, request)
        self.answered = True
        return "yes please"


@pytest.mark.layer2
async def test_every_emitted_event_matches_its_declaration_and_all_are_emitted(
        autojump_clock: trio.testing.MockClock) -> None:
    sick: list[bool] = []

    async def health(ctx: FakeContext, args: Any) -> Any:
        if sick:
            await trio.sleep_forever()
        return {"status": "ok"}

    factory = FakeWorkerFactory(Script(handlers={"health": health}))
    # Three failed starts in a row: backoff, a cooldown, and the breaker opens.
    factory.plan.extend(Script(crash_before_hello=3) for _ in range(3))
    with telemetry.capture() as seen, trio.fail_after(600):  # virtual seconds
        async with engine.open_pool(
            size=1, worker_factory=factory, max_restarts=1, restart_cooldown=1.0,
            breaker_threshold=2, breaker_reset=0.5, health_interval=1.0,
            health_timeout=0.5, session_ttl=5.0,
        ) as pool:
            # (Not wait_ready: it fails at once while the last starts failed.)
            await pool.wait_until(lambda view: len(view.live_workers()) == 1)
            await pool.call("echo", 1, session="ended")
            await pool.end_session("ended")
            await pool.call("echo", 2, session="expires")
            await trio.sleep(10)  # session_ttl passes; idle health checks pass
            sick.append(True)
            await trio.sleep(2)  # a health check fails
            sick.clear()
            with trio.move_on_after(1):  # abandoned in flight: the worker drains
                await pool.call("sleep", {"seconds": 5})
            await pool.call("echo", 3, session="lost")
            factory.workers[-1].kill()
            await pool.wait_ready(1, timeout=60)
        async with engine.open_pool(size=1, worker_factory=FakeWorkerFactory(Script()),
                                    policy=_GarbageOncePolicy()) as pool:
            await pool.wait_ready(1)
            await pool.call("echo", 4, checkout_timeout=1.0)

    undeclared = {c.event for c in seen} - set(EVENTS)
    assert not undeclared, f"emitted but not declared: {undeclared}"
    for captured in seen:
        spec = EVENTS[captured.event]
        assert set(captured.measurements) == set(spec.measurements), captured
        assert set(captured.metadata) == set(spec.metadata), captured
    never = set(EVENTS) - {c.event for c in seen}
    assert not never, f"declared but never emitted by this run: {never}"
