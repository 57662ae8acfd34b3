"""Module selection shared by recipes: by ``torch.nn`` class name (subclasses included), minus
the modules under a name glob (each glob must match a module)."""

from __future__ import annotations

import fnmatch
from typing import Any

from .coverage import skipped


def check_skip(model, skip: tuple[str, ...]) -> None:
    """Each ``skip`` glob must match a module: one that matches nothing is a typo."""
    names = [n for n, _ in model.named_modules() if n]
    for g in skip:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            raise ValueError(
                f"skip glob {g!r} matches no module; modules are: {', '.join(names[:20])}"
                + (" …" if len(names) > 20 else "")
            )


def select(model, types: tuple[str, ...], skip: tuple[str, ...]) -> list[tuple[str, Any]]:
    check_skip(model, skip)
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear as Never  # attention's out_proj

    classes = tuple(getattr(torch.nn, t) for t in types)
    out = [
        (n, m)
        for n, m in model.named_modules()
        if n and isinstance(m, classes) and not isinstance(m, Never) and not skipped(n, skip)
    ]
    if not out:
        raise ValueError(
            f"no module of type {', '.join(types)} to work on" + (f" after skipping {list(skip)}" if skip else "")
        )
    return out
