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


#: file suffixes the image sources read (decoded with Pillow)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(source: str, spec) -> list[str]:
    """Every file an ``images:`` or ``manifest:`` source reads (the manifest first), for the cache
    key: a changed, added or removed image changes it."""
    scheme, _, rest = source.partition(":")
    path = os.path.join(_base(spec), rest)
    if scheme == "images":
        x, _ = _images(rest, spec)
        return [str(f) for f in x]
    if scheme == "manifest":
        x, _ = _manifest(rest, spec)
        return [path] + [str(f) for f in x]
    return []


def _images(rest: str, spec):
    """A folder with one subfolder per class (torchvision's ImageFolder layout): labels are the
    classes' indices in sorted order; files in sorted order within each class."""
    import numpy as np

    root = os.path.join(_base(spec), rest)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"images:{rest}: no folder {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, c))):
            if f.lower().endswith(IMAGE_SUFFIXES):
                files.append(os.path.join(root, c, f))
                labels.append(i)
    if not files:
        raise ValueError(
            f"images:{rest}: no images in class subfolders (expected {rest}/<class>/<image> with suffix "
            f"{', '.join(IMAGE_SUFFIXES)}); found {len(classes)} subfolders"
        )
    return np.asarray(files, dtype=object), np.asarray(labels, dtype=np.int64)


def _manifest(rest: str, spec):
    """A CSV file with a header naming `path` and `label` columns, or a JSONL file of
    {"path": ..., "label": ...} objects; paths relative to the manifest's folder, labels integers."""
    import csv
    import json

    import numpy as np

    path = os.path.join(_base(spec), rest)
    folder = os.path.dirname(path)
    rows: list[tuple[int, Any, Any]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        if path.endswith(".jsonl"):
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"manifest:{rest}:{n}: not a JSON object ({e.msg})") from None
                    if not isinstance(obj, dict):
                        raise ValueError(f'manifest:{rest}:{n}: expected {{"path": ..., "label": ...}}')
                    rows.append((n, obj.get("path"), obj.get("label")))
        else:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in reader.fieldnames or "label" not in reader.fieldnames:
                raise ValueError(
                    f"manifest:{rest}: the CSV header must name `path` and `label`, got {reader.fieldnames}"
                )
            rows = [(n, r.get("path"), r.get("label")) for n, r in enumerate(reader, 2)]
    files, labels = [], []
    for n, p, label in rows:
        if not isinstance(p, str) or not p:
            raise ValueError(f"manifest:{rest}:{n}: no path")
        try:
            labels.append(int(label))
        except (TypeError, ValueError):
            raise ValueError(f"manifest:{rest}:{n}: label {label!r} is not an integer") from None
        full = os.path.join(folder, p)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"manifest:{rest}:{n}: no image {full}")
        files.append(full)
    if not files:
        raise ValueError(f"manifest:{rest}: no rows")
    return np.asarray(files, dtype=object), np.asarray(labels, dtype=np.int64)


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
IMAGES = DataSource(
    "images",
    "images:DIR",
    "image files in one subfolder per class (DIR/<class>/<image>, as torchvision's ImageFolder), relative to "
    "the spec; labels are the classes' indices in sorted order. Decode them with the `image` step",
    _images,
)
MANIFEST = DataSource(
    "manifest",
    "manifest:FILE",
    "a CSV (header with `path` and `label`) or JSONL ({path, label} per line) listing images, paths relative to "
    "the manifest, integer labels. Decode them with the `image` step",
    _manifest,
)
