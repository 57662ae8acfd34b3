"""Optimization recipes. A recipe is a small frozen config dataclass: its fields are the options
(validated at collection) and its ``apply(model, ctx)`` makes the new model, importing torch
inside; a variant's recipe is a chain (a tuple) of configs applied in order to the baseline.

Built-ins and plug-ins follow the one :class:`Recipe` protocol. The classes live in a lazy
registry, as ``"module:attr"`` strings: a config module loads when a spec names its recipe. A
plug-in (entry-point group ``deploycheck.recipes``) is a dataclass with an ``apply``; it gets the
protocol's defaults when it is loaded (:func:`config_class`).
"""

# No ``from __future__ import annotations`` here: Recipe's class annotation must be an object, not
# a string, because a plug-in's option types are resolved in the plug-in's module (which need not
# import ClassVar) and that resolution walks the bases too.
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..registry import Registry


def _register_plugins(registry: Registry) -> None:
    """Installed packages add recipes through the ``deploycheck.recipes`` entry-point group:
    ``name = "package.module:ConfigClass"``, a dataclass whose fields are the recipe's options
    (validated at collection with file:line like the built-ins) and whose ``apply(model, ctx)``
    makes the new module. Found when a recipe name is first looked up; a plug-in module is
    imported only when a spec uses it."""
    from importlib.metadata import entry_points  # scanning installed packages: ~20 ms, only when needed

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in registry:  # discovery is under way (it runs once), so this does not start it again
            continue  # a built-in name is never shadowed by a plug-in
        registry.register(ep.name, ep.value)


ENTRY_POINT_GROUP = "deploycheck.recipes"
#: recipe name (the key used in a spec) -> config dataclass
RECIPES: Registry[type[Any]] = Registry("recipe", discover=_register_plugins)

for _name, _config in (
    ("quantize", "deploycheck.recipes.quantize:QuantizeConfig"),
    ("prune", "deploycheck.recipes.prune:PruneConfig"),
    ("distill", "deploycheck.recipes.distill:DistillConfig"),
    ("custom", "deploycheck.recipes.custom:CustomConfig"),
):
    RECIPES.register(_name, _config)


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


class Recipe:
    """What every recipe step offers the build and the checks. Built-ins subclass it; a plug-in's
    class gets these defaults where it does not define them.

    ``precision`` and ``batch_sensitive`` tell the checks what the step does to the numbers, so
    they never guess it from option names: an output tolerance scaled to the precision's step,
    and the batch-invariance check where a sample's outputs depend on its batch."""

    recipe_name: ClassVar[str] = ""

    def apply(self, model: Any, ctx: RecipeContext) -> Any:
        """The new model (or the same one changed in place, or None for that), or a :class:`StepResult`."""
        raise NotImplementedError(f"recipe {self.recipe_name!r} has no apply(model, ctx)")

    def short(self) -> str:
        """The step as the report's recipe column shows it."""
        return self.recipe_name

    def imports(self) -> tuple[str, ...]:
        """Libraries ``apply`` imports: the session imports them before it forks a build."""
        return ()

    @property
    def precision(self) -> str | None:
        """The reduced precision the step's arithmetic runs in: ``int8``, ``fp16``, ``bf16``, or None."""
        return None

    @property
    def batch_sensitive(self) -> bool:
        """A sample's outputs depend on the other samples in its batch (activations quantized per batch)."""
        return False


#: (recipe name, plug-in class) -> the subclass with the protocol's defaults, made once
_ADAPTED: dict[tuple[str, type], type[Recipe]] = {}


def config_class(name: str) -> type[Recipe]:
    """The config class of recipe ``name``, imported on first use. A plug-in's own class is left as
    it is; a subclass that adds :class:`Recipe`'s defaults (its name, a short label, precision …)
    stands in for it, under the same module and qualified name (cache keys and messages name it)."""
    cls = RECIPES.get(name)
    if type(cls) is not type or getattr(cls, "apply", None) in (None, Recipe.apply):
        raise TypeError(f"{cls!r} is not a recipe config class with an apply(model, ctx) method")
    if issubclass(cls, Recipe) and cls.recipe_name == name:
        return cls
    if (name, cls) not in _ADAPTED:
        clash = sorted(set(getattr(cls, "__dataclass_fields__", ())) & {"precision", "batch_sensitive"})
        if clash:  # the checks read these as the protocol's; an option of that name would be misread
            raise TypeError(
                f"{cls.__qualname__} names an option {clash[0]!r}, which the recipe protocol reserves "
                "(subclass deploycheck.recipes.Recipe and override the property instead)"
            )
        ns = {
            "recipe_name": name,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        _ADAPTED[name, cls] = type(cls.__name__, (cls, Recipe), ns)
    return _ADAPTED[name, cls]


def apply(config: Recipe, model: Any, ctx: RecipeContext) -> StepResult:
    """Run one step: the config's own ``apply``, which returns the new module, None (the model
    changed in place), or a :class:`StepResult` that also says what it did."""
    out = config.apply(model, ctx)
    if isinstance(out, StepResult):
        return out
    return StepResult(model if out is None else out, f"plug-in recipe {config.recipe_name}")
