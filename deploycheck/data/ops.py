"""The built-in preprocessing steps: each one's doc, argument type, check and numpy function.

Light at import (the spec validates arguments through these); numpy and the tokenizer load when
a step runs."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..loading import import_callable, search_dirs
from ..schema import DType, field, import_path_problem
from . import PreprocessOp


@dataclass(frozen=True)
class Tokenize:
    """Text to token ids with a Hugging Face tokenizer, padded to a fixed length."""

    max_length: int = field(128, ge=2, doc="pad or truncate every text to this many tokens")
    path: str | None = field(None, doc="tokenizer folder (same forms as model.hf.path); default: model.hf.path")


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std, per channel."""

    mean: tuple[float, ...] | float = field(doc="mean, one number or one per channel")
    std: tuple[float, ...] | float = field(doc="standard deviation, one number or one per channel")

    def check(self) -> list[tuple[str, str]]:
        stds = self.std if isinstance(self.std, tuple) else (self.std,)
        means = self.mean if isinstance(self.mean, tuple) else (self.mean,)
        if any(s <= 0 for s in stds):
            return [("std", "every std must be > 0")]
        if isinstance(self.std, tuple) and isinstance(self.mean, tuple) and len(means) != len(stds):
            return [("std", f"mean has {len(means)} values but std has {len(stds)}")]
        return []


def _scale(x, arg, spec):
    import numpy as np

    return x * np.float32(arg)


def _shift(x, arg, spec):
    import numpy as np

    return x + np.float32(arg)


def _clip(x, arg, spec):
    import numpy as np

    return np.clip(x, arg[0], arg[1])


def _clip_check(arg) -> str | None:
    return None if len(arg) == 2 and arg[0] <= arg[1] else f"expected [low, high] with low <= high, got {list(arg)}"


def _reshape(x, arg, spec):
    return x.reshape((x.shape[0],) + tuple(arg))


def _reshape_check(arg) -> str | None:
    return None if all(d >= 1 or d == -1 for d in arg) else f"sizes must be positive (or -1 once), got {list(arg)}"


def _dtype(x, arg, spec):
    import numpy as np

    if arg == "bfloat16":
        raise ValueError("bfloat16 data is not representable in numpy; cast the model instead")
    return x.astype(getattr(np, arg))


def _normalize(x, arg, spec):
    import numpy as np

    mean = np.asarray(arg.mean, dtype=np.float32)
    std = np.asarray(arg.std, dtype=np.float32)
    if mean.ndim:  # per channel: channel is the first per-sample axis
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.reshape(shape), std.reshape(shape)
    return (x - mean) / std


def _tokenize(x, arg, spec):
    from ..hf import resolve, tokenize  # transformers

    src = arg.path or (spec.model.hf.path if spec.model.hf else None)
    if src is None:
        raise ValueError("tokenize needs a tokenizer: set its path, or use model.hf")
    return tokenize(x, path=resolve(src, os.path.dirname(os.path.abspath(spec.path))), max_length=arg.max_length)


def _callable(x, arg, spec):
    import numpy as np

    out = np.asarray(import_callable(arg, search_dirs(spec))(x))
    if len(out) != len(x):
        raise ValueError(f"{arg} returned {len(out)} samples for {len(x)}")
    return out


SCALE = PreprocessOp("scale", "multiply by a number", float, _scale)
SHIFT = PreprocessOp("shift", "add a number", float, _shift)
NORMALIZE = PreprocessOp(
    "normalize",
    "{mean: [...], std: [...]} per channel (channel = first per-sample axis), or numbers",
    Normalize,
    _normalize,
)
CLIP = PreprocessOp("clip", "[low, high]", tuple[float, ...], _clip, _clip_check)
RESHAPE = PreprocessOp("reshape", "per-sample shape, e.g. [1, 8, 8]", tuple[int, ...], _reshape, _reshape_check)
DTYPE = PreprocessOp(
    "dtype", "cast to a dtype (float32, float16, bfloat16, float64, int64, int32, uint8)", DType, _dtype
)
CALLABLE = PreprocessOp(
    "callable",
    "'module:function' taking and returning a numpy array of the whole batch",
    str,
    _callable,
    import_path_problem,
    reads_text=True,
)
TOKENIZE = PreprocessOp(
    "tokenize",
    "{max_length, path}: text -> int64 (N, 2, max_length) token ids and attention "
    "mask, with the tokenizer of model.hf (or of the folder in path)",
    Tokenize,
    _tokenize,
    reads_text=True,
)
