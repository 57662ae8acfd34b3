"""The user's code a model really runs: every module reachable by import from the spec's
callables (factory, students, custom recipes, data and metric callables) that lives in the
spec's python_path.

Found statically, from the files' import statements (``import a.b``, ``from . import c``,
``from a import b`` where ``b`` is a submodule), without importing anything and without touching
``sys.path``. Modules outside the python_path (torch, numpy, installed packages) are covered by
the library versions instead. Not covered: modules imported by computed names
(``importlib.import_module(name)``) and data files the code reads; name those files in the spec
(weights, data) or keep such code in a module that is imported plainly.
"""

from __future__ import annotations

import ast
import functools
import os


def _candidates(name: str, search: tuple[str, ...]) -> str | None:
    parts = name.split(".")
    for d in search:
        base = os.path.join(d, *parts)
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                return path
    return None


@functools.lru_cache(maxsize=4096)
def _imports(path: str, mtime_ns: int, module: str) -> tuple[str, ...]:
    """Absolute module names a file imports (relative imports resolved against ``module``)."""
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return ()
    is_pkg = os.path.basename(path) == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join(p for p in base_parts + ([node.module] if node.module else []) if p)
            else:
                base = node.module or ""
            if base:
                out.append(base)
            out += [f"{base}.{a.name}" if base else a.name for a in node.names if a.name != "*"]
    return tuple(out)


def files(modules: list[str], search: list[str]) -> list[str]:
    """Sorted files of ``modules`` (names or 'module:attr' paths) and everything they import from ``search``."""
    roots = tuple(os.path.abspath(d) for d in search)
    todo = [m.partition(":")[0] for m in modules if m]
    seen_mods: set[str] = set()
    found: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen_mods:
            continue
        seen_mods.add(mod)
        # parent packages run their __init__ first
        parts = mod.split(".")
        for i in range(1, len(parts)):
            todo.append(".".join(parts[:i]))
        path = _candidates(mod, roots)
        if path is None:
            continue
        found.add(path)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        todo += [m for m in _imports(path, mtime, mod) if m not in seen_mods]
    return sorted(found)
