"""Bring your own recipe: custom callables, alone and in chains; options that do not apply are errors."""

from __future__ import annotations

import os

import pytest
from conftest import make_spec

from deploycheck.errors import SpecError
from deploycheck.spec import parse


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        parse(text, filename="s.yaml")
    return str(ei.value).splitlines()


def test_a_custom_recipe_gets_the_context_and_its_variant_gets_every_check(project):
    project.write(
        make_spec(
            variants="  baseline: {}\n  mine:\n    custom: {callable: 'tinymodels:inspect_context', "
            "kwargs: {expect_rows: 112}}"
        )
    )
    res = project.run("-k", "mine", "--log-cli-level=INFO")
    res.assert_outcomes(passed=5)  # load, outputs, metric, latency, size
    res.stdout.fnmatch_lines(["*tiny::mine custom: got 112 training rows; first draw 0.4963*"])


def test_a_custom_recipe_in_a_chain_wraps_the_model(project):
    project.write(
        make_spec(
            variants="  baseline: {}\n  chain:\n    steps:\n"
            "      - prune: {method: l1_unstructured, amount: 0.2}\n"
            "      - custom: {callable: 'tinymodels:repeat', kwargs: {times: 3}}",
            thresholds="  outputs: {atol: 1.0e-4}",
        )
    )
    res = project.run("-k", "chain and not latency")
    res.assert_outcomes(passed=2, skipped=2)
    import json

    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    row = next(r for r in doc["rows"] if r["variant"] == "chain")
    assert row["recipe"] == "prune:l1_unstructured@0.2 -> custom:repeat"


def test_a_crashing_custom_recipe_fails_the_build_naming_the_step_and_line(project):
    project.write(
        make_spec(
            variants="  baseline: {}\n  bad:\n    steps:\n"
            "      - prune: {method: l1_unstructured, amount: 0.2}\n"
            "      - custom: {callable: 'tinymodels:crashes'}"
        )
    )
    res = project.run("-k", "bad and load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny::bad (declared at tiny.yaml:12): recipe step 2 (custom:crashes) failed: "
            "ValueError: the recipe tripped over its own feet*"
        ]
    )


def test_a_custom_recipe_that_cannot_be_imported(project):
    project.write(make_spec(variants="  baseline: {}\n  bad:\n    custom: {callable: 'tinymodels:nope'}"))
    res = project.run("-k", "bad and load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*recipe step 1 (custom:nope) failed: RuntimeError: cannot import tinymodels:nope: UnresolvedName: "
            "cannot import 'tinymodels:nope': tinymodels (*tinymodels.py) has no attribute 'nope'"
        ]
    )


def test_custom_callable_must_be_an_import_path():
    text = make_spec(variants="  c:\n    custom: {callable: 'not a path'}")
    assert errors(text) == [
        "s.yaml:12: variants.c.custom.callable: expected an import path 'package.module:function', got 'not a path'"
    ]


def test_options_that_do_not_apply_to_the_method_are_errors():
    text = make_spec(
        variants="  q:\n    quantize:\n      method: fp16\n      per_channel: true\n"
        "      calibration_batches: 3\n      engine: qnnpack\n"
        "  p:\n    prune: {method: l1_unstructured, amount: 0.5, dim: 3, n: 7}\n"
        "  s:\n    quantize: {method: dynamic_int8, weight_bits: 7}"
    )
    assert errors(text) == [
        "s.yaml:14: variants.q.quantize.per_channel: does not apply to method 'fp16'; it takes: backend",
        "s.yaml:15: variants.q.quantize.calibration_batches: does not apply to method 'fp16'; it takes: backend",
        "s.yaml:16: variants.q.quantize.engine: does not apply to method 'fp16'; it takes: backend",
        "s.yaml:18: variants.p.prune.dim: does not apply to method 'l1_unstructured'; it takes: amount, modules, skip, "
        "finetune",
        "s.yaml:18: variants.p.prune.n: does not apply to method 'l1_unstructured'; it takes: amount, modules, skip, "
        "finetune",
        "s.yaml:20: variants.s.quantize.weight_bits: does not apply to method 'dynamic_int8'; it takes: backend, "
        "modules, skip, untie, engine, per_channel",
    ]


def test_static_int8_takes_its_saturation_options():
    spec = parse(
        make_spec(variants="  s:\n    quantize: {method: static_int8, weight_bits: 7, reduce_range: true}"),
        filename="s.yaml",
    )
    step = spec.variants["s"].steps[0]
    assert (step.weight_bits, step.reduce_range) == (7, True)
    assert errors(make_spec(variants="  s:\n    quantize: {method: static_int8, weight_bits: 6}"))[0].startswith(
        "s.yaml:12: variants.s.quantize.weight_bits: 6 is not one of [8, 7]"
    )


def test_a_variant_says_its_precision_and_batch_sensitivity_from_its_recipe_steps():
    spec = parse(
        make_spec(
            variants="  chain:\n    steps:\n      - quantize: {method: fp16}\n      - quantize: {method: dynamic_int8}\n"
            "  half:\n    quantize: {method: bf16}\n"
            "  static:\n    quantize: {method: static_int8}\n"
            "  int4:\n    quantize: {method: weight_only_int4}\n"
            "  pruned:\n    prune: {method: l1_unstructured, amount: 0.5}"
        ),
        filename="s.yaml",
    )
    seen = {n: (v.precision, v.batch_sensitive) for n, v in spec.variants.items()}
    assert seen == {
        "baseline": (None, False),
        "chain": ("int8", True),  # the coarsest precision; dynamic int8 quantizes activations per batch
        "half": ("bf16", False),
        "static": ("int8", False),  # calibrated once: a sample's outputs do not depend on its batch
        "int4": (None, False),  # int4 weights are dequantized to float per call
        "pruned": (None, False),
    }


PLUGIN = os.path.join(os.path.dirname(__file__), "plugins", "deploycheck-plugin-example")


@pytest.fixture
def plugin_registry(monkeypatch):
    """RECIPES with the example plug-in's class registered, restored afterwards."""
    from deploycheck import recipes
    from deploycheck.registry import Registry

    monkeypatch.syspath_prepend(PLUGIN)
    reg: Registry = Registry("recipe")
    monkeypatch.setattr(recipes, "RECIPES", reg)
    monkeypatch.setattr(recipes, "_ADAPTED", {})
    return reg


def test_a_plugin_recipe_gets_the_protocol_defaults_and_its_own_class_is_left_as_it_is(plugin_registry):
    from deploycheck.recipes import Recipe, config_class
    from deploycheck.spec.schema import type_hints

    plugin_registry.register("scale_outputs", "dc_plugin_example:ScaleOutputs")
    cls = config_class("scale_outputs")
    from dc_plugin_example import ScaleOutputs

    assert not hasattr(ScaleOutputs, "recipe_name") and not hasattr(ScaleOutputs, "short")
    assert issubclass(cls, ScaleOutputs) and issubclass(cls, Recipe) and config_class("scale_outputs") is cls
    assert (cls.__module__, cls.__qualname__) == ("dc_plugin_example", "ScaleOutputs")  # cache keys name it
    # its options' types resolve in its own module, which imports nothing of the protocol's annotations
    assert type_hints(cls)["factor"] is float
    step = cls(factor=2.0)
    assert (step.recipe_name, step.short(), step.precision, step.batch_sensitive, step.imports()) == (
        "scale_outputs",
        "scale_outputs",
        None,
        False,
        (),
    )


def test_a_plugin_option_named_like_a_protocol_property_is_refused(plugin_registry):
    from dataclasses import dataclass

    from deploycheck.recipes import config_class

    @dataclass(frozen=True)
    class Rounding:
        precision: str = "int8"

        def apply(self, model, ctx):
            return model

    plugin_registry.register("rounding", Rounding)
    with pytest.raises(TypeError, match="names an option 'precision', which the recipe protocol reserves"):
        config_class("rounding")


def test_a_plugin_without_apply_is_refused(plugin_registry):
    from deploycheck.recipes import Recipe, config_class

    class NoApply:
        pass

    class InheritsOnly(Recipe):  # the protocol's apply only raises: not a recipe yet
        pass

    plugin_registry.register("noapply", NoApply)
    plugin_registry.register("inheritsonly", InheritsOnly)
    for name in ("noapply", "inheritsonly"):
        with pytest.raises(TypeError, match="is not a recipe config class with an apply"):
            config_class(name)
