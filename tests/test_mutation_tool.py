"""Layer 1: the mutation-testing command's configuration and bookkeeping
(tools/mutation.py; running mutmut itself is left to the command)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.imports import REPO

pytestmark = pytest.mark.layer1


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "tools" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_tool", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


tool = load_tool()


def test_every_listed_module_and_test_exists_and_every_equivalent_names_a_listed_module() -> None:
    _, table = tool.load_config()
    assert table, "no module to mutate"
    for module, tests in table.items():
        assert module.startswith("engine/") and tests
    accepted = tool.load_equivalents()
    for key in accepted:
        assert key.partition(":")[0] in table, key


def test_a_missing_test_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "m.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.mutmut]\n[tool.mutmut.engine-modules]\n"engine/m.py" = ["tests/test_m.py"]\n')
    with pytest.raises(SystemExit, match=r"names tests/test_m.py, which does not exist"):
        tool.load_config(tmp_path)


def test_the_scratch_configuration_adds_the_module_and_its_tests() -> None:
    text, table = tool.load_config()
    module, tests = next(iter(table.items()))
    section = tomllib.loads(tool.scratch_pyproject(text, module, tests))["tool"]["mutmut"]
    assert section["only_mutate"] == [module]
    assert section["pytest_add_cli_args_test_selection"] == tests
    assert section["source_paths"] == ["engine"]


def test_equivalents_need_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "equivalents.txt"
    path.write_text("# comment\n\nengine/x.py:f: a -> b :: same output\n")
    assert tool.load_equivalents(path) == {"engine/x.py:f: a -> b": "same output"}
    path.write_text("engine/x.py:f: a -> b\n")
    with pytest.raises(SystemExit, match=r"equivalents.txt:1: expected '<mutant> :: <reason>'"):
        tool.load_equivalents(path)


def test_a_mutant_is_keyed_by_function_and_change_not_by_number() -> None:
    diff = "\n".join([
        "--- engine/protocol.py",
        "+++ engine/protocol.py",
        "@@ -3,7 +3,7 @@",
        "     if expected is None:",
        "-        return   None",
        "+        return 1",
    ])
    method = "engine.protocol.xǁFrameDecoderǁnext_message__mutmut_12"
    assert tool.mutant_key("engine/protocol.py", method, diff) == (
        "engine/protocol.py:FrameDecoder.next_message: return None -> return 1")
    function = "engine.protocol.x_decode_body__mutmut_3"
    assert tool.mutant_key("engine/protocol.py", function, diff).startswith(
        "engine/protocol.py:decode_body: ")


def test_the_same_change_twice_in_a_function_gets_an_occurrence_number() -> None:
    def diff(line: int) -> str:
        return (f"--- m\n+++ m\n@@ -{line},1 +{line},1 @@\n"
                "-        return True\n+        return False")

    prefix = "engine.pool.core.xǁPoolCoreǁcheckin__mutmut_"
    diffs = {f"{prefix}10": diff(40), f"{prefix}9": diff(20), f"{prefix}2": "-a\n+b",
             "engine.pool.core.xǁPoolCoreǁcancel__mutmut_1": diff(60)}
    keys = {m.name.rpartition(".")[2]: m.key for m in tool.keyed_mutants("engine/pool/core.py",
                                                                         diffs)}
    plain = "engine/pool/core.py:PoolCore.checkin: return True -> return False"
    # Numbered in mutmut's order (9 before 10, though "10" < "9" as text).
    assert keys["xǁPoolCoreǁcheckin__mutmut_9"] == plain
    assert keys["xǁPoolCoreǁcheckin__mutmut_10"] == plain + " #2"
    assert keys["xǁPoolCoreǁcheckin__mutmut_2"] == "engine/pool/core.py:PoolCore.checkin: a -> b"
    # Another function's identical change starts its own count.
    assert keys["xǁPoolCoreǁcancel__mutmut_1"] == \
        "engine/pool/core.py:PoolCore.cancel: return True -> return False"


def test_the_score_leaves_accepted_equivalents_out() -> None:
    mutants = [tool.Mutant(f"m{i}", code) for i, code in enumerate([1, 1, 36, -24, 0, 0, 33])]
    result = tool.ModuleResult("engine/x.py", mutants, seconds=1.0, cpu=1.0)
    assert result.killed == 4  # a failing run or a time-out is a kill
    assert [m.status for m in mutants[4:]] == ["survived", "survived", "no tests"]
    result.equivalent.append((mutants[4], "same output"))
    assert result.score == 4 / 6
