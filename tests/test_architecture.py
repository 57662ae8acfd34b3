"""The package's import graph: no cycles, and the project's own modules imported at module level
except where a heavy library stands behind them (so `pytest --help` and collection stay fast)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "deploycheck"

#: third-party libraries whose import costs real time (measured with python -X importtime)
HEAVY = {
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "matplotlib",
    "transformers",
    "sklearn",
    "safetensors",
    "h5py",
    "torchao",
    "scipy",
}


def _modname(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_modname(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, mod: str | None = None):
    """(target module, is_function_level, line) for every import in a file; targets are resolved
    to deploycheck modules (names that are submodules count as their own import) or to a
    third-party top-level package."""
    mod = mod or _modname(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}

    def in_function(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base_mod = ".".join(base + ([node.module] if node.module else []))
            else:
                base_mod = node.module or ""
            names = [base_mod] + [f"{base_mod}.{a.name}" for a in node.names if f"{base_mod}.{a.name}" in MODULES]
        else:
            continue
        for name in names:
            yield name, in_function(node), node.lineno


def _graph():
    """Edges between deploycheck modules, with the packages an import runs first (importing
    a.b.c runs a and a.b), and each module's third-party imports at module level."""
    edges: dict[str, set[tuple[str, bool, int, bool]]] = {m: set() for m in MODULES}
    external: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for name, func, line in _imports(path):
            if not name.startswith("deploycheck"):
                if not func and name.split(".")[0] != "__future__":
                    external[m].add(name.split(".")[0])
                continue
            target = name
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            for k in range(1, len(parts) + 1):
                t = ".".join(parts[:k])
                if t != m and not m.startswith(t + "."):
                    edges[m].add((t, func, line, k < len(parts)))  # last: run implicitly, as a parent
    return edges, external


def _heavy_modules(edges, external) -> set[str]:
    """deploycheck modules whose import (at module level, transitively) loads a heavy library."""
    heavy = {m for m, libs in external.items() if libs & HEAVY}
    changed = True
    while changed:
        changed = False
        for m, es in edges.items():
            if m not in heavy and any(t in heavy for t, func, _, _ in es if not func):
                heavy.add(m)
                changed = True
    return heavy


def _cycles(adj: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_the_package_modules():
    edges, _ = _graph()
    adj = {m: {t for t, _, _, _ in es} for m, es in edges.items()}  # function-level imports count too
    assert _cycles(adj) == []


def _package_graph(edges) -> dict[str, set[str]]:
    """Edges between deploycheck's top-level modules and subpackages (deploycheck.spec, .formats, …):
    importing any module of a package runs its ``__init__``, so modules that import each other's
    packages form a cycle even where no two modules do."""

    def unit(m: str) -> str:
        return ".".join(m.split(".")[:2])

    adj: dict[str, set[str]] = {}
    for m, es in edges.items():
        adj.setdefault(unit(m), set())
        for t, _, _, _ in es:
            if t != "deploycheck" and unit(t) != unit(m):
                adj[unit(m)].add(unit(t))
                adj.setdefault(unit(t), set())
    return adj


def test_no_import_cycles_among_the_subpackages():
    edges, _ = _graph()
    assert _cycles(_package_graph(edges)) == []


def test_a_package_cycle_through_modules_that_do_not_import_each_other_is_found():
    """The rule above can fail: spec.model -> formats and formats.onnx -> spec.schema is no module
    cycle, but it is one between the packages (the one issue 23 item 4 described)."""
    edges = {
        "deploycheck.spec.model": {("deploycheck.formats", False, 1, False)},
        "deploycheck.spec.schema": set(),
        "deploycheck.formats": set(),
        "deploycheck.formats.onnx": {("deploycheck.spec.schema", False, 1, False)},
    }
    assert _cycles({m: {t for t, _, _, _ in es} for m, es in edges.items()}) == []
    assert _cycles(_package_graph(edges)) == [["deploycheck.formats", "deploycheck.spec"]]


def test_function_level_imports_of_the_package_only_where_a_heavy_library_stands_behind_them():
    edges, external = _graph()
    heavy = _heavy_modules(edges, external)
    light_inside_functions = sorted(
        f"{MODULES[m].relative_to(ROOT)}:{line}: {t}"
        for m, es in edges.items()
        for t, func, line, parent in es
        if func and not parent and t not in heavy
    )
    assert light_inside_functions == []
    # the rule has teeth: these load torch or numpy when imported, so they stay behind functions
    assert {"deploycheck.data.dataset", "deploycheck.hf", "deploycheck.nn", "deploycheck.timing"} <= heavy


def test_the_walk_sees_a_light_import_inside_a_function(tmp_path):
    """The rule above can fail: a function-level import of a light module is found as such."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .registry import Registry\n\n\ndef f():\n    from .errors import StageError\n    return StageError\n"
    )
    found = {(name, func) for name, func, _ in _imports(probe, "deploycheck.probe")}
    assert found == {("deploycheck.registry", False), ("deploycheck.errors", True)}


def test_loading_the_plugin_and_collecting_imports_no_heavy_library():
    code = (
        "import sys, deploycheck.plugin, deploycheck.collect, deploycheck.checks, deploycheck.cli, "
        "deploycheck.spec, deploycheck.runner\n"
        f"print(sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    assert out.stdout.strip() == "[]"


STAGES = sorted(p for p in (PKG / "stages").rglob("*.py"))


def _refers_to_the_runner(path: Path, mod: str | None = None) -> list[str]:
    """Where a module takes a ``runner`` parameter or imports deploycheck.runner."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        f"{path.name}:{line}: imports {name}"
        for name, _, line in _imports(path, mod)
        if name == "deploycheck.runner" or name.startswith("deploycheck.runner.")
    ]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                if arg.arg == "runner":
                    found.append(f"{path.name}:{node.lineno}: takes a runner")
    return found


def test_the_pipeline_stages_take_what_they_need_and_never_the_runner():
    """Stages are functions of explicit inputs; only the runner orders and memoises them."""
    assert STAGES, "no stage modules found"
    assert [hit for p in STAGES for hit in _refers_to_the_runner(p)] == []


def test_the_runner_rule_sees_a_runner_parameter_and_an_import(tmp_path):
    """The rule above can fail: a stage taking ``runner`` or importing the runner is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..runner import Runner\n\n\ndef build(runner, t):\n    return runner.built(t)\n")
    hits = _refers_to_the_runner(probe, "deploycheck.stages.probe")
    assert hits == ["probe.py:1: imports deploycheck.runner", "probe.py:4: takes a runner"]
