"""engine's imports, read from the source with ``ast`` (nothing is imported).

Every import statement of a module counts, wherever it is: at the top level,
inside a function, under ``if TYPE_CHECKING:``. Each is tagged so that a check
can tell which ones run when the module is imported. A name imported from a
package resolves to the submodule when there is one (``from engine import
errors`` -> ``engine.errors``), else to the package itself (``from engine.pool
import Pool`` -> ``engine.pool``, its ``__init__``).
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    path: Path
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs
    lazy: bool  # inside a module-level ``def __getattr__`` (PEP 562): runs when a name is asked

    @property
    def where(self) -> str:
        shown = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{shown}:{self.line}"

    @property
    def runs_on_import(self) -> bool:
        return not (self.type_only or self.lazy)

    @property
    def top_level_name(self) -> str:
        return self.target.partition(".")[0]


def modules(package_dir: Path = ENGINE) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``__init__`` as the package)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def is_stdlib(name: str) -> bool:
    return name.partition(".")[0] in sys.stdlib_module_names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool,
             known: Mapping[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = source.split(".") if is_package else source.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in known else base


def imports_of(source: str, path: Path, known: Mapping[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lazy_getattr = {id(node) for node in tree.body
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    and node.name == "__getattr__"}
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool, lazy: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(Import(source, target, path, node.lineno, type_only, lazy)
                         for target in _targets(node, source, is_package, known))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, lazy)
            for child in node.orelse:
                visit(child, type_only, lazy)
            return
        lazy = lazy or id(node) in lazy_getattr
        for child in ast.iter_child_nodes(node):
            visit(child, type_only, lazy)

    visit(tree, False, False)
    return found


def all_imports(package_dir: Path = ENGINE) -> list[Import]:
    known = modules(package_dir)
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


# --- cycles --------------------------------------------------------------------------------


Graph = dict[str, dict[str, list[Import]]]  # module -> imported module -> the statements


def import_graph(found: Iterable[Import], known: Mapping[str, Path]) -> Graph:
    """Edges between the package's own modules, except lazy ``__getattr__`` imports."""
    graph: Graph = {name: {} for name in known}
    for imp in found:
        if not imp.lazy and imp.target in known and imp.target != imp.source:
            statements = graph[imp.source].setdefault(imp.target, [])
            if not any(s.line == imp.line for s in statements):  # one per statement
                statements.append(imp)
    return graph


def strongly_connected(graph: Graph) -> list[frozenset[str]]:
    """The groups of modules that import one another, directly or not (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def cycles_in(group: frozenset[str], graph: Graph, limit: int = 12) -> list[list[str]]:
    """Each simple cycle through the group once, as ``[a, b, a]``, smallest module first."""
    order = sorted(group)
    found: list[list[str]] = []
    for i, start in enumerate(order):
        allowed = set(order[i:])
        path = [start]

        def extend(v: str, start: str = start, allowed: set[str] = allowed,
                   path: list[str] = path) -> None:
            for w in sorted(graph[v]):
                if len(found) >= limit:
                    return
                if w == start:
                    found.append([*path, start])
                elif w in allowed and w not in path:
                    path.append(w)
                    extend(w)
                    path.pop()

        extend(start)
    return found


def describe_cycle(cycle: list[str], graph: Graph) -> str:
    """``a -> b -> a`` and, under it, where each import is."""
    lines = [" -> ".join(cycle)]
    for a, b in itertools.pairwise(cycle):
        lines += [f"    {imp.where}: {a} imports {b}"
                  + (" (under TYPE_CHECKING)" if imp.type_only else "")
                  for imp in graph[a][b]]
    return "\n".join(lines)
