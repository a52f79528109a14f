"""PoolConfig validation (layer 1: pure, no pool is started)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.pool.config import PoolConfig, make_config

pytestmark = pytest.mark.layer1


@pytest.mark.parametrize(("field", "value"), [
    ("size", 0),
    ("size", 2.5),
    ("size", True),
    ("start_timeout", 0),
    ("start_timeout", float("nan")),
    ("checkout_timeout", -1),
    ("call_timeout", 0),
    ("max_waiters", 0),
    ("restart_backoff", (1.0, 0.5, 1.0)),
    ("restart_backoff", (0.1, 1.0, 2.0)),
    ("restart_backoff", (0.1, 1.0)),
    ("max_restarts", 0),
    ("health_interval", -0.5),
    ("max_health_failures", 0),
    ("max_calls_per_worker", 0),
    ("shutdown_grace", -1),
    ("cancel_grace", -0.1),
    ("cancel_grace", float("inf")),
    ("cancel_grace", float("nan")),
    ("cancel_grace", "1"),
    ("cancel_grace", None),
    ("affinity", "sticky"),
    ("app", ""),
    ("app", "a:b:c"),
    ("launcher", ("ssh", "")),
    ("env", {"A": 1}),
    ("lazy", "yes"),
    ("name", ""),
])
def test_bad_value_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        PoolConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        make_config(None, {field: value})


def test_cancel_grace_defaults_to_a_second_and_0_is_allowed() -> None:
    assert PoolConfig().cancel_grace == 1.0
    assert PoolConfig(cancel_grace=0).cancel_grace == 0
    assert make_config(None, {"cancel_grace": 0.25}).cancel_grace == 0.25


def test_unknown_keyword_is_named() -> None:
    with pytest.raises(ValueError, match="sizee"):
        make_config(None, {"sizee": 3})


def test_min_size_above_size() -> None:
    with pytest.raises(ValueError, match="min_size"):
        PoolConfig(size=2, min_size=3)


def test_overrides_apply_on_a_base_config() -> None:
    base = PoolConfig(size=3, call_timeout=1.0)
    config = make_config(base, {"size": 5, "launcher": ["sh"]})
    assert config.size == 5 and config.call_timeout == 1.0
    assert config.launcher == ("sh",)
    with pytest.raises(AttributeError):
        config.size = 1  # type: ignore[misc]
