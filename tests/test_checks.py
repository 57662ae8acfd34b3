"""The one threshold helper every check decides with: synthetic numbers, known formulas."""

from __future__ import annotations

from deploycheck.checks.base import Bound, Gate, Verdict, unset_words


def test_a_ceiling_passes_on_the_limit_and_fails_above_it_with_its_unit():
    bound = Bound.at_most("p95_ms", 2.0, unit=" ms")
    assert bound.judge(2.0, "p95 2 ms") == (True, "p95 2 ms <= p95_ms 2 ms")
    assert bound.judge(2.5, "p95 2.5 ms") == (False, "p95 2.5 ms > p95_ms 2 ms")


def test_a_floor_passes_on_the_limit_and_fails_below_it():
    bound = Bound.at_least("min_agreement", 0.9)
    assert bound.judge(0.9, "agreement 0.900") == (True, "agreement 0.900 >= min_agreement 0.9")
    ok, formula = bound.judge(0.8, "agreement 0.800", tail="; the baseline keeps 9)")
    assert (ok, formula) == (False, "agreement 0.800 < min_agreement 0.9; the baseline keeps 9)")


def test_a_drop_bound_shows_its_derivation_in_both_directions():
    higher = Bound.drop(baseline=0.98, max_drop=0.01, higher=True)
    assert higher.judge(0.97, "accuracy 0.97") == (True, "accuracy 0.97 >= baseline 0.98 - max_drop 0.01 = 0.97")
    assert higher.judge(0.969, "accuracy 0.969")[0] is False
    lower = Bound.drop(baseline=0.10, max_drop=0.01, higher=False)
    assert lower.judge(0.12, "mse 0.12") == (False, "mse 0.12 > baseline 0.1 + max_drop 0.01 = 0.11")
    rel = Bound.relative_drop(baseline=0.98, max_relative_drop=0.02, higher=True)
    assert rel.judge(0.95, "accuracy 0.95") == (
        False,
        "accuracy 0.95 < baseline 0.98 × (1 - max_relative_drop 0.02) = 0.9604",
    )


def test_a_derived_limit_absorbs_float_rounding_but_a_given_one_does_not():
    # 0.4 - 0.1 is 0.30000000000000004: an accuracy of 0.3 sits on the limit and must pass
    assert 0.3 < 0.4 - 0.1 and Bound.drop(baseline=0.4, max_drop=0.1, higher=True).ok(0.3)
    assert not Bound.drop(baseline=0.4, max_drop=0.1, higher=True).ok(0.2999)
    assert not Bound.at_least("min", 0.2).ok(0.2 - 1e-15)


def test_a_gate_shows_the_failed_formulas_else_the_passed_ones_else_what_was_measured():
    gate = Gate()
    gate.bound(Bound.at_most("max_mb", 5), 4.0, "size 4 MB")
    assert gate.ok and gate.formula() == "size 4 MB <= max_mb 5"
    gate.bound(Bound.at_most("max_ratio", 0.5), 0.8, "size ratio 0.800")
    assert not gate.ok and gate.formula() == "size ratio 0.800 > max_ratio 0.5"
    assert gate.every == ["size 4 MB <= max_mb 5", "size ratio 0.800 > max_ratio 0.5"]
    assert Gate().formula(unset="size 4 MB (no threshold set)") == "size 4 MB (no threshold set)"


def test_a_verdict_is_built_by_keyword_and_not_compared_is_no_pass():
    v = Verdict.not_compared("not compared: the baseline's in-memory outputs are not finite")
    assert (v.passed, v.outcome, v.message) == (
        False,
        "not_compared",
        "not compared: the baseline's in-memory outputs are not finite",
    )
    assert Verdict(passed=True, formula="f").outcome == "decided"


def test_a_metric_with_no_bound_is_not_gated_and_one_bound_decides():
    """No threshold set: the value is recorded with what would gate it, and the outcome is
    ``not_gated`` (the item is skipped, never passed). One bound makes it a decision again."""
    from deploycheck.checks.quality import metric_verdict
    from deploycheck.spec.thresholds import MetricThreshold

    free = metric_verdict(name="accuracy", value=0.9, baseline=0.95, higher=True, th=MetricThreshold())
    assert free.outcome == "not_gated" and free.passed
    assert free.formula == (
        "accuracy 0.9 (baseline 0.95, delta -0.05); no threshold set "
        "(thresholds.metric: max_drop, max_relative_drop, min or max)"
    )
    gated = metric_verdict(name="accuracy", value=0.9, baseline=0.95, higher=True, th=MetricThreshold(min=0.5))
    assert (gated.outcome, gated.passed) == ("decided", True)
    failed = metric_verdict(name="accuracy", value=0.9, baseline=0.95, higher=True, th=MetricThreshold(max_drop=0.01))
    assert (failed.outcome, failed.passed) == ("decided", False)


def test_unset_words_name_the_keys_that_would_gate():
    assert (
        unset_words("thresholds.size", "max_mb", "max_ratio")
        == "no threshold set (thresholds.size: max_mb or max_ratio)"
    )
    assert unset_words("thresholds.size", "max_mb") == "no threshold set (thresholds.size: max_mb)"


def test_agreement_is_the_share_of_unchanged_top1_predictions_against_the_baseline_even_with_labels():
    import pytest
    import torch

    from deploycheck.metrics import METRICS, targets_for

    m = METRICS.get("agreement")
    base = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 4.0], [5.0, 0.0, 0.0]])
    var = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 1.0, 4.0], [5.0, 6.0, 0.0]])
    labels = torch.tensor([1, 1, 1, 1])  # ignored: agreement is with the baseline's predictions
    assert m(var, targets_for(m, labels, base)) == 0.5
    assert m(base, targets_for(m, labels, base)) == 1.0
    assert m.samples(var, base).tolist() == [1.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"agreement needs classifier logits \(batch, classes\), got \(4,\)"):
        m(torch.zeros(4), torch.zeros(4))
