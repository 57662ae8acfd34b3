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
    """Dispatch on the config's type. ``ctx`` gives handlers the data and the baseline model.

    A plug-in's config carries its own ``apply(model, ctx)``, which returns the new module (or
    the dict built-in handlers return: model, summary, details)."""
    fn = _HANDLERS.get(type(config))
    if fn is not None:
        return fn(config, model, ctx)
    out = config.apply(model, ctx)
    if isinstance(out, dict):
        return out
    name = getattr(type(config), "recipe_name", type(config).__name__)
    return {"model": model if out is None else out, "summary": f"plug-in recipe {name}", "details": {}}


ENTRY_POINT_GROUP = "deploycheck.recipes"


def load_plugin(name: str) -> type:
    """A plug-in recipe's config class, imported on first use and given the defaults a step needs."""
    cls = RECIPES.get(name)
    if not hasattr(cls, "recipe_name"):
        cls.recipe_name = name
    if not hasattr(cls, "short"):
        cls.short = lambda self, _n=name: _n
    if type(cls) is not type or not hasattr(cls, "apply") and cls not in _HANDLERS:
        raise TypeError(f"{cls!r} is not a recipe config class with an apply(model, ctx) method")
    return cls


def _register_plugins() -> None:
    """Installed packages add recipes through the ``deploycheck.recipes`` entry-point group:
    ``name = "package.module:ConfigClass"``, a dataclass whose fields are the recipe's options
    (validated at collection with file:line like the built-ins) and whose ``apply(model, ctx)``
    makes the new module. Registered lazily: a plug-in is imported only when a spec uses it."""
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in RECIPES:
            continue  # a built-in name is never shadowed by a plug-in
        RECIPES.register(ep.name, ep.value)


# Importing the modules registers their recipes (configs are light; torch loads in handlers).
from . import custom, distill, prune, quantize  # noqa: E402,F401

_register_plugins()
