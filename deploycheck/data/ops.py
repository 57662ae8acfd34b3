"""The built-in preprocessing steps: each one's doc, argument type, check and numpy function.

Light at import (the spec validates arguments through these); numpy and the tokenizer load when
a step runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass(frozen=True)
class Image:
    """Image files to float32 arrays in [0, 1], as torchvision's PIL transforms make them:
    decode (Pillow), convert to the channel order, resize the shorter side, centre-crop, lay out."""

    resize: int | None = field(None, ge=1, doc="resize so the shorter side has this many pixels (aspect kept)")
    crop: int | tuple[int, ...] | None = field(None, doc="centre crop: a size, or [height, width] (after resize)")
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos"] = field(
        "bilinear", doc="resize filter (Pillow's, as torchvision's Resize uses on PIL images)"
    )
    channels: Literal["rgb", "bgr", "gray"] = field("rgb", doc="channel order of the output (gray: one channel)")
    layout: Literal["chw", "hwc"] = field("chw", doc="per-sample layout: channels first (PyTorch) or last")

    def check(self) -> list[tuple[str, str]]:
        c = self.crop
        if isinstance(c, tuple) and (len(c) != 2 or any(v < 1 for v in c)):
            return [("crop", f"expected a size or [height, width] of positive sizes, got {list(c)}")]
        if isinstance(c, int) and c < 1:
            return [("crop", f"must be positive, got {c}")]
        return []


def _image(x, arg, spec):
    """Decode each path in ``x`` and transform it; every image must end with the same size."""
    import numpy as np

    try:
        from PIL import Image as PILImage
    except ImportError as e:
        raise ImportError("the image step needs Pillow: pip install 'deploycheck[vision]'") from e
    filters = {
        "nearest": PILImage.Resampling.NEAREST,
        "bilinear": PILImage.Resampling.BILINEAR,
        "bicubic": PILImage.Resampling.BICUBIC,
        "lanczos": PILImage.Resampling.LANCZOS,
    }
    out = []
    for path in x:
        if not isinstance(path, str):
            raise ValueError(
                f"the image step takes image file paths (an images: or manifest: source), got {type(path).__name__}"
            )
        try:
            with PILImage.open(path) as f:
                im: Any = f.convert("L" if arg.channels == "gray" else "RGB")
                if arg.resize is not None:
                    w, h = im.size
                    if w <= h:
                        size = (arg.resize, int(arg.resize * h / w))
                    else:
                        size = (int(arg.resize * w / h), arg.resize)
                    im = im.resize(size, filters[arg.interpolation])
                if arg.crop is not None:
                    ch, cw = (arg.crop, arg.crop) if isinstance(arg.crop, int) else arg.crop
                    w, h = im.size
                    if ch > h or cw > w:
                        raise ValueError(f"crop {ch}x{cw} is larger than the image ({h}x{w} after resize)")
                    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
                    im = im.crop((left, top, left + cw, top + ch))
                a = np.asarray(im, dtype=np.float32) / np.float32(255)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        if a.ndim == 2:
            a = a[:, :, None]
        if arg.channels == "bgr":
            a = a[:, :, ::-1]
        out.append(np.ascontiguousarray(a.transpose(2, 0, 1) if arg.layout == "chw" else a))
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(
            f"the images have different sizes after the image step ({', '.join(str(list(s)) for s in sorted(shapes)[:4])}): "
            "give `crop` (and `resize`) so every sample has one shape"
        )
    return np.stack(out) if out else np.zeros((0,), dtype=np.float32)


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
    from ..hf import model_folder, resolve, tokenize  # transformers

    base = os.path.dirname(os.path.abspath(spec.path))
    if arg.path:
        folder = resolve(arg.path, base)
    elif spec.model.hf:
        folder = model_folder(spec.model.hf, base)  # a GGUF file's tokenizer comes with its conversion
    else:
        raise ValueError("tokenize needs a tokenizer: set its path, or use model.hf")
    return tokenize(x, path=folder, max_length=arg.max_length)


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
IMAGE = PreprocessOp(
    "image",
    "{resize, crop, interpolation, channels, layout}: image files (images: or manifest: source) -> float32 in "
    "[0, 1], resized (shorter side), centre-cropped, (N, C, H, W); then `normalize` with the model's mean and std",
    Image,
    _image,
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
