"""docs/VALIDATION.md stays true (layer 1; reads files, imports test modules).

Every test id it names (``tests/...::test_name``) must exist, every bench row
it names (bench `section`: `row`) must be one the bench prints, every tool it
names must exist, and every metric of issue 17 must have its row.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from bench.run import SECTIONS
from bench.table import rows
from tests.bench.test_table import _remote, results
from tests.imports import REPO

pytestmark = pytest.mark.layer1

REPORT = REPO / "docs" / "VALIDATION.md"
TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
BENCH_ROW = re.compile(r"bench `(\w+)`: `([^`]+)`")
TOOL = re.compile(r"`(tools/[\w.-]+)")
# Issue 17's table, in its words.
METRICS = ("checkout success (1)", "session affinity hit rate (2)",
           "worker recovery after a kill (2/3)",
           "availability of idempotent calls under repeated kills, with `Retry` (3)",
           "hung-worker detection (2)", "pool initialisation, 4 workers (2/3)",
           "full test suite (4)", "CI reliability (4)")
PHASE_1 = ("checkout contract returns", "liveness check before hand-off",
           "map-vs-list assertions", "test-mode guards", "test pool helpers",
           "service detection with registry fallback")


def missing_tests(text: str) -> list[str]:
    """The test ids named in ``text`` that do not exist."""
    missing = []
    for path, name in TEST_ID.findall(text):
        module = path.removesuffix(".py").replace("/", ".")
        if not (REPO / path).is_file() or not callable(
                getattr(importlib.import_module(module), name, None)):
            missing.append(f"{path}::{name}")
    return missing


def bench_rows(section: str) -> set[str]:
    """The row labels the bench table prints for ``section`` (synthetic figures
    from the table's own tests, in which every count is the default's)."""
    figures = results()
    figures["remote"] = _remote([0.5])
    only = {"machine": figures["machine"], section: figures[section]}
    return {row[0] for row in rows(only)}


def missing_bench_rows(text: str) -> list[str]:
    return [f"{section}: {row}" for section, row in BENCH_ROW.findall(text)
            if section not in SECTIONS or row not in bench_rows(section)]


def table_rows(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


def test_every_named_test_exists() -> None:
    text = REPORT.read_text(encoding="utf-8")
    assert len(TEST_ID.findall(text)) >= 20
    assert missing_tests(text) == []


def test_every_named_bench_row_is_printed_by_the_bench() -> None:
    text = REPORT.read_text(encoding="utf-8")
    assert len(BENCH_ROW.findall(text)) >= 6
    assert missing_bench_rows(text) == []


def test_every_named_tool_exists() -> None:
    text = REPORT.read_text(encoding="utf-8")
    tools = set(TOOL.findall(text))
    assert tools
    assert [t for t in sorted(tools) if not (REPO / t).is_file()] == []


def test_every_metric_and_phase_1_fix_has_its_row() -> None:
    rows = table_rows(REPORT.read_text(encoding="utf-8"))
    assert [m for m in (*METRICS, *PHASE_1) if m not in rows] == []


def test_the_checks_catch_a_report_that_rotted() -> None:
    rotted = ("`tests/pool/test_origin_metrics.py::test_500_checkouts_all_succeed`, "
              "`tests/pool/test_origin_metrics.py::test_a_renamed_test`, "
              "`tests/pool/test_gone.py::test_x`; bench `startup`: `pool start, 4 workers`, "
              "bench `startup`: `pool warp, 4 workers`, bench `nosuch`: `pool start, 4 workers`")
    assert missing_tests(rotted) == ["tests/pool/test_origin_metrics.py::test_a_renamed_test",
                                     "tests/pool/test_gone.py::test_x"]
    assert missing_bench_rows(rotted) == ["startup: pool warp, 4 workers",
                                          "nosuch: pool start, 4 workers"]


def test_the_report_is_where_the_readers_look() -> None:
    assert Path(REPORT).is_file()
