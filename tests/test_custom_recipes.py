"""Bring your own recipe: custom callables, alone and in chains; options that do not apply are errors."""

from __future__ import annotations

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
    res.assert_outcomes(passed=4)
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
        "modules, skip, engine, per_channel",
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
