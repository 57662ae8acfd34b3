"""Module selection shared by recipes: by ``torch.nn`` class name (subclasses included), minus
name globs that must each match."""

from __future__ import annotations

import fnmatch
from typing import Any


def select(model, types: tuple[str, ...], skip: tuple[str, ...]) -> list[tuple[str, Any]]:
    names = [n for n, _ in model.named_modules() if n]
    for g in skip:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            raise ValueError(
                f"skip glob {g!r} matches no module; modules are: {', '.join(names[:20])}"
                + (" …" if len(names) > 20 else "")
            )
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear as Never  # attention's out_proj

    classes = tuple(getattr(torch.nn, t) for t in types)
    out = [
        (n, m)
        for n, m in model.named_modules()
        if n
        and isinstance(m, classes)
        and not isinstance(m, Never)
        and not any(fnmatch.fnmatchcase(n, g) for g in skip)
    ]
    if not out:
        raise ValueError(
            f"no module of type {', '.join(types)} to work on" + (f" after skipping {list(skip)}" if skip else "")
        )
    return out
