"""Layer 1: PoolConfig validation names the bad field."""

from __future__ import annotations

from typing import Any

import pytest

from engine.pool.config import PoolConfig, make_config

pytestmark = pytest.mark.layer1


@pytest.mark.parametrize(("field", "value"), [
    ("size", 0), ("size", -1), ("size", 1.5), ("size", True),
    ("start_timeout", 0), ("start_timeout", -1.0), ("checkout_timeout", "5"),
    ("call_timeout", 0), ("max_waiters", 0), ("affinity", "sticky"),
    ("app", ""), ("app", "a:b:c"), ("app", ":x"), ("restart_backoff", (1.0, 0.5, 0.5)),
    ("restart_backoff", (0.1, 1.0, 2.0)), ("restart_backoff", (0.1,)),
    ("launcher", ("ssh", "")), ("env", {"A": 1}), ("name", ""), ("min_size", 10),
    ("shutdown_grace", -1), ("health_interval", 0), ("max_rss_mb", -5),
    ("worker_factory", 42),
])
def test_invalid_values_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        make_config(None, {field: value})


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValueError, match="sise"):
        make_config(None, {"sise": 3})


def test_overrides_apply_to_base_and_config_is_frozen() -> None:
    base = PoolConfig(size=2, app="engine.workers.programs:app")
    config = make_config(base, {"call_timeout": 1.5, "launcher": ["env"]})
    assert config.size == 2 and config.call_timeout == 1.5
    assert config.launcher == ("env",)
    with pytest.raises(AttributeError):
        config.size = 3  # type: ignore[misc]


def test_non_config_base_is_rejected() -> None:
    with pytest.raises(ValueError, match="PoolConfig"):
        make_config({"size": 2}, {})  # type: ignore[arg-type]
