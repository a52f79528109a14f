"""The tree keeps its two structural rules (layer 1; reads source with ``ast``, imports nothing).

1. No import cycle among engine's modules. Every import statement counts:
   top level, inside functions, under ``if TYPE_CHECKING:`` (a type-only cycle
   still ties two modules together). The one exception is a module-level
   ``def __getattr__`` (PEP 562 lazy re-export), which runs only when a name is
   asked for.
2. The worker side (``engine/workers/``, the child end of the pipe) imports only
   the standard library, the ``engine`` package itself, ``engine.errors``,
   ``engine.protocol``, ``engine.busy_poll`` and its own folder, wherever the
   import sits. What it shares runs in every worker too, so those modules (and
   ``engine/__init__.py``) import only the standard library and each other when
   imported.

Found cycles that someone is removing are listed in :data:`KNOWN_CYCLES`; the
entry must go once the cycle is gone. (That no module reads another's private
names is checked by tests/test_module_privacy.py.)
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.imports import (
    ENGINE,
    Import,
    all_imports,
    cycles_in,
    describe_cycle,
    import_graph,
    imports_of,
    is_stdlib,
    modules,
    strongly_connected,
)

pytestmark = pytest.mark.layer1

KNOWN_CYCLES: dict[frozenset[str], str] = {}

# What the child end may import besides the standard library and engine.workers.*.
WORKER_SIDE_SHARED = ("engine.errors", "engine.protocol", "engine.busy_poll")
WORKER_SIDE_ALLOWED = ("engine", *WORKER_SIDE_SHARED)


def _engine_graph() -> tuple[list[Import], dict[str, Path]]:
    known = modules(ENGINE)
    return all_imports(ENGINE), known


def test_the_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    # A package laid out like engine, with one import of each kind.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""\
        TYPE_CHECKING = False
        if TYPE_CHECKING:
            from pkg.sub.leaf import Thing
        else:
            import json
        def __getattr__(name):
            from pkg import lazy
            return lazy
    """))
    (pkg / "lazy.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\nfrom .. import Name\n")
    (pkg / "sub" / "leaf.py").write_text(textwrap.dedent("""\
        import typing
        from pkg import sub, Missing
        from .other_leaf import x
        def f():
            import trio.testing
    """))
    known = modules(pkg)
    assert set(known) == {"pkg", "pkg.lazy", "pkg.sub", "pkg.sub.leaf"}
    seen = {(i.source, i.target, i.line, i.type_only, i.lazy)
            for name, path in known.items() for i in imports_of(name, path, known)}
    assert seen == {
        ("pkg", "pkg.sub.leaf", 3, True, False),
        ("pkg", "json", 5, False, False),
        ("pkg", "pkg.lazy", 7, False, True),
        ("pkg.sub", "pkg.sub.leaf", 1, False, False),
        ("pkg.sub", "pkg", 2, False, False),  # a name from the parent: its __init__
        ("pkg.sub.leaf", "typing", 1, False, False),
        ("pkg.sub.leaf", "pkg.sub", 2, False, False),
        ("pkg.sub.leaf", "pkg", 2, False, False),
        ("pkg.sub.leaf", "pkg.sub.other_leaf", 3, False, False),
        ("pkg.sub.leaf", "trio.testing", 5, False, False),
    }
    graph = import_graph([i for n, p in known.items() for i in imports_of(n, p, known)], known)
    groups = strongly_connected(graph)
    # pkg -> sub.leaf (type only) -> pkg; sub <-> sub.leaf; the lazy import is no edge.
    assert groups == [frozenset({"pkg", "pkg.sub", "pkg.sub.leaf"})]
    assert [" -> ".join(c) for c in cycles_in(groups[0], graph)] == [
        "pkg -> pkg.sub.leaf -> pkg",
        "pkg -> pkg.sub.leaf -> pkg.sub -> pkg",
        "pkg.sub -> pkg.sub.leaf -> pkg.sub",
    ]
    assert describe_cycle(["pkg.sub", "pkg.sub.leaf", "pkg.sub"], graph).endswith(
        "pkg/sub/__init__.py:1: pkg.sub imports pkg.sub.leaf\n"
        f"    {pkg / 'sub' / 'leaf.py'}:2: pkg.sub.leaf imports pkg.sub")


def test_no_import_cycles_inside_engine() -> None:
    found, known = _engine_graph()
    graph = import_graph(found, known)
    assert graph["engine.workers.runtime"].keys() >= {"engine.protocol", "engine.errors"}, \
        "the scanner lost the runtime's imports"
    new = [group for group in strongly_connected(graph) if group not in KNOWN_CYCLES]
    report = "\n".join(describe_cycle(cycle, graph)
                       for group in new for cycle in cycles_in(group, graph))
    assert not new, (
        "import cycles inside engine/ (break each by moving the shared piece into a module "
        "both can import, or by passing what is needed in):\n" + report)


def test_every_known_cycle_still_exists() -> None:
    found, known = _engine_graph()
    groups = strongly_connected(import_graph(found, known))
    gone = [f"{sorted(group)} ({why})" for group, why in KNOWN_CYCLES.items()
            if group not in groups]
    assert not gone, (
        "these KNOWN_CYCLES entries no longer match a cycle: delete them (or, if the cycle "
        f"only shrank, list what is left): {gone}; cycles now: {[sorted(g) for g in groups]}")


def _allowed_on_worker_side(target: str) -> bool:
    if target.partition(".")[0] != "engine":
        return is_stdlib(target)
    return target in WORKER_SIDE_ALLOWED or target == "engine.workers" \
        or target.startswith("engine.workers.")


def test_worker_side_imports_only_the_standard_library_and_the_child_end() -> None:
    found, known = _engine_graph()
    worker_side = {name for name in known if name.startswith("engine.workers")}
    assert {"engine.workers", "engine.workers.runtime"} <= worker_side
    bad = [f"{imp.where}: {imp.source} imports {imp.target}"
           + (" (under TYPE_CHECKING)" if imp.type_only else "")
           for imp in found
           if imp.source in worker_side and not _allowed_on_worker_side(imp.target)]
    assert not bad, (
        "the worker side (engine/workers/) runs in every worker process: it may import only "
        f"the standard library, {', '.join(WORKER_SIDE_ALLOWED)} and engine.workers.*, "
        "even for type checking; move the code to the parent side or make it "
        "standard-library only:\n  " + "\n  ".join(bad))


def test_what_the_worker_side_shares_imports_only_the_standard_library() -> None:
    found, known = _engine_graph()
    shared = {name for name in ("engine", *WORKER_SIDE_SHARED) if name in known}
    assert {"engine", "engine.errors", "engine.protocol"} <= shared
    bad = [f"{imp.where}: {imp.source} imports {imp.target}"
           for imp in found if imp.source in shared and imp.runs_on_import
           and not (is_stdlib(imp.target) or imp.target in WORKER_SIDE_SHARED)]
    assert not bad, (
        f"{', '.join(sorted(shared))} run in every worker: when imported they may import only "
        f"the standard library and {', '.join(WORKER_SIDE_SHARED)} (anything else only "
        "under TYPE_CHECKING or in a module __getattr__):\n  " + "\n  ".join(bad))
