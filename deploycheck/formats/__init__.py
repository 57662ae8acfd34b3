"""Serialization formats. One module each (save, load); this module holds the registry (lazy
``"module:attr"`` entries), the shared base class and content sniffing. Option classes are light:
torch loads in methods."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..registry import Registry

FORMATS: Registry[type[Format]] = Registry("format")


class Unsupported(Exception):
    """The format cannot hold this variant; the message is the exporter's own reason. ``lasting``:
    the same build, code and libraries would fail the same way (remembered by the cache); False
    where the cause is this environment's (a library not installed)."""

    def __init__(self, message: str, *, lasting: bool = True):
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class SaveContext:
    """Everything a format's ``save`` may use besides the model: one declared argument, no
    signature inspection (a format reads what it needs and ignores the rest)."""

    example: Any  #: the example input (a tensor, or ``{name: tensor}`` for named inputs)
    options: Any  #: the format's validated options (its ``Options`` dataclass)
    arch: dict | None  #: how to rebuild the module (factory and kwargs), for formats that store weights only
    inputs: Any = None  #: the spec's ``model.inputs`` signature (names, dtypes, dynamic dimensions)


class Format:
    name: ClassVar[str]
    suffix: ClassVar[str]
    Options: ClassVar[type]
    description: ClassVar[str] = ""
    #: loading runs ``pickle`` on the file (code from the file): never cached, only loaded on opt-in
    unpickles: ClassVar[bool] = False

    def needs_code(self, options: Any) -> bool:
        """Whether loading needs the model's Python code (the factory) importable."""
        return False

    def save(self, model: Any, path: str, ctx: SaveContext) -> dict:
        """Write the artifact; return extra manifest fields. Raise Unsupported when it cannot."""
        raise NotImplementedError

    def load(self, path: str, *, options: Any, manifest: dict) -> Callable[..., Any]:
        """Load in the deployment-like process; return a callable taking one input batch."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoOptions:
    """This format takes no options."""


def formats_by_name(path: str) -> list[str]:
    """Formats whose usual file suffix the name ends with (``.pt2`` is export or aoti)."""
    low = os.path.basename(path).lower()
    extra = {".pt2": ["export", "aoti"], ".hdf5": ["hdf5"], ".pt": ["torchscript", "pickle"], ".pth": ["pickle"]}
    out = [n for n in FORMATS.names() if low.endswith(FORMATS.get(n).suffix)]
    for suf, names in extra.items():
        if low.endswith(suf):
            out += [n for n in names if n not in out]
    return out


def sniff(path: str) -> str | None:
    """Guess a file's format from its bytes (never from its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if not head:
        return None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(path).namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip (unreadable)"
        if any("/data/aotinductor/" in n for n in names):
            return "aoti"
        if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
            return "export"
        if any("/code/__torch__" in n for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") for n in names):
            return "pickle"
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0:
        return "safetensors"
    if head[:1] == b"\x08" and (b"pytorch" in head or b"onnx" in head.lower() or head[2:3] == b"\x12"):
        return "onnx"
    if head[:1] == b"\x80":
        return "pickle"
    return None


# The built-in formats, imported when a spec names one (light modules: torch loads in methods).
for _name, _cls in (
    ("aoti", "AotiFormat"),
    ("export", "ExportFormat"),
    ("hdf5", "Hdf5Format"),
    ("onnx", "OnnxFormat"),
    ("pickle", "PickleFormat"),
    ("safetensors", "SafetensorsFormat"),
    ("torchscript", "TorchScriptFormat"),
):
    FORMATS.register(_name, f"deploycheck.formats.{_name}:{_cls}")
