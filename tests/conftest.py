"""Test layers (design section 12) and shared fixtures.

``TEST_MODE`` selects how deep the suite goes:

* ``mock_adapter``     - layer 1: pure code (protocol, shapes, sans-IO core).
* ``bridge_mock``      - layers 1-2: the Trio pool over fake workers.
* ``full_integration`` - layers 1-3: real subprocess workers (default, CI).

An unknown value stops collection. Tests carry a ``layer1``/``layer2``/``layer3``
marker; a test above the selected layer is skipped with a message naming the
``TEST_MODE`` it needs.

Every test runs under a time limit (``timeout`` in pyproject, pytest-timeout);
:mod:`tests.time_limit` ends a hung Trio test through Trio, so its processes are
reaped and the rest of the run is unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from engine.testing.profiles import load_profile
from tests.leaks import child_pids, open_fds
from tests.time_limit import (  # noqa: F401 - hooks: every test's time limit, Trio-safe
    pytest_runtest_call,
    pytest_timeout_cancel_timer,
    pytest_timeout_set_timer,
)

load_profile()  # Hypothesis profiles dev / ci / campaign ($HYPOTHESIS_PROFILE, CI)

LAYERS = {"mock_adapter": 1, "bridge_mock": 2, "full_integration": 3}
_MODE_FOR_LAYER = {1: "mock_adapter", 2: "bridge_mock", 3: "full_integration"}


def _selected_layer() -> int:
    mode = os.environ.get("TEST_MODE", "full_integration")
    if mode not in LAYERS:
        raise pytest.UsageError(
            f"unknown TEST_MODE={mode!r}; use one of {', '.join(LAYERS)} "
            "(mock_adapter = layer 1, bridge_mock = layers 1-2, full_integration = all)"
        )
    return LAYERS[mode]


def pytest_configure(config: pytest.Config) -> None:
    _selected_layer()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = _selected_layer()
    for item in items:
        for layer in (3, 2, 1):
            if item.get_closest_marker(f"layer{layer}") is not None:
                if layer > selected:
                    item.add_marker(pytest.mark.skip(
                        reason=f"layer {layer} test: needs TEST_MODE={_MODE_FOR_LAYER[layer]}"
                        + (" (or unset)" if layer == 3 else " or higher")
                    ))
                break


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail any test that leaves a child process or a file descriptor behind."""
    before_fds = open_fds(collect=False)
    before_children = child_pids()
    yield
    leftover = child_pids() - before_children
    assert not leftover, f"test left child processes behind: {sorted(leftover)}"
    leaked = open_fds(collect=False) - before_fds
    if leaked:
        # Garbage may still hold a closed-over stream: collect, then judge.
        leaked = open_fds() - before_fds
    assert not leaked, f"test left file descriptors open: {sorted(leaked)}"
