"""Build stage: a variant's model (the baseline, its recipe chain, or its own model), with its
in-memory outputs on the evaluation batches and their metric. Reused across sessions by content
hash (see :mod:`deploycheck.cache`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from ..cache import Cache, build_key, code_paths
from ..errors import StageError
from ..loading import (
    build_variant_model,
    count_params,
    describe_exc,
    search_dirs,
    state_bytes,
    use_search_path,
    variant_arch,
)
from ..metrics import resolve, targets_for
from ..outputs import OutputError, concat, pick
from ..protocol import BatchDimError, describe_batch, run_batch
from ..recipes import RecipeContext, StepRecord
from ..recipes import apply as apply_step
from ..target import Target


@dataclass
class Built:
    model: Any
    arch: dict
    steps: list
    build_s: float
    params: int | None
    nonzero: int | None
    state_bytes: int | None
    outputs: Any  # in-memory outputs on the evaluation batches, by name, concatenated
    metric: float
    recipe: str
    requires: tuple = ()  # libraries a loader must import first (they register the artifact's ops)
    settings: dict = field(default_factory=dict)  # torch settings a loader must apply (quantized engine)
    key: str = ""  # content hash (see cache.build_key)

    def meta(self) -> dict:
        """What the cache stores next to the model and its outputs."""
        return {
            "arch": self.arch,
            "steps": [dataclasses.asdict(r) for r in self.steps],
            "build_s": self.build_s,
            "params": self.params,
            "nonzero": self.nonzero,
            "state_bytes": self.state_bytes,
            "metric": self.metric,
            "recipe": self.recipe,
            "requires": list(self.requires),
            "settings": self.settings,
        }

    @classmethod
    def from_meta(cls, meta: dict, model: Any, outputs: Any, key: str) -> Self:
        return cls(
            model,
            meta["arch"],
            [StepRecord(**r) for r in meta["steps"]],
            meta["build_s"],
            meta["params"],
            meta["nonzero"],
            meta["state_bytes"],
            outputs,
            meta["metric"],
            meta["recipe"],
            tuple(meta["requires"]),
            meta.get("settings", {}),
            key,
        )


class LazyBuilt(Built):
    """A cached build whose model the cache did not hold (a model of classes a cache may not
    unpickle, such as packed int8 weights): the facts and outputs are the cache's, the model is
    rebuilt on first use (a save whose artifact is not cached, a divergence report)."""

    rebuild: Any = None

    @property
    def model(self) -> Any:
        if self.__dict__.get("_model") is None and self.rebuild is not None:
            self.__dict__["_model"], self.rebuild = self.rebuild(), None
        return self.__dict__.get("_model")

    @model.setter
    def model(self, value: Any) -> None:
        self.__dict__["_model"] = value


def loaded_model(built: Built) -> Any:
    """``built``'s model if it is in memory, else None: never rebuilds a lazy one (a warm rerun
    that reads facts must not pay for a rebuild)."""
    if isinstance(built, LazyBuilt):
        return built.__dict__.get("_model")
    return built.model


def _step_log(log, prefix: str, message: str) -> None:
    log(f"{prefix}: {message}")


@dataclass(frozen=True)
class BuildInputs:
    """What a build shares with the other variants of its spec, made once by the caller before
    the build's own process is forked."""

    data: Any  # the loaded dataset (recipes calibrate and fine-tune on it)
    batches: list  # the evaluation batches, at their declared dtypes
    example: Any  # the example input (recipes trace with it)
    labels: Any  # the evaluation labels (a tensor), or None
    baseline: Any  # the baseline model (None where the spec's baseline is a file made elsewhere)
    reference: Any  # the baseline's in-memory outputs the metric reads as targets; None for the baseline


def from_cache(t: Target, *, cache: Cache, rebuild: Callable[[], Built]) -> Built | None:
    """The variant of ``t`` as an earlier session built it, or None. A model the cache did not
    hold is rebuilt with ``rebuild()`` on first use."""
    key = build_key(t.spec, t.vname)
    mods = spec_modules(t.spec)  # a cached model may be made of the spec's classes, and no others
    hit = cache.get_built(key, trusted_modules=mods)
    # The arch rebuilds state dicts in the worker: an entry naming other code than the spec is not used.
    if hit is None or _canon(hit[0].get("arch")) != _canon(expected_arch(t.spec, t.variant)):
        return None
    meta, model, outputs = hit
    if model is not None:
        return Built.from_meta(meta, model, outputs, key)
    lazy = LazyBuilt.from_meta(meta, None, outputs, key)
    lazy.rebuild = lambda: rebuild().model
    return lazy


def to_cache(t: Target, built: Built, *, cache: Cache) -> Built:
    """``built`` keyed by its content hash and stored for later sessions."""
    built.key = build_key(t.spec, t.vname)
    cache.put_built(built.key, built.meta(), built.model, built.outputs, trusted_modules=spec_modules(t.spec))
    return built


def spec_modules(spec) -> list[str]:
    """The modules the spec's import paths name, imported (they are the spec's code, trusted):
    the classes of a cached model must come from them, torch, torchao or deploycheck."""
    use_search_path(search_dirs(spec))
    out = []
    for path in code_paths(spec):
        mod = path.partition(":")[0]
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001,S112 - the build names the failure with its spec line
            continue
        out.append(mod)
    return out


def _canon(x) -> str:
    import json

    return json.dumps(x, sort_keys=True, default=str)


def expected_arch(spec, v) -> dict:
    """The factory and kwargs the spec says rebuild variant ``v``: its own model's, else the
    baseline's, else a distillation's student (a plug-in recipe that changes the architecture is
    not predicted: its builds are not reused)."""
    arch = variant_arch(spec, v)
    for step in v.steps:
        if getattr(step, "student", None):
            arch = {"factory": step.student, "kwargs": dict(step.student_kwargs)}
    return arch


def import_step_libraries(variant) -> None:
    """Libraries the variant's recipe steps import, imported here: the process that receives the
    build's result needs them too (they register its classes and operators)."""
    for step in variant.steps:
        for name in step.imports():
            importlib.import_module(name)


def build(t: Target, inputs: BuildInputs, *, log: Callable[[str], None]) -> Built:
    """The variant of ``t`` built from ``inputs``: the baseline, its own model, then its recipe
    chain, with its in-memory outputs on the evaluation batches and their metric."""
    import torch

    spec, v = t.spec, t.variant
    base = inputs.baseline
    t0 = time.perf_counter()
    if v.model is not None:  # the variant's own model (a QAT checkpoint, a student), then its recipes
        model = build_variant_model(spec, v)
    else:
        model = base if not v.steps else copy.deepcopy(base)
    arch = variant_arch(spec, v)
    records, requires, settings = [], [], {}
    for i, step in enumerate(v.steps):
        name = type(step).recipe_name
        ctx = RecipeContext(
            spec=spec,
            data=inputs.data,
            baseline=base,
            search=search_dirs(spec),
            log=functools.partial(_step_log, log, f"{t.id} {name}"),
            where=t.where,
            example=inputs.example,
        )
        ts = time.perf_counter()
        torch.manual_seed(0)
        try:
            out = apply_step(step, model, ctx)
        except StageError:
            raise
        except Exception as e:
            raise StageError.at(t, "build", f"recipe step {i + 1} ({step.short()}) failed: {describe_exc(e)}") from e
        model = out.model
        if out.arch is not None:
            arch = out.arch
        requires += [r for r in out.requires if r not in requires]
        settings.update(out.settings)
        p, nz = count_params(model)
        records.append(
            StepRecord(step.short(), out.summary, time.perf_counter() - ts, p, nz, state_bytes(model), out.details)
        )
    _eval_mode(model)
    build_s = time.perf_counter() - t0
    outputs = run_in_memory(t, model, inputs.batches)
    reference = outputs if inputs.reference is None else inputs.reference
    value = score(t, outputs, labels=inputs.labels, reference=reference, what="in-memory")
    p, nz = count_params(model)
    return Built(
        model, arch, records, build_s, p, nz, state_bytes(model), outputs, value, v.recipe, tuple(requires), settings
    )


def score(t: Target, outputs, *, labels, reference, what: str) -> float:
    """The spec's metric on the output it reads (``metric.output``, default the first) of the
    named ``outputs`` (``what`` they are: "in-memory" or "reloaded"), against ``labels`` or the
    baseline's in-memory outputs ``reference`` as targets."""
    metric = resolve(t.spec)
    name = t.spec.metric.output
    try:
        return metric(pick(outputs, name), targets_for(metric, labels, pick(reference, name)))
    except Exception as e:
        msg = f"metric {metric.name!r} failed on the {what} outputs: {describe_exc(e)}"
        raise StageError.at(t, "check", msg, where=None if what == "reloaded" else t.spec.where("metric")) from e


def run_in_memory(t: Target, model, batches: list):
    """The model's named outputs on the evaluation ``batches``, concatenated (float32)."""
    import torch

    outs = []
    b = None

    def fail(message: str) -> StageError:
        return StageError.at(t, "run", message)

    try:
        with torch.inference_mode():
            for b in batches:
                try:
                    named = run_batch(model, b, in_memory=True)
                except OutputError as e:
                    raise fail(f"the in-memory model's outputs cannot be checked: {e}") from e
                except BatchDimError as e:
                    raise fail(str(e)) from e
                outs.append({k: o.detach().float() for k, o in named.items()})
    except StageError:
        raise
    except Exception as e:
        raise fail(
            f"the in-memory model failed on an evaluation batch of {describe_batch(b)}: {describe_exc(e)}"
        ) from e
    return concat(outs)


def _eval_mode(model) -> None:
    try:
        model.eval()
    except NotImplementedError:  # pt2e-converted graphs are switched by the recipe itself
        pass
