"""Custom recipes: a user's own ``module:callable`` that takes the model and returns a new one.

The callable is called as ``fn(model, ctx, **kwargs)``. ``ctx`` is a :class:`CustomContext`:
the training split, the example input, the spec's data settings and a seeded generator. It may
modify the model in place or return another ``nn.Module``; whatever it raises fails the variant
at the build stage, with the step and the spec line named, like the built-in recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..models import import_callable
from ..schema import field, import_path_problem
from . import Recipe, RecipeContext, StepResult


@dataclass(frozen=True)
class CustomConfig(Recipe):
    """A user function ``fn(model, ctx, **kwargs) -> nn.Module`` (module imported from the spec's python_path)."""

    recipe_name: ClassVar[str] = "custom"

    callable: str = field(doc="import path 'package.module:function'")
    kwargs: dict[str, Any] = field(default_factory=dict, doc="keyword arguments passed to the function")
    seed: int = field(0, doc="seed of ctx.generator and of torch's global generator before the call")

    def check(self) -> list[tuple[str, str]]:
        problem = import_path_problem(self.callable, what="function")
        return [("callable", problem)] if problem else []

    def short(self) -> str:
        return f"custom:{self.callable.rpartition(':')[2]}"

    def apply(self, model: Any, ctx: RecipeContext) -> StepResult:
        return _custom(self, model, ctx)


@dataclass
class CustomContext:
    """What a custom recipe receives besides the model."""

    x_train: Any  # torch.Tensor: the training split's inputs, preprocessed
    y_train: Any  # torch.Tensor or None: its labels
    example: Any  # the example input (batch first)
    data: Any  # the spec's DataSpec (source, split, preprocess, batch_size)
    generator: Any  # torch.Generator seeded with the step's seed
    baseline: Any  # the unmodified baseline model (do not modify it)
    log: Any  # log(str): a line in pytest's log


def _custom(cfg: CustomConfig, model, ctx: RecipeContext) -> StepResult:
    """Import the user's function and call it on the model."""
    import torch

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
