"""The latency gate's three outcomes, on synthetic work of known relative cost (ratios, never absolute times)."""

from __future__ import annotations

import time

import numpy as np

from deploycheck.timing import bootstrap_ci, measure, side_by_side, stats


def spin(us: float):
    def fn():
        end = time.perf_counter() + us * 1e-6
        while time.perf_counter() < end:
            pass
    return fn


def gate(variant_us: float, limit: float, max_time_s: float = 1.0, control_us: float | None = 100):
    return side_by_side(spin(variant_us), spin(100), spin(control_us) if control_us else None, limit=limit, warmup=3,
                        min_rounds=20, max_time_s=max_time_s, round_s=2e-3, confidence=0.95)


def test_pass_when_the_interval_is_inside_the_limit():
    r = gate(100, limit=1.5)
    assert r["decision"] == "pass"
    assert r["ci_high"] <= 1.5 and 0.8 < r["ratio"] < 1.2


def test_fail_when_the_interval_is_past_the_limit():
    r = gate(300, limit=1.3)
    assert r["decision"] == "fail", r
    assert r["ci_low"] > 1.3 and 2.0 < r["ratio"] < 4.0


def bursty(mean_us: float, seed: int = 0):
    """Calls that cost ``mean_us`` on average but 6.4x that one time in ten: rounds vary by about
    40%, so the interval of a true ratio of 1.0 stays wide (about ±8%) for the whole time budget,
    wider than any bias of a busy machine; a plain spin would give an interval a few tenths of a
    percent wide, which such a bias can push wholly past 1.0."""
    import random
    rng = random.Random(seed)
    light, heavy = spin(mean_us * 0.4), spin(mean_us * 6.4)

    def fn():
        (heavy if rng.random() < 0.1 else light)()
    return fn


def test_unsure_measures_more_then_decides_by_the_median():
    # true ratio 1.0 sits exactly on the limit
    r = side_by_side(bursty(100), spin(100), None, limit=1.0, warmup=3, min_rounds=20, max_time_s=0.3, round_s=2e-3,
                     confidence=0.95)
    assert r["decision"] in ("pass-unsure", "fail-unsure"), r
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


def test_the_control_widens_the_limit_by_its_own_deviation():
    # a "control" 30% slower than the baseline means identical artifacts differ by 30% here:
    # a variant 20% slower is then not clearly beyond a 1.1 limit
    r = gate(120, limit=1.1, control_us=130)
    assert r["control"]["ratio"] > 1.2 and r["control"]["noise"] > 1.2
    assert r["effective_limit"] > 1.1 * 1.2
    assert r["decision"] == "pass", r
    assert gate(120, limit=1.1, control_us=None)["decision"] == "fail"


def test_every_side_gets_the_same_call_history():
    calls = {"v": 0, "b": 0, "c": 0}

    def counted(name):
        def fn():
            calls[name] += 1
        return fn
    r = side_by_side(counted("v"), counted("b"), counted("c"), limit=None, warmup=4, min_rounds=10, max_time_s=1.0,
                     round_s=1e-4, confidence=0.95)
    assert calls["v"] == calls["b"] == calls["c"]
    assert r["pairs"] == 10 and r["decision"] == "measured"
