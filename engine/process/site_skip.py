"""Whether a local worker may start without ``site`` (``python -S``).

``site`` is most of a venv interpreter's start-up here: 15 of 24 ms for
``python -c pass`` in this project's venv, because it reads every ``.pth``
file and an editable install's finder imports ``pathlib``, ``re`` and
``importlib.util``; and a pool pays it once per worker (four on two cores:
about 30 ms of a 110 ms pool start). What a worker needs of ``site`` reaches
it another way: the parent hands over its ``sys.path`` (the site directories
and every path a ``.pth`` line added: ``runtime.adopt_parent_sys_path``) and
its ``sys.prefix`` (a venv's), and ``engine`` itself is on ``PYTHONPATH``.

What cannot be handed over is code that ``site`` runs: ``sitecustomize`` or
``usercustomize``, and the ``import`` lines of ``.pth`` files (an editable
install's import hook, coverage's subprocess start-up). So a worker skips
``site`` only when the parent's site directories hold no such line except
those known to do nothing a worker needs (:data:`_HARMLESS_PTH`), and neither
customize module exists. Otherwise, and whenever the worker runs another
interpreter (``python=``, even ``(sys.executable,)``: the way to ask for a
full ``site``), another host's, or keeps its own ``sys.path``, it starts as
usual.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
import site
import sys

from engine.process.handle import SpawnRequest

# .pth files whose import lines a worker does not need:
# - setuptools' distutils shim: it only redirects ``import distutils`` (and
#   pip's), which the parent's sys.path resolves the same way in the worker;
# - this engine's own editable install: its finder maps ``engine`` only, and a
#   worker gets engine through PYTHONPATH (spawn._child_env).
_HARMLESS_PTH = ("distutils-precedence.pth", "__editable__.engine-*.pth")
# coverage's .pth starts measuring a subprocess only when one of these is set
# (in the worker's environment); unset, its line does nothing.
_COVERAGE_VARIABLES = ("COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG")


def skips_site(request: SpawnRequest, env: dict[str, str], sys_path: str | None) -> bool:
    """True when ``request``'s worker may start with ``python -S``: a local
    worker on this interpreter that adopts the parent's ``sys_path`` (not
    None), whose ``site`` would run no code it needs (given its environment
    ``env``)."""
    if sys_path is None or request.remote is not None or request.python:
        return False
    if sys.flags.no_site:
        return True  # the parent itself runs without site: so may its workers
    coverage = any(env.get(name) for name in _COVERAGE_VARIABLES)
    return not site_runs_code(coverage)


@functools.cache
def site_runs_code(coverage: bool) -> bool:
    """Whether ``site`` would run code a worker needs (read once per process:
    a pool start reads no file)."""
    for name in ("sitecustomize", "usercustomize"):
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            return True
    directories = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name.endswith(".pth") and pth_runs_code(os.path.join(directory, name), coverage):
                return True
    return False


def pth_runs_code(path: str, coverage: bool) -> bool:
    """Whether the ``.pth`` file at ``path`` has an ``import`` line a worker
    needs (``coverage``: coverage's subprocess variables are set)."""
    name = os.path.basename(path)
    if any(fnmatch.fnmatch(name, pattern) for pattern in _HARMLESS_PTH):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return True  # unreadable here, yet site might read it: keep site
    for line in lines:
        # site executes a line that starts with "import" (plus space or tab);
        # every other line is a path entry, which sys.path carries.
        if not line.startswith(("import ", "import\t")):
            continue
        if not coverage and any(variable in line for variable in _COVERAGE_VARIABLES):
            continue
        return True
    return False
