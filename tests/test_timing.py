"""The latency gate's three outcomes, on synthetic work of known relative cost (ratios, never absolute times)."""

from __future__ import annotations

import time

import numpy as np

from deploycheck.timing import bootstrap_ci, interleaved, measure, stats


def spin(us: float):
    def fn():
        end = time.perf_counter() + us * 1e-6
        while time.perf_counter() < end:
            pass
    return fn


def gate(variant_us: float, limit: float, max_time_s: float = 1.0):
    return interleaved(spin(variant_us), spin(100), limit=limit, warmup=3, min_rounds=20, max_time_s=max_time_s,
                       round_s=2e-3, confidence=0.95)


def test_pass_when_the_interval_is_inside_the_limit():
    r = gate(100, limit=1.5)
    assert r["decision"] == "pass"
    assert r["ci_high"] <= 1.5 and 0.8 < r["ratio"] < 1.2


def test_fail_when_the_interval_is_past_the_limit():
    r = gate(300, limit=1.3)
    assert r["decision"] == "fail", r
    assert r["ci_low"] > 1.3 and 2.0 < r["ratio"] < 4.0


def test_unsure_measures_more_then_decides_by_the_median():
    r = gate(100, limit=1.0, max_time_s=0.3)  # true ratio 1.0 sits exactly on the limit
    assert r["decision"] in ("pass-unsure", "fail-unsure")
    assert r["pairs"] > 20  # it kept measuring while unsure
    assert r["ci_low"] <= 1.0 <= r["ci_high"]


def test_bootstrap_interval_contains_the_median_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 0.05, 20)
    big = rng.normal(1.0, 0.05, 400)
    lo1, hi1 = bootstrap_ci(small, 0.95)
    lo2, hi2 = bootstrap_ci(big, 0.95)
    assert lo1 <= np.median(small) <= hi1
    assert (hi2 - lo2) < (hi1 - lo1)


def test_measure_calibrates_rounds_and_reports_percentiles():
    st, n = measure(spin(20), warmup=2, rounds=10, round_s=1e-3)
    assert n >= 10  # several 20 µs calls per 1 ms round
    assert st["rounds"] == 10 and len(st["samples_ms"]) == 10
    assert st["p50_ms"] <= st["p95_ms"] <= st["p99_ms"]
    assert stats([0.001, 0.002, 0.003])["p50_ms"] == 2.0
