"""Collection: a spec file becomes spec -> variant -> format -> check items with stable ids, e.g.
``specs/digits_mlp.yaml::digits-mlp::int8::torchscript::outputs``.

Items only run a check and show its verdict; failures print a domain message, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from .checks import CHECKS
from .errors import SpecError, StageError
from .metrics import METRICS
from .report.records import Record, jsonable
from .resolve import missing_requirements
from .snapshots import make_locatable
from .spec import duplicate_name, parse_file
from .spec.model import CADENCES
from .stages.save import VariantUnsupported
from .target import Target

#: set by the plugin at configure: returns the session's Runner (made on first use)
RUNNER_FACTORY = pytest.StashKey[Callable[[], Any]]()

#: set by the plugin at configure: the run tier (commit, nightly or weekly)
RUN_CADENCE = pytest.StashKey[str]()

#: spec name -> the file that declared it first in this session
_SPEC_NAMES = pytest.StashKey[dict]()

#: id of a stage error the runner memoised -> (the error, the id of the first item that showed it)
_SHOWN = pytest.StashKey[dict]()

FORMAT_CHECKS = (
    "load",
    "outputs",
    "dynamic",
    "metric",
    "perplexity",
    "next_token",
    "generation",
    "generation_speed",
    "generation_memory",
    "tokenizer",
    "fidelity",
    "semantic",
    "latency",
    "size",
    "snapshot",
)


class SpecFile(pytest.File):
    def collect(self):
        try:
            spec = parse_file(str(self.path))
        except SpecError as e:
            raise self.CollectError(str(SpecError(_display(self), e.problems))) from None
        spec = _relpath(spec, self)
        claimed = self.config.stash.setdefault(_SPEC_NAMES, {})
        other = claimed.setdefault(spec.name, spec.display)
        if other != spec.display:
            raise self.CollectError(str(duplicate_name(spec, other)))
        node = SpecNode.from_parent(self, name=spec.name, spec=spec)
        missing = missing_requirements(spec)
        if missing:
            node.add_marker(pytest.mark.skip(reason=missing))
        yield node


def _display(node) -> str:
    rel = os.path.relpath(str(node.path), node.config.rootpath)
    return str(node.path) if rel.startswith("..") else rel


def _relpath(spec, node):
    """Messages show the spec path relative to the rootdir; file access keeps the absolute path."""
    return dataclasses.replace(spec, display=_display(node))


class SpecNode(pytest.Collector):
    def __init__(self, *, spec, **kw):
        super().__init__(**kw)
        self.spec = spec

    def collect(self):
        for vname, v in self.spec.variants.items():
            node = VariantNode.from_parent(self, name=vname, spec=self.spec, variant=v)
            why = _beyond_cadence(self.config, self.spec, v)
            if why:
                node.add_marker(pytest.mark.skip(reason=why))
            yield node


def _beyond_cadence(config, spec, variant) -> str | None:
    """Why a variant does not run in this tier: its cadence (or its spec's) is rarer than the run's."""
    run = config.stash.get(RUN_CADENCE, "commit")
    own = variant.cadence or spec.cadence
    if CADENCES.index(own) <= CADENCES.index(run):
        return None
    whose = "the variant's" if variant.cadence else "the spec's"
    return f"cadence {own} ({whose}): not run in the {run} tier; run with --deploycheck-cadence {own}"


class VariantNode(pytest.Collector):
    def __init__(self, *, spec, variant, **kw):
        super().__init__(**kw)
        self.spec, self.variant = spec, variant

    def collect(self):
        group = _group_marker(self.config, self.spec, self.variant)
        target = Target(self.spec, self.variant)
        for name in CHECKS.names():
            c = CHECKS.get(name)
            if c.level == "variant" and c.applies(target):
                item = CheckItem.from_parent(self, name=name, target=target, check=c)
                if group:
                    item.add_marker(group)
                yield item
        for fspec in self.variant.formats:
            yield FormatNode.from_parent(self, name=fspec.name, spec=self.spec, variant=self.variant, fspec=fspec)


class FormatNode(pytest.Collector):
    def __init__(self, *, spec, variant, fspec, **kw):
        super().__init__(**kw)
        self.spec, self.variant, self.fspec = spec, variant, fspec

    def collect(self):
        group = _group_marker(self.config, self.spec, self.variant)
        target = Target(self.spec, self.variant, self.fspec)
        order = list(FORMAT_CHECKS) + [n for n in CHECKS.names() if n not in FORMAT_CHECKS]
        for name in order:
            c = CHECKS.get(name)
            if c.level == "format" and c.applies(target):
                cls = SnapshotItem if c.needs_item else CheckItem
                item = cls.from_parent(self, name=name, target=target, check=c)
                if group:
                    item.add_marker(group)
                yield item


def _group_marker(config, spec, variant):
    """Under pytest-xdist, keep a variant's items in one worker (built once there)."""
    if getattr(config.option, "dist", "no") in (None, "no"):
        return None
    return pytest.mark.xdist_group(f"{spec.path}::{variant.name}")


class CheckFailed(Exception):
    def __init__(self, verdict):
        self.verdict = verdict
        super().__init__(verdict.message)


class SeeFirst(Exception):
    """A stage error already shown in full by an earlier item: this item fails with one short line."""

    def __init__(self, error: StageError, first: str):
        self.error, self.first = error, first
        super().__init__(self.render())

    def render(self) -> str:
        e = self.error
        what = f"build of variant {e.variant!r}" if e.stage == "build" and e.variant else f"the {e.stage} stage"
        target = "::".join(x for x in (e.spec, e.variant, e.fmt) if x)
        loc = f" (declared at {e.where})" if e.where else ""
        return f"[{e.stage}] {target}{loc}: {what} failed; see {self.first}"


class CheckItem(pytest.Item):
    def __init__(self, *, target: Target, check, **kw):
        super().__init__(**kw)
        self.target, self.check = target, check
        self.spec, self.variant, self.fspec = target.spec, target.variant, target.fspec

    @property
    def display_path(self) -> str:
        return self.nodeid.split("::", 1)[0]

    def runner(self):
        return self.config.stash[RUNNER_FACTORY]()

    def runtest(self):
        runner = self.runner()
        try:
            extra = {"item": self} if self.check.needs_item else {}
            verdict = self.check.run(runner, self.target, **extra)
        except VariantUnsupported as e:
            self._record("unsupported", message=str(e))
            if self.spec.on_unsupported == "fail":
                raise
            # reported at the spec line that declared the variant, not at this line of deploycheck
            raise pytest.skip.Exception(f"unsupported: {e} (on_unsupported: skip)", _use_item_location=True) from None
        except StageError as e:
            # The runner memoises a failed stage: every item of a variant whose build failed gets
            # the same error. The first item shows it in full, the others point at that item.
            shown = self.config.stash.setdefault(_SHOWN, {})
            first = shown.setdefault(id(e), (e, self.nodeid))[1]  # holds e, so its id is not reused
            self._record("error", message=e.headline(), stage=e.stage)
            if first != self.nodeid:
                raise SeeFirst(e, first) from None
            raise
        if verdict.remeasure:  # the check's decision; the cache is the item's to change
            verdict.details["forgotten"] = runner.forget_measurement(self.target)
        if verdict.outcome == "not_compared":  # e.g. a non-finite baseline: its own item fails, once
            raise pytest.skip.Exception(verdict.message, _use_item_location=True)
        if verdict.outcome == "not_gated":  # measured and recorded, but nothing was checked: never a pass
            self._record("not gated", verdict=verdict)
            raise pytest.skip.Exception(f"not gated: {verdict.formula}", _use_item_location=True)
        if verdict.outcome == "inconclusive":  # noise decided nothing: not a pass (nothing was shown), not a fail
            self._record("inconclusive", verdict=verdict)
            pytest.skip(verdict.formula)
        self._record("passed" if verdict.passed else "failed", verdict=verdict)
        if not verdict.passed:
            raise CheckFailed(verdict)

    def _record(self, status: str, *, verdict=None, message: str = "", stage: str | None = None):
        metric = self.spec.metric
        rec = Record(
            spec=self.spec.name,
            file=self.display_path,
            variant=self.variant.name,
            format=self.fspec.name if self.fspec else None,
            check=self.check.name,
            status=status,
            recipe=self.variant.recipe,
            message=message,
            stage=stage,
            variant_info=_variant_info(self.runner(), self.target),
            metric=metric.callable if metric.name == "callable" else metric.name,
            higher_is_better=_direction(metric),
        )
        if verdict is not None:
            rec.value, rec.threshold, rec.formula = verdict.value, verdict.threshold, verdict.formula
            rec.message, rec.details = verdict.message, verdict.details
        self.user_properties.append(("deploycheck", rec.dumps()))
        # JUnit: pytest's --junitxml writes user_properties as <property> elements
        self.user_properties.append(("deploycheck.status", status))
        if verdict is not None:
            self.user_properties.append(("deploycheck.formula", verdict.formula))
            self.user_properties.append(("deploycheck.value", json.dumps(verdict.value, default=jsonable)))
            self.user_properties.append(("deploycheck.threshold", json.dumps(verdict.threshold, default=jsonable)))

    def repr_failure(self, excinfo, style=None):
        e = excinfo.value
        if isinstance(e, CheckFailed):
            return f"[check] {self.check.name} failed for {self.target.id} ({self.target.where})\n{e.verdict.message}"
        if isinstance(e, SeeFirst):
            return e.render()
        if isinstance(e, StageError):
            return e.render()
        if isinstance(e, VariantUnsupported):
            return f"[save] unsupported ({e.where}): {e} (on_unsupported: fail)"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.variant.line - 1, f"{self.target.id}::{self.check.name}"


class SnapshotItem(CheckItem):
    """An item syrupy can locate and track as its own (see snapshots.make_locatable)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        make_locatable(self)


def _direction(metric) -> bool | None:
    if metric.name == "callable":
        return metric.higher_is_better
    return METRICS.get(metric.name).higher_is_better if metric.name in METRICS else None


def _variant_info(runner, t: Target) -> dict:
    """Build facts of a variant (only if it was built), for report rows."""
    b = runner.built_if_ready(t)
    if b is None:
        return {}
    base = runner.built_if_ready(t.baseline())
    state_ratio = (
        b.state_bytes / base.state_bytes
        if base is not None and base.state_bytes and b.state_bytes is not None
        else None
    )
    return {
        "state_ratio": state_ratio,
        "params": b.params,
        "nonzero": b.nonzero,
        "sparsity": 1 - b.nonzero / b.params if b.params else None,
        "state_bytes": b.state_bytes,
        "build_s": b.build_s,
        "metric_in_memory": b.metric,
        "steps": [
            {
                "recipe": s.recipe,
                "summary": s.summary,
                "seconds": s.seconds,
                "params": s.params,
                "nonzero": s.nonzero,
                "state_bytes": s.state_bytes,
                "details": s.details,
            }
            for s in b.steps
        ],
    }
