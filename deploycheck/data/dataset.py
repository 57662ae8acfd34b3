"""Load the spec's data through its source, split it, and run its preprocessing steps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StageError
from ..loading import describe_exc
from ..protocol import rows, take
from . import PREPROCESS, SOURCES


@dataclass
class Dataset:
    """Preprocessed arrays. ``y`` is None for unlabelled data (the baseline's outputs become the targets).
    ``x`` is one array, or ``{input name: array}`` for a model with named inputs."""

    x_train: Any
    y_train: np.ndarray | None
    x_test: Any
    y_test: np.ndarray | None
    bf16: tuple[str, ...] = ()  # inputs declared bfloat16 (held as float32: numpy has none); "x" for one input

    def eval_batches(self, batch_size: int):
        x = as_tensors(self.x_test)
        return [take(x, slice(i, i + batch_size)) for i in range(0, rows(x), batch_size)]

    def train_tensors(self):
        import torch

        if rows(self.x_train) == 0:
            raise ValueError(
                "no training data: data.split.test_fraction is 1, so every sample evaluates; a recipe that "
                "calibrates, prunes by data or trains needs test_fraction below 1"
            )

        x = as_tensors(self.x_train, self.bf16)
        y = None if self.y_train is None else torch.from_numpy(np.ascontiguousarray(self.y_train))
        return x, y


#: sources whose every input is in a spec's build key (a file's bytes, a library's version):
#: their prepared data may be kept by the cache. A ``python:`` source or a ``callable`` step may
#: read files no key covers, so it runs every session.
KEPT_SOURCES = ("sklearn", "npz", "text")


def keepable(spec) -> bool:
    return spec.data.source.partition(":")[0] in KEPT_SOURCES and not any(
        s.op == "callable" for s in spec.data.preprocess
    )


def stored(ds: Dataset) -> dict | None:
    """``ds`` as tensors the cache keeps (read back with ``weights_only``: data, never code);
    None when an array is not numeric (object arrays of text are prepared again)."""
    import torch

    def one(a):
        if a is None:
            return None
        if isinstance(a, dict):
            out = {str(k): one(v) for k, v in a.items()}
            return None if any(v is None for v in out.values()) else out
        a = np.asarray(a)
        if a.dtype == object or a.dtype.kind not in "biuf":
            return None
        return torch.from_numpy(np.ascontiguousarray(a))

    parts = {"x_train": one(ds.x_train), "x_test": one(ds.x_test), "y_train": one(ds.y_train), "y_test": one(ds.y_test)}
    if parts["x_train"] is None or parts["x_test"] is None:
        return None
    if (parts["y_train"] is None) != (ds.y_train is None) or (parts["y_test"] is None) != (ds.y_test is None):
        return None
    return {**parts, "bf16": list(ds.bf16)}


def restored(value: Any) -> Dataset | None:
    """A :func:`stored` dataset back as arrays; None for anything else (the data is prepared again)."""
    import torch

    def one(a):
        if isinstance(a, dict) and all(isinstance(v, torch.Tensor) for v in a.values()):
            return {k: v.numpy() for k, v in a.items()}
        return a.numpy() if isinstance(a, torch.Tensor) else None

    if not isinstance(value, dict) or set(value) != {"x_train", "x_test", "y_train", "y_test", "bf16"}:
        return None
    x_train, x_test = one(value["x_train"]), one(value["x_test"])
    ys = [None if value[k] is None else one(value[k]) for k in ("y_train", "y_test")]
    bf16 = value["bf16"]
    if (
        x_train is None
        or x_test is None
        or any(value[k] is not None and y is None for k, y in zip(("y_train", "y_test"), ys, strict=True))
    ):
        return None
    if not isinstance(bf16, list) or not all(isinstance(b, str) for b in bf16):
        return None
    return Dataset(x_train, ys[0], x_test, ys[1], tuple(bf16))


def as_tensors(x, bf16: tuple[str, ...] = ()):
    """Arrays as tensors, keeping a dict of named inputs a dict; the inputs named in ``bf16`` (``x``
    for one input) as bfloat16, the dtype declared for them (recipes feed these to the model)."""
    import torch

    def one(name, a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(torch.bfloat16) if name in bf16 else t

    if isinstance(x, dict):
        return {k: one(k, v) for k, v in x.items()}
    return one("x", x)


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
    """Load, split and preprocess the spec's data, and give each input its declared dtype.
    Failures are build-stage errors naming the data line."""
    try:
        raw = _raw(spec)
        if len(raw) == 2:
            x, y = inputs_of(spec, raw[0]), None if raw[1] is None else np.asarray(raw[1])
            xtr, ytr, xte, yte = _split(spec, x, y)
        else:
            xtr, xte = inputs_of(spec, raw[0]), inputs_of(spec, raw[2])
            ytr, yte = (None if a is None else np.asarray(a) for a in (raw[1], raw[3]))
        if spec.data.limit:
            xte = take(xte, slice(0, spec.data.limit))
            yte = None if yte is None else yte[: spec.data.limit]
        xte = _prepare(spec, xte)
        # test_fraction 1: nothing to train on (an empty part shaped as the prepared evaluation part)
        xtr = _prepare(spec, xtr) if rows(xtr) else take(xte, slice(0, 0))
    except StageError:
        raise
    except Exception as e:
        raise StageError.at(
            spec, "build", f"cannot load data {spec.data.source!r}: {describe_exc(e)}", where=spec.where("data")
        ) from e
    bf16 = tuple(n for n, i in spec.model.inputs.items if i.dtype == "bfloat16")
    return Dataset(xtr, _labels(ytr), xte, _labels(yte), bf16)


def inputs_of(spec, x):
    """The data's inputs as the model declares them: one array, or ``{name: array}`` for named
    inputs. A source gives named inputs as a dict (matched by name) or a tuple (in declared order)."""
    sig = spec.model.inputs
    names = [n for n, _ in sig.items]
    if isinstance(x, dict):
        if not sig.named:
            raise ValueError(f"the data gives named inputs {sorted(x)}; declare them by name under model.inputs")
        missing, extra = [n for n in names if n not in x], [k for k in x if k not in names]
        if missing or extra:
            raise ValueError(
                f"the data gives inputs {list(x)} but model.inputs declares {names}"
                + (f" (missing {missing})" if missing else "")
                + (f" (not declared: {extra})" if extra else "")
            )
        out = {n: np.asarray(x[n]) for n in names}
    elif (
        isinstance(x, (tuple, list))
        and not (x and np.isscalar(x[0]))
        and all(hasattr(a, "__len__") for a in x)
        and sig.named
    ):
        if len(x) != len(names):
            raise ValueError(f"the data gives {len(x)} inputs but model.inputs declares {len(names)} ({names})")
        out = dict(zip(names, (np.asarray(a) for a in x), strict=False))
    elif sig.named:
        if len(names) != 1:
            raise ValueError(
                f"the data gives one array but model.inputs declares {len(names)} inputs ({names}); "
                "return a dict by name or a tuple in that order"
            )
        out = {names[0]: np.asarray(x)}
    else:
        return np.asarray(x)
    lens = {n: len(a) for n, a in out.items()}
    if len(set(lens.values())) > 1:
        raise ValueError(f"the inputs have different numbers of samples: {lens}")
    return out


def _prepare(spec, x):
    """Preprocess, then cast every input to its declared dtype."""
    sig = spec.model.inputs
    if isinstance(x, dict):
        decl = dict(sig.items)
        return {n: cast(n, preprocess(spec, a, default_float=False), decl[n].dtype, named=True) for n, a in x.items()}
    x = preprocess(spec, x)
    if sig.dtype == "float32":
        return x  # the default: numeric data are float32 already, a dtype or tokenize step decides otherwise
    return cast("x", x, sig.dtype, named=False)


def cast(name: str, a: np.ndarray, dtype: str, *, named: bool) -> np.ndarray:
    """``a`` as the declared dtype; integer and bool inputs must be given whole numbers (0 and 1
    for bool): anything else is an error naming the input, the dtype found and the one declared."""
    if a.dtype.kind in "OUS":
        return a  # texts: the model's own tokenizer step, or the worker, says what is wrong
    who = f"input {name!r}" if named else "the input"
    if dtype in ("int64", "int32", "uint8", "bool") and a.dtype.kind == "f":
        if a.size and (np.mod(a, 1) != 0).any():
            raise ValueError(
                f"{who}: the data gives {a.dtype} values that are not whole numbers (e.g. "
                f"{a.flat[int(np.flatnonzero(np.mod(a, 1) != 0)[0])]:.6g}) but model.inputs declares "
                f"{dtype}"
            )
    if dtype == "bool" and a.dtype.kind in "fiu" and a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{who}: the data gives {a.dtype} values other than 0 and 1 but model.inputs declares bool")
    if dtype == "bfloat16":
        return a.astype(np.float32)  # numpy has no bfloat16: cast on the tensor side (see runner.batches)
    return a.astype(np.dtype(dtype), copy=False)


def _labels(y):
    if y is None:
        return None
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    return y.astype(np.float32)


def _split(spec, x, y):
    from sklearn.model_selection import train_test_split

    s = spec.data.split
    if s.test_fraction >= 1:  # every sample evaluates; recipes that need training data say so
        none = np.arange(0)
        return take(x, none), None if y is None else y[none], x, y
    strat = y if (s.stratify and y is not None and np.issubdtype(np.asarray(y).dtype, np.integer)) else None
    if isinstance(x, dict):  # named inputs: split the row indices, then take the same rows of each
        idx = np.arange(rows(x))
        if y is None:
            itr, ite = train_test_split(idx, test_size=s.test_fraction, random_state=s.seed)
            return take(x, itr), None, take(x, ite), None
        itr, ite = train_test_split(idx, test_size=s.test_fraction, random_state=s.seed, stratify=strat)
        return take(x, itr), y[itr], take(x, ite), y[ite]
    if y is None:
        xtr, xte = train_test_split(x, test_size=s.test_fraction, random_state=s.seed)
        return xtr, None, xte, None
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=s.test_fraction, random_state=s.seed, stratify=strat)
    return xtr, ytr, xte, yte


def preprocess(spec, x: np.ndarray, *, default_float: bool = True) -> np.ndarray:
    """Apply the spec's steps in order; the default result is float32 for numeric data (named
    inputs keep their own dtype until their declared one is applied)."""
    x = np.asarray(x)
    if x.dtype.kind in "fiub" and default_float:
        x = x.astype(np.float32)  # a dtype step casts back (token ids, say)
    steps = [(s, PREPROCESS.get(s.op)) for s in spec.data.preprocess]
    if x.dtype.kind in "OUS" and not any(op.reads_text for _, op in steps):
        raise StageError.at(
            spec,
            "build",
            "the data are texts: add a preprocessing step such as {tokenize: {max_length: 128}}",
            where=spec.where("data"),
        )
    for i, (step, op) in enumerate(steps):
        try:
            x = op.apply(x, step.arg, spec)
        except Exception as e:
            raise StageError.at(
                spec,
                "build",
                f"preprocess[{i}] {step.op} failed on data of shape {tuple(x.shape)}: {describe_exc(e)}",
                where=spec.where("data"),
            ) from e
    return x
