"""Optimization recipes. A recipe is a small frozen config dataclass (its options, validated at
collection) plus a handler that makes the new model; a variant's recipe is a chain (a tuple) of
configs applied in order to the baseline.

Both live in lazy registries, as ``"module:attr"`` strings: the config modules are light and load
when a spec names the recipe; the handlers import torch and load when a variant is built. A
plug-in's config (entry-point group ``deploycheck.recipes``) carries its own ``apply(model, ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry


def _register_plugins(registry: Registry) -> None:
    """Installed packages add recipes through the ``deploycheck.recipes`` entry-point group:
    ``name = "package.module:ConfigClass"``, a dataclass whose fields are the recipe's options
    (validated at collection with file:line like the built-ins) and whose ``apply(model, ctx)``
    makes the new module. Found when a recipe name is first looked up; a plug-in module is
    imported only when a spec uses it."""
    from importlib.metadata import entry_points  # scanning installed packages: ~20 ms, only when needed

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in registry._items:
            continue  # a built-in name is never shadowed by a plug-in
        registry.register(ep.name, ep.value)


ENTRY_POINT_GROUP = "deploycheck.recipes"
#: recipe name (the key used in a spec) -> config dataclass
RECIPES: Registry[type[Any]] = Registry("recipe", discover=_register_plugins)
#: recipe name -> handler(config, model, ctx) -> StepResult (built-ins; plug-ins use config.apply)
HANDLERS: Registry[Callable[..., StepResult]] = Registry("recipe handler")

for _name, _config, _handler in (
    ("quantize", "deploycheck.recipes.quantize:QuantizeConfig", "deploycheck.recipes._quantize_impl:run"),
    ("prune", "deploycheck.recipes.prune:PruneConfig", "deploycheck.recipes._prune_impl:run"),
    ("distill", "deploycheck.recipes.distill:DistillConfig", "deploycheck.recipes._distill_impl:run"),
    ("custom", "deploycheck.recipes.custom:CustomConfig", "deploycheck.recipes._custom_impl:run"),
):
    RECIPES.register(_name, _config)
    HANDLERS.register(_name, _handler)


@dataclass
class StepResult:
    """What one recipe step returns: the new model, a one-line summary for the report, and what a
    loader needs to rebuild or run it."""

    model: Any
    summary: str
    details: dict = field(default_factory=dict)
    arch: dict | None = None  # a new architecture (distillation's student) for state-dict formats
    requires: tuple[str, ...] = ()  # libraries a loader imports first (they register the artifact's ops)
    settings: dict = field(default_factory=dict)  # torch settings a loader applies (quantized engine)


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


@dataclass
class RecipeContext:
    """What recipe handlers may use: the data, the baseline, where to import from, and a logger."""

    spec: Any
    data: Any
    baseline: Any
    search: list
    log: Callable[[str], None]
    where: str
    example: Any


def config_class(name: str) -> type:
    """The config class of recipe ``name``, imported on first use; a plug-in's class gets the
    defaults a step needs (its name, a short label)."""
    cls = RECIPES.get(name)
    if type(cls) is not type or (name not in HANDLERS and not hasattr(cls, "apply")):
        raise TypeError(f"{cls!r} is not a recipe config class with an apply(model, ctx) method")
    if getattr(cls, "recipe_name", None) != name:
        cls.recipe_name = name
    if not hasattr(cls, "short"):
        cls.short = lambda self, _n=name: _n
    return cls


def apply(config: Any, model: Any, ctx: RecipeContext) -> StepResult:
    """Run one step: the built-in handler registered for the config's recipe, else the plug-in
    config's own ``apply``, which may return the new module (None: changed in place), a
    :class:`StepResult`, or a dict with its fields."""
    name = type(config).recipe_name
    if name in HANDLERS:
        return HANDLERS.get(name)(config, model, ctx)
    out = config.apply(model, ctx)
    if isinstance(out, StepResult):
        return out
    if isinstance(out, dict):
        return StepResult(**{"summary": f"plug-in recipe {name}", **out})
    return StepResult(model if out is None else out, f"plug-in recipe {name}")
