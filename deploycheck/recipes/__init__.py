"""Optimization recipes. A recipe is a small frozen config dataclass plus a handler registered
for it; a variant's recipe is a chain (a tuple) of configs applied in order to the baseline.

Config classes import nothing heavy, so specs validate without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..registry import Registry

#: recipe name (the key used in a spec) -> config dataclass
RECIPES: Registry[type] = Registry("recipe")
_HANDLERS: dict[type, Callable[..., Any]] = {}


def recipe(name: str):
    """Register a config class under ``name``; its handler is registered with :func:`handler`."""
    def deco(cls: type) -> type:
        cls.recipe_name = name
        RECIPES.register(name, cls)
        return cls
    return deco


def handler(config_cls: type):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _HANDLERS[config_cls] = fn
        return fn
    return deco


@dataclass
class StepRecord:
    """What one recipe step did, measured on the model after the step."""

    recipe: str
    summary: str
    seconds: float
    params: int
    nonzero: int
    state_bytes: int
    details: dict = field(default_factory=dict)


def apply(config: Any, model: Any, ctx: Any) -> Any:
    """Dispatch on the config's type. ``ctx`` gives handlers the data and the baseline model."""
    return _HANDLERS[type(config)](config, model, ctx)


# Importing the modules registers their recipes (configs are light; torch loads in handlers).
from . import custom, distill, prune, quantize  # noqa: E402,F401
