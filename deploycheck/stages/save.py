"""Save stage: serialize a built variant into one format, next to its manifest (size, sha256,
input signature, what a loader needs). Files are written under a temporary name and renamed, so
an interrupted save never leaves a file that looks whole. A variant made elsewhere is used in
place, never copied or rewritten."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass

from ..cache import artifact_key
from ..errors import StageError, no_space
from ..formats import FORMATS, SaveContext, Unsupported
from ..formats.integrity import read_manifest, sha256, write_manifest
from ..loading import baseline_arch, describe_exc
from ..protocol import ArtifactRef
from .build import Built


class VariantUnsupported(Exception):
    """A format cannot hold a variant; carries the exporter's reason."""

    def __init__(self, reason: str, *, spec: str, variant: str, fmt: str, where: str):
        self.reason, self.spec, self.variant, self.fmt, self.where = reason, spec, variant, fmt, where
        super().__init__(f"{fmt} cannot hold variant {variant!r}: {reason}")


@dataclass
class Artifact:
    path: str
    manifest: dict
    size: int
    sha256: str
    format: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    code: dict | None = None  # the spec's factory and kwargs (a state dict is rebuilt with them)

    def ref(self) -> ArtifactRef:
        """What a worker process needs to load it."""
        return ArtifactRef(self.path, self.format, self.options, self.manifest, self.code)


def save(t, built: Built, *, folder: str, example, cache, tokenizer_dir: str | None = None) -> Artifact:
    """``built`` written in ``t``'s format as ``folder/model<suffix>`` with its manifest (or the
    same file from the cache). ``example`` is the example input exporters trace with;
    ``tokenizer_dir`` the causal LM's model folder, whose tokenizer ships with the artifact."""
    b = built
    fmt = FORMATS.get(t.fmt)()
    options = dataclasses.asdict(t.fspec.options)
    path = os.path.join(folder, f"model{fmt.suffix}")
    akey = artifact_key(b.key, t.fspec)
    code = dict(b.arch) if b.arch else None
    # A format that could not hold this very build (same recipe, code, libraries, options) cannot
    # hold it next session either: say so again without rebuilding the model to find out.
    ukey = hashlib.sha256(f"{akey}:unsupported".encode()).hexdigest()
    known = cache.get_value(ukey, hit="unsupported") if b.key else None
    if isinstance(known, str):
        raise VariantUnsupported(f"{known} (cached)", spec=t.spec.name, variant=t.vname, fmt=t.fmt, where=t.where)
    man = cache.get_artifact(akey, path) if not fmt.unpickles else None
    if man is not None and not _restore_kv_step(cache, akey, path, man):
        man = None  # its KV-cache step was evicted: saved again with it
    tok = _ship_tokenizer(tokenizer_dir, folder)
    if man is not None:
        return Artifact(path, man, man["size"], man["sha256"], t.fmt, options, code=code)
    tmp = os.path.join(os.path.dirname(path), f"partial-{os.path.basename(path)}")  # keeps the suffix
    # Some writers abort the process on a full disk (torch.jit.save); a folder with less room than
    # the model's state (plus a margin) fails this item before they start.
    need = (b.state_bytes or 0) + (1 << 20)
    if free_bytes(os.path.dirname(path)) < need:
        raise StageError.at(t, "save", no_space_message(os.path.dirname(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = SaveContext(example=example, options=t.fspec.options, arch=b.arch, inputs=t.spec.model.inputs)
            extra = fmt.save(b.model, tmp, ctx)
            kv = _save_kv_step(t, b.model, path)
    except Unsupported as e:
        _remove_partial(tmp)
        if b.key and e.lasting:
            cache.put_value(ukey, str(e))
        raise VariantUnsupported(str(e), spec=t.spec.name, variant=t.vname, fmt=t.fmt, where=t.where) from e
    except Exception as e:
        _remove_partial(tmp)
        if no_space(e):
            raise StageError.at(t, "save", no_space_message(os.path.dirname(path))) from e
        raise StageError.at(t, "save", f"saving as {t.fmt} failed: {describe_exc(e)}") from e
    try:
        os.replace(tmp, path)
        sig = t.spec.model.inputs
        signature = (
            {
                "inputs": {
                    n: {
                        "shape": list(i.shape),
                        "dtype": i.dtype,
                        "dynamic": {str(d.dim): d.name for d in i.dynamic_dims},
                    }
                    for n, i in sig.items
                }
            }
            if sig.named or sig.first.dynamic
            else {}
        )
        man = write_manifest(
            path,
            fmt=t.fmt,
            input_shape=sig.shape,
            input_dtype=sig.dtype,
            extra={
                **(extra or {}),
                **signature,
                "requires": list(b.requires),
                "torch_settings": b.settings,
                **({"tokenizer": tok} if tok else {}),
                **({"kv_cache": kv} if kv else {}),
            },
        )
    except OSError as e:
        if no_space(e):
            raise StageError.at(t, "save", no_space_message(os.path.dirname(path))) from e
        raise
    if not fmt.unpickles:  # a cached pickle would be code from a folder that may come from elsewhere
        cache.put_artifact(akey, path, man)
        if kv.get("file"):
            from ..formats.lm_kv import kv_path

            cache.put_artifact(akey + "-kv", kv_path(path), {"sha256": kv["sha256"], "size": kv["size"]})
    return Artifact(path, man, man["size"], man["sha256"], t.fmt, options, code=code)


def free_bytes(folder: str) -> int:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # unknown: let the writer say


def no_space_message(folder: str) -> str:
    return (
        f"no space left on device in {folder}: free space there, or move the run folder with --deploycheck-run-dir DIR"
    )


def _remove_partial(tmp: str) -> None:
    import shutil

    if os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    elif os.path.exists(tmp):
        os.unlink(tmp)


def _save_kv_step(t, model, path: str) -> dict:
    """A causal LM with ``generation`` in the export or onnx format also ships its KV-cache step
    next to the artifact (:mod:`deploycheck.formats.lm_kv`); the manifest's ``kv_cache`` entry."""
    hf, g = t.spec.model.hf, t.spec.generation
    if hf is None or hf.task != "causal-lm" or g is None or not g.kv_cache or t.fmt not in ("export", "onnx"):
        return {}
    from ..formats.lm_kv import save_step

    opts = t.fspec.options
    return save_step(
        model,
        path,
        fmt=t.fmt,
        inputs=t.spec.model.inputs,
        dynamic_seq=getattr(opts, "dynamic_seq", True),
        opset=getattr(opts, "opset", 18),
    )


def _restore_kv_step(cache, akey: str, path: str, man: dict) -> bool:
    """A cached artifact's KV-cache step, copied back next to it; False when it is not in the cache."""
    kv = man.get("kv_cache") or {}
    if not kv.get("file"):
        return True
    from ..formats.lm_kv import kv_path

    got = cache.get_artifact(akey + "-kv", kv_path(path))
    return got is not None and got.get("sha256") == kv.get("sha256")


def _ship_tokenizer(src: str | None, folder: str) -> dict[str, str]:
    """A causal LM ships with its tokenizer: the files of its model folder ``src`` are copied into
    ``folder/tokenizer`` next to the artifact and their sha256 go into the manifest (the
    ``tokenizer`` check compares both)."""
    if src is None:
        return {}
    import shutil

    from ..hf import tokenizer_files

    files = tokenizer_files(src)
    dest = os.path.join(folder, "tokenizer")
    os.makedirs(dest, exist_ok=True)
    for name in files:
        shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    return files


def made_elsewhere(t) -> Artifact:
    """The user's file, used in place. Its manifest is the one deploycheck wrote next to it, if
    any, else its size and checksum (pinned by artifact.sha256). The manifest is data: a state
    dict is rebuilt with the spec's factory, and a manifest naming another is a load error."""
    spec, src = t.spec, t.variant.artifact
    path = os.path.join(os.path.dirname(os.path.abspath(spec.path)), src.path)
    exists = os.path.isfile(path)
    actual = sha256(path) if exists else ""
    man = dict(read_manifest(path) or {}) if exists else {}
    fspec = t.variant.formats[0]
    if not man:
        man = {"format": src.format, "size": None, "sha256": actual, "made_elsewhere": True}
    code = None
    if FORMATS.get(src.format)().needs_code(fspec.options) and (spec.model.factory or spec.model.hf):
        code = baseline_arch(spec)  # a state dict rebuilds the spec's architecture
    if src.sha256:
        man["sha256"] = src.sha256  # a pinned checksum: a changed file fails load as corrupted
        man["pinned_by"] = "artifact.sha256 in the spec"
    return Artifact(
        path,
        man,
        os.path.getsize(path) if exists else 0,
        actual,
        fspec.name,
        dataclasses.asdict(fspec.options),
        code=code,
    )
