"""Build stage: a variant's model (the baseline, its recipe chain, or its own model), with its
in-memory outputs on the evaluation batches and their metric. Reused across sessions by content
hash (see :mod:`deploycheck.cache`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Self

from ..cache import build_key, code_paths
from ..errors import StageError
from ..models import (
    baseline_arch,
    build_variant_model,
    count_params,
    describe_exc,
    search_dirs,
    state_bytes,
    use_search_path,
    variant_arch,
)
from ..outputs import OutputError, concat
from ..protocol import BatchDimError, describe_batch, run_batch
from ..recipes import RecipeContext, StepRecord
from ..recipes import apply as apply_step


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


def _step_log(log, prefix: str, message: str) -> None:
    log(f"{prefix}: {message}")


def build(runner, t) -> Built:
    """The variant of ``t`` built (or reused from the cache); an ``artifact:`` variant is not
    built: its outputs are the file's own, run in the fresh process."""
    if t.made_elsewhere:
        r = runner.reload(t.with_format(t.variant.formats[0]))
        arch = baseline_arch(t.spec) if (t.spec.model.factory or t.spec.model.hf) else {}
        return Built(None, arch, [], 0.0, None, None, None, r.outputs, r.metric, t.variant.recipe)
    key = build_key(t.spec, t.vname)
    mods = spec_modules(t.spec)  # a cached model may be made of the spec's classes, and no others
    hit = runner.cache.get_built(key, trusted_modules=mods)
    # The arch rebuilds state dicts in the worker: an entry naming other code than the spec is not used.
    if hit is not None and _canon(hit[0].get("arch")) == _canon(expected_arch(t.spec, t.variant)):
        meta, model, outputs = hit
        if model is not None:
            return Built.from_meta(meta, model, outputs, key)
        lazy = LazyBuilt.from_meta(meta, None, outputs, key)
        lazy.rebuild = lambda: _contained_fresh(runner, t).model
        return lazy
    built = _contained_fresh(runner, t)
    built.key = key
    runner.cache.put_built(key, built.meta(), built.model, built.outputs, trusted_modules=mods)
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


def _prerequisites(runner, t) -> None:
    """What a build shares with the other variants (the data, the baseline model, the baseline's
    outputs), made here before the build's own process is forked, so it is made once."""
    spec = t.spec
    runner.batches(spec)
    if t.variant.steps:
        runner.example(spec)  # recipes get it
    if spec.model.factory or spec.model.hf:
        runner.baseline_model(spec)
    if not t.is_baseline:
        runner.built(t.baseline())
    for step in t.variant.steps:  # libraries the step imports, which this process needs for its result too
        for name in step.imports():
            importlib.import_module(name)


def _contained_fresh(runner, t) -> Built:
    """:func:`_fresh` in the build's own process (see :meth:`Runner.contained`)."""
    _prerequisites(runner, t)
    return runner.contained(
        lambda: _fresh(runner, t), spec=t.spec, variant=t.vname, where=t.where, what=f"building variant {t.vname!r}"
    )


def _fresh(runner, t) -> Built:
    import torch

    spec, v = t.spec, t.variant
    base = runner.baseline_model(spec) if (spec.model.factory or spec.model.hf) else None
    data = runner.data(spec)
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
            data=data,
            baseline=base,
            search=search_dirs(spec),
            log=functools.partial(_step_log, runner.log, f"{t.id} {name}"),
            where=t.where,
            example=runner.example(spec),
        )
        ts = time.perf_counter()
        torch.manual_seed(0)
        try:
            out = apply_step(step, model, ctx)
        except StageError:
            raise
        except Exception as e:
            raise StageError(
                "build",
                f"recipe step {i + 1} ({step.short()}) failed: {describe_exc(e)}",
                spec=spec.name,
                variant=t.vname,
                where=t.where,
            ) from e
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
    outputs = run_in_memory(runner, t, model)
    value = runner.score(t, outputs, what="in-memory")
    p, nz = count_params(model)
    return Built(
        model, arch, records, build_s, p, nz, state_bytes(model), outputs, value, v.recipe, tuple(requires), settings
    )


def run_in_memory(runner, t, model):
    """The model's named outputs on the evaluation batches, concatenated (float32)."""
    import torch

    outs = []
    b = None
    fail = functools.partial(StageError, "run", spec=t.spec.name, variant=t.vname, where=t.spec.at(t.variant.line))
    try:
        with torch.inference_mode():
            for b in runner.batches(t.spec):
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
