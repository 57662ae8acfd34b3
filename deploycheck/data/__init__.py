"""Data plug-ins: where samples come from (``data.source`` schemes) and the preprocessing steps
(``data.preprocess``), each a lazy :class:`~deploycheck.registry.Registry`.

The spec validates names, options and arguments through these registries (nothing heavy is
imported: the plug-in modules load numpy only when they run); :mod:`deploycheck.data.dataset`
loads, splits and preprocesses the arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry


@dataclass(frozen=True)
class DataSource:
    """A ``data.source`` scheme: ``scheme:rest``."""

    scheme: str
    form: str  # how the spec writes it, e.g. 'npz:PATH'
    doc: str
    load: Callable[..., tuple]  # load(rest, spec) -> (x, y) or (x_train, y_train, x_test, y_test)
    check: Callable[[str], str | None] = lambda rest: None  # a problem with `rest`, found at collection


@dataclass(frozen=True)
class PreprocessOp:
    """A ``data.preprocess`` step: ``{name: arg}``."""

    name: str
    doc: str
    arg: Any  # the argument's type (a dataclass takes a mapping of options)
    apply: Callable[..., Any]  # apply(x, arg, spec) -> x, on numpy arrays of the whole split
    check: Callable[[Any], str | None] = lambda arg: None
    reads_text: bool = False  # takes raw texts (the others need numbers)


#: scheme -> DataSource
SOURCES: Registry[DataSource] = Registry("data source")
#: step name -> PreprocessOp
PREPROCESS: Registry[PreprocessOp] = Registry("preprocessing step")

for _s in ("sklearn", "npz", "text", "python", "images", "manifest"):
    SOURCES.register(_s, f"deploycheck.data.sources:{_s.upper()}")
for _o in ("scale", "shift", "normalize", "clip", "reshape", "dtype", "callable", "tokenize", "image"):
    PREPROCESS.register(_o, f"deploycheck.data.ops:{_o.upper()}")
