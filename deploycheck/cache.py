"""Cross-session cache of built variants, artifacts and fresh-process results, by content hash.

A key hashes everything that can change the result: the spec fields that matter, the weights
file, the source of the model code (factory, student, callables), deploycheck's own source,
the library versions, and for results also the artifact's sha256, the evaluation inputs, the
measurement settings and the machine. A changed input invalidates exactly what depends on it.

Entries are written atomically (temp file + rename), so xdist workers and interrupted runs never
leave a half-written entry. Built models are stored with ``torch.save`` and read back with
``weights_only=False``: the cache folder is trusted local state, like ``.pytest_cache``; a model
that cannot be pickled is simply not cached.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
from typing import Any


def _h(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_sha(path: str) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _package_source_hash() -> str:
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                h.update(f.encode())
                with open(os.path.join(d, f), "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def environment() -> dict:
    from .formats.integrity import library_versions
    return {"libraries": library_versions(), "deploycheck_source": _package_source_hash(),
            "python": platform.python_version()}


def machine() -> dict:
    """What makes this machine's numbers its own: the kernel-relevant fingerprint (ISA level,
    torch's CPU capability, oneDNN's cap, the quantized engine, library versions, kernel env
    variables), plus the host and core count, which change timings."""
    from .machine import kernel_key
    return {**kernel_key(), "node": platform.node(), "cpus": os.cpu_count()}


def module_source_hash(import_path: str, search: list[str]) -> str | None:
    """Hash of the file that defines ``module`` of ``module:attr`` (found without importing it)."""
    import sys
    mod = import_path.partition(":")[0]
    for d in reversed(search):
        if d not in sys.path:
            sys.path.insert(0, d)
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    return file_sha(spec.origin)


def code_paths(spec) -> list[str]:
    """Every import path a spec names: factory, students, callables."""
    paths = [spec.model.factory] if spec.model.factory else []
    for v in spec.variants.values():
        for s in v.steps:
            if getattr(s, "student", None):
                paths.append(s.student)
            if getattr(s, "callable", None):
                paths.append(s.callable)
    if spec.data.source.startswith("python:"):
        paths.append(spec.data.source[len("python:"):])
    paths += [s.arg for s in spec.data.preprocess if s.op == "callable"]
    if spec.metric.callable:
        paths.append(spec.metric.callable)
    return paths


def build_key(spec, vname: str) -> str:
    from .models import search_dirs
    base = os.path.dirname(os.path.abspath(spec.path))
    search = search_dirs(spec)
    weights = os.path.join(base, spec.model.weights) if spec.model.weights else None
    data_file = None
    if spec.data.source.startswith(("npz:", "text:")):
        data_file = file_sha(os.path.join(base, spec.data.source.partition(":")[2]))
    hf_dir = None
    if spec.model.hf is not None:
        try:
            from .models import baseline_arch
            hf_dir = baseline_arch(spec)["kwargs"]["path"]
        except Exception:
            hf_dir = None
    semantic = None
    if spec.semantic is not None:
        semantic = file_sha(os.path.join(base, spec.semantic.triplets))
    from .machine import kernel_key
    return _h({"env": environment(), "kernels": kernel_key(), "model": dataclasses.asdict(spec.model),
               "hf_weights": file_sha(os.path.join(hf_dir, "model.safetensors")) if hf_dir else None,
               "semantic": semantic,
               "weights": file_sha(weights) if weights else None, "data": dataclasses.asdict(spec.data),
               "data_file": data_file, "metric": dataclasses.asdict(spec.metric),
               "code": {p: module_source_hash(p, search) for p in code_paths(spec)},
               "steps": [(type(s).__name__, dataclasses.asdict(s)) for s in spec.variant(vname).steps],
               "baseline_steps": vname == "baseline"})


def artifact_key(built_key: str, fspec) -> str:
    return _h({"built": built_key, "format": fspec.name, "options": dataclasses.asdict(fspec.options)})


def result_key(request: dict, inputs_sha: str | None) -> str:
    def art(t):
        return None if not t else {"sha": t["manifest"]["sha256"], "format": t["format"], "options": t["options"]}
    lat = dict(request.get("latency") or {})
    base = lat.pop("baseline", None)
    lat.pop("example", None)
    return _h({"target": art(request["target"]), "baseline": art(base), "latency": lat, "inputs": inputs_sha,
               "threads": request.get("threads"), "memory_mb": request.get("memory_mb"), "env": environment(),
               "machine": machine()})


class Cache:
    """A folder of entries; ``root=None`` disables caching. ``level`` is 'all' or 'build'."""

    def __init__(self, root: str | None, *, level: str = "all"):
        self.root = root
        self.level = level
        self.hits: dict[str, int] = {"built": 0, "artifact": 0, "result": 0}
        if root:
            os.makedirs(root, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _dir(self, kind: str, key: str) -> str:
        return os.path.join(self.root, kind, key[:2], key)

    def _publish(self, tmp: str, final: str) -> None:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another worker published the same entry first
            shutil.rmtree(tmp, ignore_errors=True)

    def _staging(self, kind: str) -> str:
        import tempfile
        d = os.path.join(self.root, "tmp")
        os.makedirs(d, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{kind}-", dir=d)

    # built variants
    def get_built(self, key: str):
        if not self.enabled:
            return None
        d = self._dir("built", key)
        try:
            import warnings
            import torch
            with open(os.path.join(d, "meta.json")) as fh:
                meta = json.load(fh)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notes of the quantized storages inside
                model = torch.load(os.path.join(d, "model.pt"), weights_only=False, map_location="cpu")
            outputs = torch.load(os.path.join(d, "outputs.pt"), weights_only=True)
        except Exception:
            return None
        self.hits["built"] += 1
        return meta, model, outputs

    def put_built(self, key: str, meta: dict, model, outputs) -> None:
        if not self.enabled:
            return
        import torch
        tmp = self._staging("built")
        try:
            torch.save(model, os.path.join(tmp, "model.pt"))
            torch.save(outputs, os.path.join(tmp, "outputs.pt"))
            with open(os.path.join(tmp, "meta.json"), "w") as fh:
                json.dump(meta, fh, default=str)
        except Exception:  # not picklable (some exported graphs): just not cached
            shutil.rmtree(tmp, ignore_errors=True)
            return
        self._publish(tmp, self._dir("built", key))

    # artifacts
    def get_artifact(self, key: str, dest: str) -> dict | None:
        if not self.enabled:
            return None
        d = self._dir("artifact", key)
        src = os.path.join(d, "artifact")
        try:
            with open(os.path.join(d, "manifest.json")) as fh:
                manifest = json.load(fh)
            if file_sha(src) != manifest["sha256"]:
                return None  # a damaged entry is rebuilt, never used
            tmp = dest + ".cache-copy"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            with open(dest + ".manifest.json", "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
        except (OSError, ValueError, KeyError):
            return None
        self.hits["artifact"] += 1
        return manifest

    def put_artifact(self, key: str, path: str, manifest: dict) -> None:
        if not self.enabled:
            return
        tmp = self._staging("artifact")
        shutil.copyfile(path, os.path.join(tmp, "artifact"))
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, sort_keys=True)
        self._publish(tmp, self._dir("artifact", key))

    # fresh-process results
    def get_result(self, key: str, outputs_dest: str) -> dict | None:
        if not self.enabled or self.level != "all":
            return None
        d = self._dir("result", key)
        try:
            with open(os.path.join(d, "result.json")) as fh:
                result = json.load(fh)
            shutil.copyfile(os.path.join(d, "outputs.pt"), outputs_dest)
            if os.path.exists(os.path.join(d, "extra.pt")):  # outputs on the semantic triplets
                shutil.copyfile(os.path.join(d, "extra.pt"), outputs_dest + ".extra.pt")
        except (OSError, ValueError):
            return None
        self.hits["result"] += 1
        return result

    def put_result(self, key: str, result: dict, outputs_path: str) -> None:
        if not self.enabled or self.level != "all":
            return
        tmp = self._staging("result")
        shutil.copyfile(outputs_path, os.path.join(tmp, "outputs.pt"))
        if os.path.exists(outputs_path + ".extra.pt"):
            shutil.copyfile(outputs_path + ".extra.pt", os.path.join(tmp, "extra.pt"))
        with open(os.path.join(tmp, "result.json"), "w") as fh:
            json.dump(result, fh)
        self._publish(tmp, self._dir("result", key))
