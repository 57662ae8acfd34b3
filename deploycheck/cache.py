"""Cross-session cache of built variants, artifacts and fresh-process results, by content hash.

A key hashes everything that can change the result: the spec fields that matter, the weights
file, the source of the model code (factory, student, callables), deploycheck's own source,
the library versions, and for results also the artifact's sha256, the evaluation inputs, the
measurement settings and the machine. A changed input invalidates exactly what depends on it.

Entries are written atomically (temp file + rename), so xdist workers and interrupted runs never
leave a half-written entry. Each entry records the sha256 of its files at publish
(``checksums.json``) and is verified before every use: a damaged entry (flipped bits, a truncated
file) is removed and rebuilt, with one warning saying so.

A cache folder may come from elsewhere (a CI cache, a shared disk), so nothing in it chooses code
to run: built models are read back with ``weights_only=True``, allowing only module and tensor
classes of torch, torchao, deploycheck and the modules the spec names (see :func:`load_model`);
a model that needs anything else is not stored (its entry keeps the build's facts and outputs,
and the model is rebuilt only when a save needs it). Pickle-format artifacts are never cached.

A cache that cannot be written (a full disk, a read-only folder) turns itself off with one
warning; the run goes on without it.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from . import usercode
from .formats.integrity import library_versions
from .machine import kernel_key
from .models import baseline_arch, search_dirs
from .schema import TOKENIZER_FILES


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


@functools.cache
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
    """sha256 of every user file the spec's callables import from its python_path (see usercode)."""
    return {path: file_sha(path) for path in usercode.files(code_paths(spec), search_dirs(spec))}


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
    hf_dir = None
    if spec.model.hf is not None:
        try:
            hf_dir = baseline_arch(spec)["kwargs"]["path"]
        except Exception:
            hf_dir = None
    semantic = None
    if spec.semantic is not None:
        semantic = file_sha(os.path.join(base, spec.semantic.triplets))
    return _h(
        {
            "env": environment(),
            "kernels": kernel_key(),
            "model": dataclasses.asdict(spec.model),
            "hf_weights": file_sha(os.path.join(hf_dir, "model.safetensors")) if hf_dir else None,
            "hf_files": _hf_files(hf_dir) if hf_dir else None,
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
    """The model folder's config and tokenizer files (a causal LM's artifact ships its tokenizer)."""
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


def result_key(request: dict, inputs_sha: str | None) -> str:
    def art(t):
        return None if not t else {"sha": t["manifest"]["sha256"], "format": t["format"], "options": t["options"]}

    lat = dict(request.get("latency") or {})
    base = lat.pop("baseline", None)
    lat.pop("example", None)
    gen = dict(request.get("generate") or {})
    gen.pop("prompts", None)  # a path; the prompts' ids are in inputs_sha
    timing = dict(gen.pop("timing", None) or {})
    gen["timing"] = {**timing, "baseline": art(timing.get("baseline"))} if timing else None
    return _h(
        {
            "target": art(request["target"]),
            "kv_cache": ((request["target"].get("manifest") or {}).get("kv_cache") or {}).get("sha256"),
            "generate": gen,
            "baseline": art(base),
            "latency": lat,
            "inputs": inputs_sha,
            "threads": request.get("threads"),
            "memory_mb": request.get("memory_mb"),
            "env": environment(),
            "machine": machine(),
        }
    )


class CacheWarning(UserWarning):
    """A cache entry was damaged and rebuilt, or the cache could not be written and was turned off."""


CHECKSUMS = "checksums.json"
#: Top-level packages whose module and tensor classes a cached model may be made of (runtime
#: libraries, not files' choices); the spec's own modules are added per spec.
TRUSTED_PACKAGES = ("torch", "torchao", "deploycheck")


def _no_space(e: BaseException) -> bool:
    """A write failed because the disk (or the user's quota) is full. torch.save reports it as
    'file write failed' without an errno."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e)


def allowed_global(name: str, trusted_modules: Iterable[str] = ()) -> Any:
    """The class a pickled model may name as ``name`` ('module.Qualname'), or None: a module or
    tensor class from :data:`TRUSTED_PACKAGES` or the spec's modules. The module is checked
    before anything is imported, so a file cannot make this process import a module it names."""
    import importlib

    import torch

    mod_name, _, qual = name.rpartition(".")
    trusted = set(trusted_modules)
    top = mod_name.split(".")[0]
    if not mod_name or not (top in TRUSTED_PACKAGES or mod_name in trusted or mod_name in sys.modules):
        return None
    # else a module the spec's code imported (a helper module of its factory's): already in this process
    if (
        top not in TRUSTED_PACKAGES
        and mod_name not in trusted
        and not any(
            (getattr(sys.modules[mod_name], "__file__", None) or "").startswith(d) for d in _trusted_dirs(trusted)
        )
    ):
        return None
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type) and issubclass(obj, (torch.nn.Module, torch.Tensor)):
        return obj
    return None


def _trusted_dirs(modules: Iterable[str]) -> list[str]:
    out = []
    for m in modules:
        f = getattr(sys.modules.get(m), "__file__", None)
        if f:
            out.append(os.path.dirname(os.path.abspath(f)) + os.sep)
    return out


def load_model(path: str, *, trusted_modules: Iterable[str] = ()) -> Any:
    """A cached model, read with ``weights_only=True``; ValueError naming the first global the
    file asks for that is not an allowed class (see :func:`allowed_global`)."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    names = get_unsafe_globals_in_checkpoint(path)
    allowed: list[Any] = []
    for name in names:
        obj = allowed_global(name, trusted_modules)
        if obj is None:
            raise ValueError(f"it names {name!r}, which is not a torch, torchao or spec module class")
        allowed.append((obj, name))
    with safe_globals(allowed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the quantized storages inside
        return torch.load(path, weights_only=True, map_location="cpu")


class Cache:
    """A folder of entries; ``root=None`` disables caching. ``level`` is 'all' or 'build'."""

    def __init__(self, root: str | None, *, level: str = "all", warn: Callable[[str], None] | None = None):
        self.root = root
        self.level = level
        self.hits: dict[str, int] = {"built": 0, "artifact": 0, "result": 0}
        self.rebuilt: list[str] = []  # entries found damaged and removed this session
        self._warn = warn or (lambda msg: warnings.warn(msg, CacheWarning, stacklevel=3))
        if root:
            try:
                os.makedirs(root, exist_ok=True)
                if not os.access(root, os.W_OK | os.X_OK):
                    raise PermissionError(errno.EACCES, "permission denied", root)
            except OSError as e:
                self._off(e)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _off(self, e: BaseException) -> None:
        """The cache cannot be written: say so once, and go on without it."""
        why = "no space left on device" if _no_space(e) else (getattr(e, "strerror", None) or str(e))
        self._warn(
            f"deploycheck cache: {why} in {self.root}; caching is off for the rest of this session "
            "(free space, or pass --deploycheck-cache-dir / --deploycheck-cache off)"
        )
        self.root = None

    def _dir(self, kind: str, key: str) -> str:
        assert self.root is not None  # callers check enabled first
        return os.path.join(self.root, kind, key[:2], key)

    def _touch(self, d: str) -> None:
        """Mark an entry as used now: eviction removes the least recently used first."""
        try:
            os.utime(d)
        except OSError:
            pass

    def _staging(self, kind: str) -> str:
        import tempfile

        assert self.root is not None
        d = os.path.join(self.root, "tmp")
        os.makedirs(d, exist_ok=True)
        return tempfile.mkdtemp(prefix=f"{kind}-", dir=d)

    def _put(self, kind: str, key: str, write: Callable[[str], None]) -> None:
        """Write an entry in a staging folder, record its checksums, and publish it atomically.
        A full or unwritable disk turns the cache off."""
        if not self.enabled:
            return
        tmp = None
        try:
            tmp = self._staging(kind)
            write(tmp)
            sums = {f: file_sha(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
            with open(os.path.join(tmp, CHECKSUMS), "w") as fh:
                json.dump(sums, fh, sort_keys=True)
            final = self._dir(kind, key)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.replace(tmp, final)
                tmp = None
            except OSError as e:  # another worker published the same entry first
                if _no_space(e):
                    raise
        except Exception as e:  # noqa: BLE001 - a cache write never fails the run
            if isinstance(e, OSError) or _no_space(e):
                self._off(e)
            # else: not picklable (some exported graphs): just not cached
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _entry(self, kind: str, key: str) -> str | None:
        """The entry's folder once every file matches the checksum recorded at publish; a damaged
        entry is removed (so the rebuild can take its place) with one warning; None when absent."""
        if not self.enabled:
            return None
        d = self._dir(kind, key)
        if not os.path.isdir(d):
            return None
        bad = None
        try:
            with open(os.path.join(d, CHECKSUMS)) as fh:
                sums = json.load(fh)
            present = set(os.listdir(d)) - {CHECKSUMS}
            if not isinstance(sums, dict) or set(sums) != present:
                bad = CHECKSUMS
            else:
                bad = next((f for f in sorted(sums) if file_sha(os.path.join(d, f)) != sums[f]), None)
        except (OSError, ValueError):
            bad = CHECKSUMS
        if bad is None:
            return d
        self.discard(kind, key, f"failed its checksum ({bad})")
        return None

    def discard(self, kind: str, key: str, why: str) -> None:
        """Remove a bad entry, saying so once."""
        _remove(self._dir(kind, key))
        self.rebuilt.append(f"{kind}/{key}")
        self._warn(f"deploycheck cache: entry {kind}/{key[:16]} {why}; removed and rebuilt")

    # built variants
    def get_built(self, key: str, *, trusted_modules: Iterable[str] = ()):
        """(meta, model, outputs); model is None when the entry holds none (see :meth:`put_built`)."""
        d = self._entry("built", key)
        if d is None:
            return None
        import torch

        try:
            with open(os.path.join(d, "meta.json")) as fh:
                meta = json.load(fh)
            outputs = torch.load(os.path.join(d, "outputs.pt"), weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable entry is rebuilt, whatever the reader raised
            self.discard("built", key, "could not be read")
            return None
        model = None
        if os.path.exists(os.path.join(d, "model.pt")):
            try:
                model = load_model(os.path.join(d, "model.pt"), trusted_modules=trusted_modules)
            except ValueError as e:
                self.discard("built", key, f"holds a model this process does not unpickle ({e})")
                return None
            except Exception:  # noqa: BLE001 - an unreadable entry is rebuilt, whatever the reader raised
                self.discard("built", key, "could not be read")
                return None
        self.hits["built"] += 1
        self._touch(d)
        return meta, model, outputs

    def put_built(self, key: str, meta: dict, model, outputs, *, trusted_modules: Iterable[str] = ()) -> None:
        """The build's facts and outputs, and its model when the next session may load it: one made
        only of allowed classes (see :func:`allowed_global`); otherwise the model is rebuilt when needed."""

        def write(tmp: str) -> None:
            import torch
            from torch.serialization import get_unsafe_globals_in_checkpoint

            torch.save(outputs, os.path.join(tmp, "outputs.pt"))
            with open(os.path.join(tmp, "meta.json"), "w") as fh:
                json.dump(meta, fh, default=str)
            path = os.path.join(tmp, "model.pt")
            try:
                torch.save(model, path)
                ok = all(allowed_global(n, trusted_modules) is not None for n in get_unsafe_globals_in_checkpoint(path))
            except Exception as e:  # noqa: BLE001 - not picklable (some exported graphs): not stored
                if _no_space(e):
                    raise
                ok = False
            if not ok and os.path.exists(path):
                os.unlink(path)

        self._put("built", key, write)

    # artifacts
    def get_artifact(self, key: str, dest: str) -> dict | None:
        d = self._entry("artifact", key)
        if d is None:
            return None
        src = os.path.join(d, "artifact")
        try:
            with open(os.path.join(d, "manifest.json")) as fh:
                manifest = json.load(fh)
            if file_sha(src) != manifest["sha256"] or not isinstance(manifest["size"], int):
                self.discard("artifact", key, "does not match its manifest")
                return None
            tmp = dest + ".cache-copy"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            with open(dest + ".manifest.json", "w") as fh:
                json.dump(manifest, fh, indent=2, sort_keys=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.hits["artifact"] += 1
        self._touch(d)
        return manifest

    def put_artifact(self, key: str, path: str, manifest: dict) -> None:
        def write(tmp: str) -> None:
            shutil.copyfile(path, os.path.join(tmp, "artifact"))
            with open(os.path.join(tmp, "manifest.json"), "w") as fh:
                json.dump(manifest, fh, sort_keys=True)

        self._put("artifact", key, write)

    # fresh-process results
    def get_result(self, key: str, outputs_dest: str) -> dict | None:
        if self.level != "all":
            return None
        d = self._entry("result", key)
        if d is None:
            return None
        try:
            with open(os.path.join(d, "result.json")) as fh:
                result = json.load(fh)
            shutil.copyfile(os.path.join(d, "outputs.pt"), outputs_dest)
            for side in ("extra", "dynamic"):  # outputs on the semantic triplets, at the dynamic sizes
                if os.path.exists(os.path.join(d, f"{side}.pt")):
                    shutil.copyfile(os.path.join(d, f"{side}.pt"), outputs_dest + f".{side}.pt")
        except (OSError, ValueError):
            return None
        self.hits["result"] += 1
        self._touch(d)
        return result

    def put_result(self, key: str, result: dict, outputs_path: str) -> None:
        if self.level != "all":
            return

        def write(tmp: str) -> None:
            shutil.copyfile(outputs_path, os.path.join(tmp, "outputs.pt"))
            for side in ("extra", "dynamic"):  # semantic triplets' outputs, outputs at the dynamic sizes
                if os.path.exists(outputs_path + f".{side}.pt"):
                    shutil.copyfile(outputs_path + f".{side}.pt", os.path.join(tmp, f"{side}.pt"))
            with open(os.path.join(tmp, "result.json"), "w") as fh:
                json.dump(result, fh)

        self._put("result", key, write)

    def drop_result(self, key: str) -> bool:
        """Forget a fresh-process result (a failed timing verdict is measured again next run,
        never served from the cache). True if there was an entry."""
        if not self.enabled:
            return False
        d = self._dir("result", key)
        if not os.path.isdir(d):
            return False
        _remove(d)
        return True


# --- location, size and eviction ---------------------------------------------------------------

DEFAULT_MAX_BYTES = 2 * 1000**3  # 2 GB
KINDS = ("built", "artifact", "result")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def default_root() -> str:
    """The user's cache folder, shared by every checkout (keys are content hashes):
    $DEPLOYCHECK_CACHE_DIR, else $XDG_CACHE_HOME/deploycheck, else the platform's cache folder."""
    import sys

    if os.environ.get("DEPLOYCHECK_CACHE_DIR"):
        return os.path.abspath(os.environ["DEPLOYCHECK_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "deploycheck")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/deploycheck")
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "deploycheck", "Cache")
    return os.path.expanduser("~/.cache/deploycheck")


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1.5GiB' or a number of bytes -> bytes."""
    import re

    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500MB, 2GB, 1.5GiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_size(n: int) -> str:
    for unit, f in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def _tree_size(path: str) -> int:
    total = 0
    for d, _, fs in os.walk(path):
        for f in fs:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total


def entries(root: str) -> list[dict]:
    """Every published entry: kind, key, path, bytes, last use (mtime of its folder)."""
    out = []
    for kind in KINDS:
        base = os.path.join(root, kind)
        if not os.path.isdir(base):
            continue
        for shard in sorted(os.listdir(base)):
            sd = os.path.join(base, shard)
            if not os.path.isdir(sd):
                continue
            for key in sorted(os.listdir(sd)):
                d = os.path.join(sd, key)
                try:
                    used = os.stat(d).st_mtime
                except OSError:
                    continue
                out.append({"kind": kind, "key": key, "path": d, "bytes": _tree_size(d), "used": used})
    return out


def _remove(path: str) -> None:
    """Take an entry out of sight atomically (rename), then delete it: a reader sees all or nothing."""
    import uuid

    trash = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), "tmp", f"evicted-{uuid.uuid4().hex}")
    try:
        os.makedirs(os.path.dirname(trash), exist_ok=True)
        os.replace(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def evict(root: str, max_bytes: int) -> list[dict]:
    """Remove least recently used entries until the cache is at most ``max_bytes``; returns them.
    Staging folders older than an hour (an interrupted writer) go too."""
    import time

    staging = os.path.join(root, "tmp")
    if os.path.isdir(staging):
        for name in os.listdir(staging):
            p = os.path.join(staging, name)
            try:
                if time.time() - os.stat(p).st_mtime > 3600:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass
    es = entries(root)
    total = sum(e["bytes"] for e in es)
    removed = []
    for e in sorted(es, key=lambda e: (e["used"], e["path"])):
        if total <= max_bytes:
            break
        _remove(e["path"])
        total -= e["bytes"]
        removed.append(e)
    return removed


def clean(root: str, *, older_than_s: float | None = None) -> list[dict]:
    """Remove every entry, or only those unused for longer than ``older_than_s``."""
    import time

    now = time.time()
    gone = [e for e in entries(root) if older_than_s is None or now - e["used"] > older_than_s]
    for e in gone:
        _remove(e["path"])
    if older_than_s is None:
        shutil.rmtree(os.path.join(root, "tmp"), ignore_errors=True)
    return gone
