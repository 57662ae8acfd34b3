"""Artifact manifests (sha256, size, format, library versions, input signature) and load-error diagnosis.

The same diagnosis serves the worker (before and while loading) and ``deploycheck inspect``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from ..digest import remember, sha256  # noqa: F401 - sha256 re-exported (the artifacts' hash)
from ..machine import snapshot_machine
from . import sniff


def copy_hashed(src: str, dest: str, *, link_if: str | None = None) -> str:
    """Copy ``src`` to ``dest`` (replaced whole, through a temporary name), hashing the bytes as
    they are written; ``dest`` is remembered with that digest, so the keys and checks that read it
    next do not read it again (it is this process's own file, just written).

    ``link_if``: the digest ``src`` was just verified to have. Then ``dest`` is a hard link to
    ``src`` where the file system allows one (no bytes copied), provided ``src`` still hashes to
    it (read from the memo: its stamps have not changed since)."""
    tmp = dest + ".copying"
    if link_if is not None and sha256(src) == link_if:
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.link(src, tmp, follow_symlinks=False)
            os.replace(tmp, dest)
            st = os.stat(dest)
            remember(st, link_if)
            return link_if
        except OSError:  # another file system, or links not allowed there: copied
            if os.path.lexists(tmp):
                os.unlink(tmp)
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            for chunk in iter(lambda: fin.read(1 << 20), b""):
                h.update(chunk)
                fout.write(chunk)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    digest = h.hexdigest()
    st = os.stat(dest)
    remember(st, digest)
    return digest


def manifest_path(path: str) -> str:
    return path + ".manifest.json"


def library_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for lib in ("torch", "onnx", "onnxruntime", "onnxscript", "torchao", "safetensors", "deploycheck"):
        try:
            out[lib] = md.version(lib)
        except md.PackageNotFoundError:
            pass
    return out


def write_manifest(path: str, *, fmt: str, input_shape, input_dtype: str, extra: dict) -> dict:
    man = {
        "format": fmt,
        "file": os.path.basename(path),
        "size": os.path.getsize(path),
        "sha256": sha256(path),
        "libraries": library_versions(),
        "input": {"shape": list(input_shape), "dtype": input_dtype},
        "machine": snapshot_machine(),
        **extra,
    }
    tmp = manifest_path(path) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(man, fh, indent=2, sort_keys=True)
    os.replace(tmp, manifest_path(path))
    return man


def read_manifest(path: str) -> dict | None:
    try:
        with open(manifest_path(path)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _escaping_member(path: str) -> str | None:
    """The first zip member whose name is absolute or climbs out with '..', or members that do not
    share the archive's one top folder (torch's writers put everything under one)."""
    import posixpath
    import zipfile

    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    tops: dict[str, list[str]] = {}
    for n in names:
        norm = posixpath.normpath(n.replace("\\", "/"))
        if n.startswith(("/", "\\")) or norm == ".." or norm.startswith("../") or ":" in n.split("/")[0]:
            return n
        tops.setdefault(norm.split("/")[0], []).append(n)
    if len(tops) > 1:  # the folder most members share is the archive's; name a member outside it
        main = max(tops, key=lambda t: len(tops[t]))
        return min(n for t, members in tops.items() if t != main for n in members)
    return None


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # empty | missing | not-a-file | unreadable | truncated | corrupted | wrong-format | version-skew | missing-module | missing-operator | load-error
    message: str

    def render(self, path: str) -> str:
        return f"{self.kind}: {path}: {self.message}"


FORMAT_NAMES = {
    "export": "a torch.export .pt2",
    "torchscript": "a TorchScript",
    "onnx": "an ONNX",
    "safetensors": "a safetensors",
    "pickle": "a torch.save pickle",
    "hdf5": "an HDF5",
    "aoti": "an AOTInductor package",
    "zip": "a zip archive",
}


def check_file(path: str, declared: str | None, manifest: dict | None) -> Diagnosis | None:
    """Checks that need no loading: presence, emptiness, size and checksum vs manifest, sniffed format."""
    if not os.path.exists(path):
        return Diagnosis("missing", "the file does not exist: was it shipped?")
    if os.path.isdir(path):
        try:
            inside = sorted(os.listdir(path))
        except OSError:
            inside = []
        shown = ", ".join(inside[:5]) + (", …" if len(inside) > 5 else "") if inside else "nothing"
        return Diagnosis(
            "not-a-file", f"it is a folder, not a file (it holds {shown}): name the artifact file inside it"
        )
    if not os.access(path, os.R_OK):
        return Diagnosis("unreadable", "the file cannot be read (permission denied)")
    size = os.path.getsize(path)
    if size == 0:
        return Diagnosis(
            "empty", "the file is empty (0 bytes): the writer failed or the copy never happened; re-export it"
        )
    if manifest:
        want = manifest.get("size")
        if want is not None and size < want:
            return Diagnosis(
                "truncated",
                f"the file is incomplete: {size} of {want} bytes "
                "(a copy or upload was cut short); copy it again from the build",
            )
        digest = sha256(path)
        if digest != manifest.get("sha256"):
            how = (
                f"{size} bytes instead of {want}"
                if want is not None and size != want
                else "same size, different bytes"
                if want is not None
                else f"{size} bytes, different content"
            )
            return Diagnosis(
                "corrupted",
                f"checksum mismatch ({how}): sha256 {digest[:16]}… but "
                f"{manifest.get('pinned_by', 'the manifest')} says "
                f"{str(manifest.get('sha256'))[:16]}…; the bytes changed after it was written; rebuild or copy it again",
            )
    found = sniff(path)
    escaping = _escaping_member(path) if found in ("export", "torchscript", "aoti", "pickle", "zip") else None
    if escaping is not None:
        return Diagnosis(
            "corrupted",
            f"the archive has a member outside its own folder ({escaping!r}): no writer of torch makes such "
            "a file; it was altered or built to escape where it is unpacked (zip slip), so it is not loaded",
        )
    if found == "zip (unreadable)":
        return Diagnosis(
            "truncated",
            "the zip archive has no readable directory: the file is incomplete or damaged; "
            "copy it again from the build",
        )
    if declared and found and found != declared and not (declared == "pickle" and found == "torchscript"):
        return Diagnosis(
            "wrong-format",
            f"the file is {FORMAT_NAMES.get(found, found)} file, but it is declared as "
            f"{FORMAT_NAMES.get(declared, declared)} file: check which file was shipped",
        )
    if declared and found is None and declared not in ("onnx",):
        return Diagnosis(
            "corrupted",
            f"the bytes are not {FORMAT_NAMES.get(declared, declared)} file "
            "(unrecognised header): the file is damaged or of an unknown format",
        )
    return None


#: Runtime libraries a loader may import before loading an artifact, because they register its
#: operators (torchao's quantized_decomposed ops for pt2e int8 graphs). A manifest's ``requires``
#: may name only these: a file never chooses a module to import.
RUNTIME_LIBRARIES = ("torchao",)
#: Manifest keys that would choose code: they come from the spec (:attr:`ArtifactRef.code`), never a file.
CODE_KEYS = ("factory", "kwargs")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _canon(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def vet_manifest(
    manifest: dict | None, code: dict | None, *, path: str, uses_code: bool = True
) -> tuple[dict, Diagnosis | None]:
    """The manifest a loader may act on: its factory and kwargs replaced by ``code`` (the spec's),
    its runtime libraries checked against :data:`RUNTIME_LIBRARIES`, its dtypes against torch's
    float dtypes. A manifest that names other code than the spec is reported, never obeyed."""
    man = dict(manifest or {})
    named = {k: man.pop(k) for k in CODE_KEYS if k in man}
    side = os.path.basename(manifest_path(path))
    if uses_code and named.get("factory") is not None:  # (a format that rebuilds no module ignores them)
        if not code or not code.get("factory"):
            return man, Diagnosis(
                "manifest-mismatch",
                f"{side} names factory {named['factory']!r}, but the spec names "
                "no factory to rebuild this model with: a manifest never "
                "chooses the code to run; give the spec a model.factory",
            )
        if _canon([named["factory"], named.get("kwargs") or {}]) != _canon([code["factory"], code.get("kwargs") or {}]):
            return man, Diagnosis(
                "manifest-mismatch",
                (
                    f"{side} names factory {named['factory']!r} with kwargs {_canon(named.get('kwargs') or {})}, but the "
                    f"spec rebuilds this model with {code['factory']!r} and kwargs {_canon(code.get('kwargs') or {})}: "
                    "a manifest never chooses the code to run; fix the spec's model, or delete the stale manifest"
                ),
            )
    if code and uses_code:
        man.update({k: code[k] for k in CODE_KEYS if k in code})
    libs = man.get("requires") or []
    bad = [lib for lib in libs if lib not in RUNTIME_LIBRARIES] if isinstance(libs, list) else [libs]
    if bad:
        return man, Diagnosis(
            "manifest-refused",
            (
                f"{side} asks to import {bad[0]!r} before loading; deploycheck imports only the runtime libraries "
                f"{', '.join(RUNTIME_LIBRARIES)} for an artifact (they register its operators), never a module a file "
                "names; remove it from the manifest's requires"
            ),
        )
    for k in ("cast", "float_dtype"):
        if man.get(k) is not None and man[k] not in _FLOAT_DTYPES:
            return man, Diagnosis(
                "manifest-refused", f"{side}: {k} {man[k]!r} is not one of {', '.join(_FLOAT_DTYPES)}"
            )
    return man, None


def runtime_libraries(manifest: dict | None) -> list[str]:
    """The manifest's ``requires`` that are on :data:`RUNTIME_LIBRARIES`; ValueError for any other."""
    libs = (manifest or {}).get("requires") or []
    bad = [lib for lib in libs if lib not in RUNTIME_LIBRARIES]
    if bad:
        raise ValueError(
            f"the manifest asks to import {bad[0]!r}, which is not one of the runtime libraries "
            f"({', '.join(RUNTIME_LIBRARIES)}); a file never chooses a module to import"
        )
    return list(libs)


_VERSION = re.compile(r"(newer|version|opset|ir_version|unsupported model ir|produced by)", re.I)
_MODULE = re.compile(r"No module named '([^']+)'|Can't get attribute '([^']+)'")
_OPERATOR = re.compile(
    r"(Unknown builtin op|Could not find any similar ops|no schema|operator .* not found|"
    r"unknown (custom )?op|Could not find schema|is not a registered|Unrecognized attribute|"
    r"NOT_IMPLEMENTED|Could not find an implementation)",
    re.I,
)
_TRUNC = re.compile(
    r"(PytorchStreamReader failed|failed finding central directory|unexpected end|EOF|"
    r"Protobuf parsing failed|truncat|incomplete|Error parsing message|InvalidHeaderDeserialization|"
    r"MetadataIncompleteBuffer|invalid load key|not a zip file)",
    re.I,
)


def classify(exc: BaseException, path: str) -> Diagnosis:
    """Explain an exception raised while loading an artifact."""
    text = f"{type(exc).__name__}: {exc}"
    first = text.strip().splitlines()[0][:400]
    m = _MODULE.search(text)
    if isinstance(exc, ModuleNotFoundError) or m:
        mod = (m.group(1) or m.group(2)) if m else getattr(exc, "name", "?")
        return Diagnosis(
            "missing-module",
            f"loading needs Python module/attribute {mod!r}, which this process cannot "
            "import: the artifact depends on the training code; ship a self-contained "
            f"format (export, torchscript, onnx) or install that code where it is deployed ({first})",
        )
    if re.search(r"Type '?tensor\((bfloat16|float16|int8|uint8)\)'? of input parameter|no kernel for bfloat16", text):
        return Diagnosis(
            "unsupported-type",
            "this runtime has no kernel for a dtype the artifact uses "
            f"(onnxruntime CPU lacks most bfloat16 kernels): ship this variant in another "
            f"format or another dtype ({first})",
        )
    if _OPERATOR.search(text):
        return Diagnosis(
            "missing-operator",
            "the artifact uses an operator this runtime does not have (a custom op, "
            "or one from a newer release): load the library that registers it, or "
            f"export without it ({first})",
        )
    if _TRUNC.search(text):
        return Diagnosis(
            "truncated",
            f"the file could not be read to the end: it is incomplete or damaged; copy it "
            f"again from the build ({first})",
        )
    if _VERSION.search(text):
        return Diagnosis(
            "version-skew",
            "the file was written by a newer library or opset than this runtime reads: "
            f"upgrade the runtime or export for an older version ({first})",
        )
    return Diagnosis("load-error", first)
