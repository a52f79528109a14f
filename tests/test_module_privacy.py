"""No module reads another module's private names (layer 1, static).

A name starting with ``_`` belongs to the module that defines it. This parses
every module of engine and fails on ``anything._name`` or ``from x import
_name`` where ``_name`` is not defined in the same module, even on ``self``: a
subclass in another module must use its base class's public interface, not the
base's private state. (Two modules defining the same private name would hide a
violation: the check is by name, not by type.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.layer1

ROOT = Path(__file__).resolve().parent.parent
CHECKED = sorted((ROOT / "engine").rglob("*.py"))
# Private by spelling only: documented parts of the standard library.
STDLIB_ALLOWED = {"_exit"}  # os._exit


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.Module) -> set[str]:
    """Every private name this module defines: functions, classes, attributes it
    assigns (``x._name = ...``), class-level names and ``__slots__`` entries."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            for item in ast.walk(node.value):
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    names.add(item.value)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if is_private(n)}


def foreign_private_uses(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = defined_names(tree) | STDLIB_ALLOWED
    where = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own:
            found.append(f"{where}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if is_private(alias.name):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_uses_only_its_own_private_names(path: Path) -> None:
    assert foreign_private_uses(path) == []


def test_the_check_sees_a_foreign_private_name(tmp_path: Path) -> None:
    # The check itself can fail: a subclass reading its base's private state,
    # and a private import, are both reported; its own privates are not.
    module = tmp_path / "sample.py"
    module.write_text(
        "from elsewhere import Base, _helper\n"
        "class Sub(Base):\n"
        "    __slots__ = ('_mine',)\n"
        "    def f(self):\n"
        "        self._mine = 1\n"
        "        return self._mine + self._basestate\n"
    )
    assert foreign_private_uses(module, root=tmp_path) == [
        "sample.py:1: from elsewhere import _helper", "sample.py:6: ._basestate"]
