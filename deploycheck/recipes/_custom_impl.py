"""The custom recipe's handler: import the user's function and call it on the model."""

from __future__ import annotations

import torch

from ..models import import_callable
from . import RecipeContext, StepResult
from .custom import CustomConfig, CustomContext


def run(cfg: CustomConfig, model, ctx: RecipeContext) -> StepResult:
    try:
        fn = import_callable(cfg.callable, ctx.search)
    except Exception as e:  # noqa: BLE001 - named with the step by the runner
        raise RuntimeError(f"cannot import {cfg.callable}: {type(e).__name__}: {e}") from e
    x, y = ctx.data.train_tensors()
    torch.manual_seed(cfg.seed)
    cctx = CustomContext(
        x_train=x,
        y_train=y,
        example=ctx.example,
        data=ctx.spec.data,
        generator=torch.Generator().manual_seed(cfg.seed),
        baseline=ctx.baseline,
        log=ctx.log,
    )
    out = fn(model, cctx, **cfg.kwargs)
    if out is None:
        out = model  # modified in place
    if not isinstance(out, torch.nn.Module):
        raise TypeError(f"{cfg.callable} returned {type(out).__name__}, not a torch.nn.Module")
    return StepResult(
        out,
        f"custom recipe {cfg.callable}" + (f" {cfg.kwargs}" if cfg.kwargs else ""),
        {"callable": cfg.callable, "kwargs": cfg.kwargs},
    )
