"""The bottom layer of validation: field declarations and shared value types that spec/, formats/,
recipes/ and data/ declare their options with. It imports nothing of deploycheck, so a format or a
recipe can declare its options without loading ``spec`` (which loads formats and recipes)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

MISSING = dataclasses.MISSING

DType = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"]


def import_path_problem(value: str, *, what: str = "callable") -> str | None:
    """Why ``value`` is not an import path 'package.module:<what>', or None: the one rule for every
    import path a spec names (factories, callables, students)."""
    mod, sep, attr = value.partition(":")
    if not sep or not mod or not attr or not all(p.isidentifier() for p in mod.split(".") + attr.split(".")):
        return f"expected an import path 'package.module:{what}', got {value!r}"
    return None


def field(
    default: Any = MISSING,
    *,
    doc: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field with its documentation and numeric bounds."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


#: tokenizer files a folder may hold; the ones present are hashed into the manifest and shipped
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
