"""Numerical health: NaN and Inf fail where they arise, said in words, never as a comparison with nan."""

from __future__ import annotations

from conftest import make_spec


def test_a_nan_baseline_fails_once_at_the_baseline(project):
    project.write(make_spec(factory="NaNs", variants="  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.2}"))
    res = project.run("-rs")
    res.stdout.fnmatch_lines([
        "*check] outputs failed for tiny::baseline::torchscript*",
        "the baseline's in-memory outputs contain 114 NaN of 114 values; first at sample 0, output index [0]",
        "the baseline's reloaded torchscript outputs contain 114 NaN of 114 values; first at sample 0, output index [0]",
    ])
    res.stdout.fnmatch_lines(["*not compared: the baseline's in-memory outputs are not finite "
                              "(see tiny::baseline::*::outputs)*"])
    assert "nan >" not in res.stdout.str() and "nan <" not in res.stdout.str()
    # the baseline's finite item, and the pruned variant's own NaN outputs; its metric is skipped
    res.assert_outcomes(failed=2, passed=7, skipped=1)
    res.stdout.fnmatch_lines(["*tiny::pruned::torchscript: outputs: the variant's in-memory outputs contain 114 NaN*"])


def test_fp16_overflow_to_inf_is_named(project):
    project.write(make_spec(factory="Overflows", variants="  baseline: {}\n  half:\n    quantize: {method: fp16}",
                            thresholds="  metric: {max_drop: 0.01}\n  outputs: {atol: 0.1}"))
    res = project.run("-k", "half")
    res.stdout.fnmatch_lines([
        "*check] outputs failed for tiny::half::torchscript*",
        "the variant's in-memory outputs contain *Inf* of 114 values; first at sample 0, output index [[]*[]]",
    ])
    assert "tiny::half::torchscript::load PASSED" in res.stdout.str() or res.parseoutcomes().get("passed", 0) >= 1
