"""The test-mode guards (layer 1): ``TEST_MODE`` picks the layers, an unknown
value stops the run, and a test above the selected layer is skipped saying
which mode it needs (the hooks of tests/conftest.py, called directly)."""

from __future__ import annotations

from typing import Any

import pytest

from tests import conftest

pytestmark = pytest.mark.layer1


class Item:
    """What the collection hook reads of a test item: its markers."""

    def __init__(self, layer: int) -> None:
        self.markers = [getattr(pytest.mark, f"layer{layer}")]

    def get_closest_marker(self, name: str) -> Any:
        return next((m.mark for m in self.markers if m.mark.name == name), None)

    def add_marker(self, marker: Any) -> None:
        self.markers.append(marker)

    def skip_reason(self) -> str | None:
        skip = self.get_closest_marker("skip")
        return None if skip is None else str(skip.kwargs["reason"])


@pytest.mark.parametrize("mode", ["everything", "", "FULL_INTEGRATION"])
def test_an_unknown_test_mode_stops_the_run(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("TEST_MODE", mode)
    with pytest.raises(pytest.UsageError, match=f"unknown TEST_MODE={mode!r}; use one of"):
        conftest.pytest_configure(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode, runs", [
    ("mock_adapter", {1}), ("bridge_mock", {1, 2}), ("full_integration", {1, 2, 3}),
])
def test_tests_above_the_selected_layer_are_skipped_naming_the_mode(
        monkeypatch: pytest.MonkeyPatch, mode: str, runs: set[int]) -> None:
    monkeypatch.setenv("TEST_MODE", mode)
    items = {layer: Item(layer) for layer in (1, 2, 3)}
    conftest.pytest_collection_modifyitems(None, list(items.values()))  # type: ignore[arg-type]
    for layer, item in items.items():
        reason = item.skip_reason()
        if layer in runs:
            assert reason is None
        else:
            needed = {2: "bridge_mock", 3: "full_integration"}[layer]
            assert reason is not None and reason.startswith(
                f"layer {layer} test: needs TEST_MODE={needed}")


def test_the_default_mode_runs_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MODE", raising=False)
    item = Item(3)
    conftest.pytest_collection_modifyitems(None, [item])  # type: ignore[arg-type]
    assert item.skip_reason() is None
