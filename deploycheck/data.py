"""Datasets (built-in, .npz, python callables) and declarative preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StageError
from .registry import Registry

#: sklearn bundled datasets: no download, always available offline.
SKLEARN: Registry[str] = Registry("sklearn dataset")
for _n in ("digits", "iris", "wine", "breast_cancer", "diabetes"):
    SKLEARN.register(_n, f"sklearn.datasets:load_{_n}")


@dataclass
class Dataset:
    """Preprocessed arrays. ``y`` is None for unlabelled data (the baseline's outputs become the targets)."""

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None

    def eval_batches(self, batch_size: int):
        import torch
        x = torch.from_numpy(np.ascontiguousarray(self.x_test))
        return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]

    def train_tensors(self):
        import torch
        x = torch.from_numpy(np.ascontiguousarray(self.x_train))
        y = None if self.y_train is None else torch.from_numpy(np.ascontiguousarray(self.y_train))
        return x, y


def _raw(spec) -> tuple[Any, Any, Any, Any] | tuple[Any, Any]:
    scheme, _, rest = spec.data.source.partition(":")
    base = os.path.dirname(os.path.abspath(spec.path))
    if scheme == "sklearn":
        loader = SKLEARN.get(rest)
        return loader(return_X_y=True)
    if scheme == "npz":
        path = os.path.join(base, rest)
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x_train", "x_test"} <= keys:
                return (z["x_train"], z["y_train"] if "y_train" in keys else None,
                        z["x_test"], z["y_test"] if "y_test" in keys else None)
            if "x" not in keys:
                raise ValueError(f"{rest} has arrays {sorted(keys)}; expected 'x' (and 'y'), "
                                 "or x_train/x_test (and y_train/y_test)")
            return z["x"], (z["y"] if "y" in keys else None)
    if scheme == "text":
        return np.asarray(read_lines(os.path.join(base, rest)), dtype=object), None
    if scheme == "python":
        from .models import import_callable, search_dirs
        out = import_callable(rest, search_dirs(spec))()
        if isinstance(out, dict):
            if "x_train" in out:
                return out["x_train"], out.get("y_train"), out["x_test"], out.get("y_test")
            return out["x"], out.get("y")
        if isinstance(out, tuple) and len(out) in (2, 4):
            return out
        raise TypeError(f"{rest} returned {type(out).__name__}; expected (x, y), (x_train, y_train, x_test, y_test) "
                        "or a dict with those keys")
    raise ValueError(f"unknown data source scheme {scheme!r}")


def read_lines(path: str) -> list[str]:
    """Texts, one per line; blank lines and lines starting with '#' are skipped."""
    with open(path, encoding="utf-8") as fh:
        return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]


def load_triplets(spec):
    """The spec's semantic triplets: (unique texts preprocessed like the data, [(a, closer, farther) indices])."""
    path = os.path.join(os.path.dirname(os.path.abspath(spec.path)), spec.semantic.triplets)
    texts: list[str] = []
    index: dict[str, int] = {}
    triplets = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise ValueError(f"{spec.semantic.triplets}:{n}: expected 3 tab-separated texts, got {len(parts)}")
            for t in parts:
                if t not in index:
                    index[t] = len(texts)
                    texts.append(t)
            triplets.append(tuple(index[t] for t in parts))
    return preprocess(spec, np.asarray(texts, dtype=object)), triplets


def load(spec) -> Dataset:
    """Load, split and preprocess the spec's data. Failures are build-stage errors naming the data line."""
    try:
        raw = _raw(spec)
        if len(raw) == 2:
            x, y = np.asarray(raw[0]), None if raw[1] is None else np.asarray(raw[1])
            xtr, ytr, xte, yte = _split(spec, x, y)
        else:
            xtr, ytr, xte, yte = (None if a is None else np.asarray(a) for a in raw)
        if spec.data.limit:
            xte = xte[:spec.data.limit]
            yte = None if yte is None else yte[:spec.data.limit]
        xtr, xte = preprocess(spec, xtr), preprocess(spec, xte)
    except StageError:
        raise
    except Exception as e:
        from .models import describe_exc
        raise StageError("build", f"cannot load data {spec.data.source!r}: {describe_exc(e)}", spec=spec.name,
                         where=spec.where("data")) from e
    return Dataset(xtr, _labels(ytr), xte, _labels(yte))


def _labels(y):
    if y is None:
        return None
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    return y.astype(np.float32)


def _split(spec, x, y):
    from sklearn.model_selection import train_test_split
    s = spec.data.split
    strat = y if (s.stratify and y is not None and np.issubdtype(np.asarray(y).dtype, np.integer)) else None
    if y is None:
        xtr, xte = train_test_split(x, test_size=s.test_fraction, random_state=s.seed)
        return xtr, None, xte, None
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=s.test_fraction, random_state=s.seed, stratify=strat)
    return xtr, ytr, xte, yte


_DT = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
       "int32": np.int32, "uint8": np.uint8}


def preprocess(spec, x: np.ndarray) -> np.ndarray:
    """Apply the spec's steps in order; the default result is float32 for float data."""
    x = np.asarray(x)
    if x.dtype.kind in "fiub":
        x = x.astype(np.float32)  # a dtype step casts back (token ids, say)
    if x.dtype.kind in "OUS" and not any(s.op in ("tokenize", "callable") for s in spec.data.preprocess):
        raise StageError("build", "the data are texts: add a preprocessing step such as {tokenize: {max_length: 128}}",
                         spec=spec.name, where=spec.where("data"))
    for i, step in enumerate(spec.data.preprocess):
        try:
            x = _apply(spec, step, x)
        except Exception as e:
            from .models import describe_exc
            raise StageError("build", f"preprocess[{i}] {step.op} failed on data of shape {tuple(x.shape)}: "
                             f"{describe_exc(e)}", spec=spec.name, where=spec.where("data")) from e
    return x


def _apply(spec, step, x: np.ndarray) -> np.ndarray:
    op, arg = step.op, step.arg
    if op == "scale":
        return x * np.float32(arg)
    if op == "shift":
        return x + np.float32(arg)
    if op == "clip":
        return np.clip(x, arg[0], arg[1])
    if op == "reshape":
        return x.reshape((x.shape[0],) + tuple(arg))
    if op == "dtype":
        if arg == "bfloat16":
            raise ValueError("bfloat16 data is not representable in numpy; cast the model instead")
        return x.astype(_DT[arg])
    if op == "normalize":
        mean = np.asarray(arg.mean, dtype=np.float32)
        std = np.asarray(arg.std, dtype=np.float32)
        if mean.ndim:  # per channel: channel is the first per-sample axis
            shape = (1, -1) + (1,) * (x.ndim - 2)
            mean, std = mean.reshape(shape), std.reshape(shape)
        return (x - mean) / std
    if op == "tokenize":
        from .hf import resolve, tokenize
        src = arg.path or (spec.model.hf.path if spec.model.hf else None)
        if src is None:
            raise ValueError("tokenize needs a tokenizer: set its path, or use model.hf")
        return tokenize(x, path=resolve(src, os.path.dirname(os.path.abspath(spec.path))), max_length=arg.max_length)
    if op == "callable":
        from .models import import_callable, search_dirs
        out = np.asarray(import_callable(arg, search_dirs(spec))(x))
        if len(out) != len(x):
            raise ValueError(f"{arg} returned {len(out)} samples for {len(x)}")
        return out
    raise ValueError(f"unknown step {op}")
