"""The built-in data sources. numpy and scikit-learn load when a source runs, not at collection."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..loading import import_callable, search_dirs
from ..registry import Registry
from ..schema import import_path_problem
from . import DataSource

#: scikit-learn's bundled datasets: no download, always available offline.
SKLEARN_DATASETS: Registry[Callable[..., Any]] = Registry("sklearn dataset")
for _n in ("digits", "iris", "wine", "breast_cancer", "diabetes"):
    SKLEARN_DATASETS.register(_n, f"sklearn.datasets:load_{_n}")


def _base(spec) -> str:
    return os.path.dirname(os.path.abspath(spec.path))


def _sklearn(rest: str, spec):
    return SKLEARN_DATASETS.get(rest)(return_X_y=True)


def _sklearn_check(rest: str) -> str | None:
    return None if rest in SKLEARN_DATASETS else str(SKLEARN_DATASETS.unknown(rest))


def _npz(rest: str, spec):
    import numpy as np

    with np.load(os.path.join(_base(spec), rest), allow_pickle=False) as z:
        keys = set(z.files)
        if {"x_train", "x_test"} <= keys:
            return (
                z["x_train"],
                z["y_train"] if "y_train" in keys else None,
                z["x_test"],
                z["y_test"] if "y_test" in keys else None,
            )
        if "x" not in keys:
            raise ValueError(
                f"{rest} has arrays {sorted(keys)}; expected 'x' (and 'y'), or x_train/x_test (and y_train/y_test)"
            )
        return z["x"], (z["y"] if "y" in keys else None)


def read_lines(path: str) -> list[str]:
    """Texts, one per line; blank lines and lines starting with '#' are skipped."""
    with open(path, encoding="utf-8") as fh:
        return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]


def read_prompts(path: str) -> list:
    """Generation prompts. A text file holds one prompt per line (blank and '#' lines skipped); a
    ``.jsonl`` file one JSON object per line: ``{"prompt": text}`` (newlines allowed) or
    ``{"messages": [{"role": "user", "content": text}, ...]}``, which the tokenizer's own chat
    template renders. A line that is neither names its line number."""
    import json

    if not path.endswith(".jsonl"):
        return read_lines(path)
    name = os.path.basename(path)
    shape = '{"prompt": "text"} or {"messages": [{"role": "user", "content": "text"}, ...]}'
    out: list = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{name}:{i}: not a JSON object ({e.msg}); each line is {shape}") from None
            if isinstance(obj, dict) and set(obj) == {"prompt"} and isinstance(obj["prompt"], str):
                if not obj["prompt"].strip():
                    raise ValueError(f"{name}:{i}: the prompt is empty")
                out.append(obj["prompt"])
                continue
            msgs = obj.get("messages") if isinstance(obj, dict) and set(obj) == {"messages"} else None
            ok = isinstance(msgs, list) and bool(msgs)
            ok = ok and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs or ()
            )
            if not ok:
                raise ValueError(f"{name}:{i}: expected {shape}, got {line.strip()[:120]}")
            out.append([{"role": m["role"], "content": m["content"]} for m in msgs or ()])
    return out


def _text(rest: str, spec):
    import numpy as np

    return np.asarray(read_lines(os.path.join(_base(spec), rest)), dtype=object), None


def _python(rest: str, spec):
    out = import_callable(rest, search_dirs(spec))()
    if isinstance(out, dict):
        if "x_train" in out:
            return out["x_train"], out.get("y_train"), out["x_test"], out.get("y_test")
        return out["x"], out.get("y")
    if isinstance(out, tuple) and len(out) in (2, 4):
        return out
    raise TypeError(
        f"{rest} returned {type(out).__name__}; expected (x, y), (x_train, y_train, x_test, y_test) "
        "or a dict with those keys"
    )


SKLEARN = DataSource(
    "sklearn",
    "sklearn:NAME",
    "a dataset bundled with scikit-learn: " + ", ".join(SKLEARN_DATASETS.names()),
    _sklearn,
    _sklearn_check,
)
NPZ = DataSource(
    "npz",
    "npz:PATH",
    "arrays x and y (split by `split`), or x_train/y_train/x_test/y_test, in an .npz file relative to the spec",
    _npz,
)
TEXT = DataSource("text", "text:PATH", "one text per line, relative to the spec (blank and '#' lines skipped)", _text)
PYTHON = DataSource(
    "python",
    "python:module:function",
    "a function returning (x, y), (x_train, y_train, x_test, y_test) or a dict with those keys",
    _python,
    import_path_problem,
)
