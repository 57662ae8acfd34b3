"""The cache's store: entries written atomically, verified against their checksums before every
use, and models read back only as allowed classes (see :mod:`deploycheck.cache`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import no_space
from ..formats.integrity import copy_hashed
from .keys import file_sha
from .safe import STAGING_MARK, UnsafeFolder, check_cache_root, is_own


class CacheWarning(UserWarning):
    """A cache entry was damaged and rebuilt, or the cache could not be written and was turned off."""


CHECKSUMS = "checksums.json"
#: Top-level packages whose module and tensor classes a cached model may be made of (runtime
#: libraries, not files' choices); the spec's own modules are added per spec.
TRUSTED_PACKAGES = ("torch", "torchao", "deploycheck")


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
                check_cache_root(root)
            except UnsafeFolder as e:
                self._warn(f"{e}; caching is off for this session")
                self.root = None
            except OSError as e:
                self._off(e)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _off(self, e: BaseException) -> None:
        """The cache cannot be written: say so once, and go on without it."""
        why = "no space left on device" if no_space(e) else (getattr(e, "strerror", None) or str(e))
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
        tmp = tempfile.mkdtemp(prefix=f"{kind}-", dir=d)
        open(os.path.join(tmp, STAGING_MARK), "w").close()  # what cleanup may delete (cache.safe)
        return tmp

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
                if no_space(e):
                    raise
        except Exception as e:  # noqa: BLE001 - a cache write never fails the run
            if isinstance(e, OSError) or no_space(e):
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

    def holds(self, kind: str, key: str) -> bool:
        """Whether a whole entry is there (its files match their checksums); counts no hit."""
        return self._entry(kind, key) is not None

    def discard(self, kind: str, key: str, why: str) -> None:
        """Remove a bad entry, saying so once."""
        remove_entry(self._dir(kind, key))
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
                if no_space(e):
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
            # a hard link where the file system allows (the entry's bytes were checked just now; a
            # later write to either name fails the entry's checksums, and it is rebuilt)
            if copy_hashed(src, dest, link_if=manifest["sha256"]) != manifest["sha256"]:
                self.discard("artifact", key, "does not match its manifest")
                os.unlink(dest)
                return None
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
    def get_result(self, key: str, outputs_dest: str, *, hit: str = "result") -> dict | None:
        """A fresh-process result and its outputs (copied to ``outputs_dest``), counted as a
        ``hit`` ("result", or "evaluation" for one whose latency is measured again)."""
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
        self.hits[hit] = self.hits.get(hit, 0) + 1
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

    # in-memory evaluations (extra inputs through a built variant, greedy generations)
    def get_value(self, key: str, *, hit: str = "value") -> Any:
        """A value :meth:`put_value` stored (tensors, lists, dicts of them, strings), or None,
        counted as a ``hit`` of that name. Read with ``weights_only=True``: an entry is data, never code."""
        d = self._entry("value", key)
        if d is None:
            return None
        import torch

        try:
            value = torch.load(os.path.join(d, "value.pt"), weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable entry is computed again, whatever the reader raised
            self.discard("value", key, "could not be read")
            return None
        self.hits[hit] = self.hits.get(hit, 0) + 1
        self._touch(d)
        return value

    def put_value(self, key: str, value: Any) -> None:
        def write(tmp: str) -> None:
            import torch

            torch.save(value, os.path.join(tmp, "value.pt"))

        self._put("value", key, write)

    # models converted from another file format (a GGUF file's float weights)
    def get_folder(self, kind: str, key: str) -> str | None:
        """The folder of a whole entry (every file matches its checksum), marked as used; None when absent."""
        d = self._entry(kind, key)
        if d is not None:
            self.hits[kind] = self.hits.get(kind, 0) + 1
            self._touch(d)
        return d

    def put_folder(self, kind: str, key: str, write: Callable[[str], None]) -> str | None:
        """Publish the files ``write(folder)`` makes as one entry; its folder, or None when the cache
        is off or could not be written (the caller then keeps its own copy)."""
        self._put(kind, key, write)
        return self._entry(kind, key)

    def drop_result(self, key: str) -> bool:
        """Forget a fresh-process result (a failed timing verdict is measured again next run,
        never served from the cache). True if there was an entry."""
        if not self.enabled:
            return False
        d = self._dir("result", key)
        if not os.path.isdir(d):
            return False
        remove_entry(d)
        return True


def _keyed_folder(path: str) -> bool:
    """A real folder named by a key (64 hex digits) under ``<kind>/<key[:2]>/``: an entry whose
    marker was lost (a damaged entry, removed so its rebuild can take its place)."""
    import re

    name = os.path.basename(path)
    return (
        not os.path.islink(path)
        and os.path.isdir(path)
        and re.fullmatch(r"[0-9a-f]{64}", name) is not None
        and os.path.basename(os.path.dirname(path)) == name[:2]
    )


def remove_entry(path: str) -> None:
    """Take an entry out of sight atomically (rename), then delete it: a reader sees all or nothing.
    Only a real folder carrying the entry marker is touched (never a link, never another's folder)."""
    import uuid

    if not (is_own(path, CHECKSUMS) or _keyed_folder(path)):
        return
    trash = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), "tmp", f"evicted-{uuid.uuid4().hex}")
    try:
        os.makedirs(os.path.dirname(trash), exist_ok=True)
        os.replace(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)  # the folder just checked, renamed by this process
