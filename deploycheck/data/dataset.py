"""Load the spec's data through its source, split it, and run its preprocessing steps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StageError
from ..models import describe_exc
from . import PREPROCESS, SOURCES


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
    return SOURCES.get(scheme).load(rest, spec)


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


def preprocess(spec, x: np.ndarray) -> np.ndarray:
    """Apply the spec's steps in order; the default result is float32 for float data."""
    x = np.asarray(x)
    if x.dtype.kind in "fiub":
        x = x.astype(np.float32)  # a dtype step casts back (token ids, say)
    steps = [(s, PREPROCESS.get(s.op)) for s in spec.data.preprocess]
    if x.dtype.kind in "OUS" and not any(op.reads_text for _, op in steps):
        raise StageError("build", "the data are texts: add a preprocessing step such as {tokenize: {max_length: 128}}",
                         spec=spec.name, where=spec.where("data"))
    for i, (step, op) in enumerate(steps):
        try:
            x = op.apply(x, step.arg, spec)
        except Exception as e:
            raise StageError("build", f"preprocess[{i}] {step.op} failed on data of shape {tuple(x.shape)}: "
                             f"{describe_exc(e)}", spec=spec.name, where=spec.where("data")) from e
    return x
