"""Cache keys: a content hash of everything that can change an entry (see :mod:`deploycheck.cache`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import time
from typing import Any

from .. import userfiles
from ..data.sources import image_files
from ..formats.integrity import library_versions, sha256
from ..loading import search_dirs
from ..machine import kernel_key
from ..protocol import ArtifactRef, WorkerRequest
from ..schema import TOKENIZER_FILES


def _h(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def file_sha(path: str) -> str | None:
    """sha256 of a file the key depends on, or None where it cannot be read (the build then
    fails with its own message; the key only needs to differ)."""
    try:
        return sha256(path)
    except OSError:
        return None


_SEEN: dict[tuple, str | None] = {}


def content_sha(path: str) -> str | None:
    """:func:`file_sha`, remembered for this process while the file's identity (inode, size,
    mtime) stays the same: a session hashes each artifact once, however many keys name it."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):  # a folder, a device, a pipe: never read (the loader says what it is)
        return f"not a file ({stat.filemode(st.st_mode)})"
    ident = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if ident in _SEEN:
        return _SEEN[ident]
    digest = file_sha(path)
    # a file changed within the clock's granularity can keep its mtime (git's "racy clean"):
    # only one last written a while ago is remembered
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _SEEN[ident] = digest
    return digest


def _onnx_external(path: str) -> list[str]:
    """The external-data files an ONNX graph names (relative to its folder); [] for other files.
    A graph with external data holds the key ``location`` in its bytes: a file without it names
    none, and is not parsed (a 90 MB graph takes a third of a second to parse)."""
    import mmap

    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm.find(b"location") < 0:
                return []
    except (OSError, ValueError):  # unreadable or empty: its own bytes are hashed
        return []
    try:
        import onnx

        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - not an ONNX file the key can read: its own bytes are hashed
        return []
    names = set()
    for init in graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return sorted(names)


def read_files(ref: ArtifactRef | None) -> dict | None:
    """What a worker reads for ``ref``, by content: the artifact's bytes, the manifest it is given
    (its sidecar, in full: requires, factory, checksums), the code the spec rebuilds it with, the
    KV-cache step file next to it, the tokenizer shipped beside it and an ONNX graph's external
    data. Names are relative to the artifact's folder, so where the run folder lies never counts."""
    if ref is None:
        return None
    folder = os.path.dirname(os.path.abspath(ref.artifact))
    man = ref.manifest or {}
    files: dict[str, str | None] = {"artifact": content_sha(ref.artifact)}
    if man.get("kv_cache"):
        from ..formats.lm_kv import kv_path

        files["kv_cache"] = content_sha(kv_path(ref.artifact))
    tok = man.get("tokenizer")
    if isinstance(tok, dict):
        for name in sorted(tok):
            files[f"tokenizer/{name}"] = content_sha(os.path.join(folder, "tokenizer", os.path.basename(str(name))))
    if ref.format == "onnx":
        for name in _onnx_external(ref.artifact):
            where = os.path.normpath(os.path.join(folder, name))
            inside = where.startswith(folder + os.sep)  # else onnxruntime refuses it: nothing to read
            files[f"external/{name}"] = content_sha(where) if inside else "outside the artifact's folder"
    return {"files": files, "manifest": _h(man), "code": _h(ref.code)}


@functools.cache
def _package_source_hash() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # deploycheck/
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
    return {
        "libraries": library_versions(),
        "deploycheck_source": _package_source_hash(),
        "python": platform.python_version(),
    }


def machine() -> dict:
    """What makes this machine's numbers its own: the kernel-relevant fingerprint (ISA level,
    torch's CPU capability, oneDNN's cap, the quantized engine, library versions, kernel env
    variables), plus the host and core count, which change timings."""
    return {**kernel_key(), "node": platform.node(), "cpus": os.cpu_count()}


def code_hashes(spec) -> dict[str, str | None]:
    """sha256 of every user file the spec's callables import from its python_path (see userfiles)."""
    return {path: file_sha(path) for path in userfiles.files(code_paths(spec), search_dirs(spec))}


def code_paths(spec) -> list[str]:
    """Every import path a spec names: factory, students, callables."""
    paths = [spec.model.factory] if spec.model.factory else []
    for v in spec.variants.values():
        for s in v.steps:
            if getattr(s, "student", None):
                paths.append(s.student)
            if getattr(s, "callable", None):
                paths.append(s.callable)
        if v.model is not None and v.model.factory:
            paths.append(v.model.factory)
    if spec.data.source.startswith("python:"):
        paths.append(spec.data.source[len("python:") :])
    paths += [s.arg for s in spec.data.preprocess if s.op == "callable"]
    if spec.metric.callable:
        paths.append(spec.metric.callable)
    return paths


def build_key(spec, vname: str) -> str:
    base = os.path.dirname(os.path.abspath(spec.path))
    weights = os.path.join(base, spec.model.weights) if spec.model.weights else None
    data_file = None
    if spec.data.source.startswith(("npz:", "text:")):
        data_file = file_sha(os.path.join(base, spec.data.source.partition(":")[2]))
    elif spec.data.source.startswith(("images:", "manifest:")):  # every image (and the manifest) by content
        try:
            data_file = _h([(os.path.relpath(f, base), file_sha(f)) for f in image_files(spec.data.source, spec)])
        except (OSError, ValueError):
            data_file = None  # the data stage reports what is wrong
    hf_files = None
    if spec.model.hf is not None:
        from ..hf import source_files

        hf_files = source_files(spec.model.hf, base)
    tokenizers: dict[str, dict | None] = {}
    for step in spec.data.preprocess:
        if step.op == "tokenize" and getattr(step.arg, "path", None):  # another folder's tokenizer
            try:
                from ..hf import resolve

                tokenizers[step.arg.path] = _hf_files(resolve(step.arg.path, base))
            except (OSError, ValueError):
                tokenizers[step.arg.path] = None
    semantic = None
    if spec.semantic is not None:
        semantic = file_sha(os.path.join(base, spec.semantic.triplets))
    return _h(
        {
            "env": environment(),
            "kernels": kernel_key(),
            "model": dataclasses.asdict(spec.model),
            "hf_files": hf_files,
            "tokenizers": tokenizers,
            "semantic": semantic,
            "weights": file_sha(weights) if weights else None,
            "data": dataclasses.asdict(spec.data),
            "data_file": data_file,
            "metric": dataclasses.asdict(spec.metric),
            "code": code_hashes(spec),
            "steps": [(type(s).__name__, dataclasses.asdict(s)) for s in spec.variant(vname).steps],
            "variant_model": _variant_model(spec, vname, base),
            "plugins": _plugin_sources(spec.variant(vname).steps),
            "baseline_steps": vname == "baseline",
        }
    )


def _hf_files(folder: str) -> dict:
    """A tokenizer folder's config and tokenizer files, by content."""
    names = ("config.json", *TOKENIZER_FILES)
    return {n: file_sha(os.path.join(folder, n)) for n in names if os.path.isfile(os.path.join(folder, n))}


def _plugin_sources(steps) -> dict:
    """Recipe plug-ins live in installed packages, outside the python_path: hash their module files."""
    import inspect

    out = {}
    for s in steps:
        cls = type(s)
        if cls.__module__.split(".")[0] != "deploycheck":
            try:
                out[f"{cls.__module__}:{cls.__qualname__}"] = file_sha(inspect.getsourcefile(cls) or "")
            except TypeError:
                out[f"{cls.__module__}:{cls.__qualname__}"] = None
    return out


def _variant_model(spec, vname: str, base: str) -> dict | None:
    """A ``model:`` variant's own factory, kwargs and weights file contents."""
    o = spec.variant(vname).model
    if o is None:
        return None
    return {**dataclasses.asdict(o), "weights_sha": file_sha(os.path.join(base, o.weights)) if o.weights else None}


def artifact_key(built_key: str, fspec) -> str:
    return _h({"built": built_key, "format": fspec.name, "options": dataclasses.asdict(fspec.options)})


def result_key(req: WorkerRequest, inputs_sha: str | None) -> str:
    """A fresh-process result's key: the artifact and its latency control by content, how they are
    measured and run, the inputs, the environment and the machine (not the files' paths)."""

    def art(ref: ArtifactRef | None) -> dict | None:
        if ref is None:
            return None
        # what the manifest claims and what the files hold: both, so a swapped, truncated or
        # deleted file (artifact, sidecar, KV-cache step, tokenizer, external data) is a miss
        return {
            "sha": (ref.manifest or {}).get("sha256"),
            "format": ref.format,
            "options": ref.options,
            "read": read_files(ref),
        }

    lat = req.latency
    measure = (
        {}
        if lat is None
        else {f.name: getattr(lat, f.name) for f in dataclasses.fields(lat) if f.name not in ("baseline", "example")}
    )
    gen = req.generate
    return _h(
        {
            "target": art(req.target),
            "baseline": art(lat.baseline if lat is not None else None),
            "latency": measure,
            "generate": None
            if gen is None
            else {
                "new_tokens": gen.new_tokens,
                "eos_id": gen.eos_id,
                "kv_cache": gen.kv_cache,
                # how prefill and decode are timed, and against which baseline artifact (by content)
                "timing": None
                if gen.timing is None
                else {
                    **{k: v for k, v in gen.timing.items() if k != "baseline"},
                    "baseline": art(ArtifactRef(**gen.timing["baseline"])) if gen.timing.get("baseline") else None,
                },
            },
            # a causal LM's KV-cache step is its own file next to the artifact
            "kv_cache": ((req.target.manifest or {}).get("kv_cache") or {}).get("sha256"),
            "inputs": inputs_sha,
            "threads": req.threads,
            "memory_mb": req.memory_mb,
            "env": environment(),
            "machine": machine(),
        }
    )


def value_key(built_key: str, name: str, inputs: Any) -> str:
    """An in-memory evaluation's key: the built variant (its content hash covers the model's code,
    weights, data and recipe), what is computed (``name``) and its inputs by content (tensors'
    bytes, token ids, settings)."""
    import torch

    h = hashlib.sha256(_h({"built": built_key, "name": name, "env": environment()}).encode())

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().contiguous().cpu()
            h.update(repr(("tensor", tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(inputs)
    return h.hexdigest()
