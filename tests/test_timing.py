"""The latency gate's decisions on synthetic time: a fake clock that only the fake models advance,
so every outcome is known in advance and no test reads the wall clock."""

from __future__ import annotations

import random

import numpy as np

from deploycheck.timing import BUSY, bootstrap_ci, decide, measure, side_by_side, stats


class FakeClock:
    """Wall and CPU time that move only when a fake model runs: a call costs ``cpu_s`` of CPU
    time and ``cpu_s x busy`` of wall time (``busy`` > 1: it waited for a core)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def wall_clock(self) -> float:
        return self.wall

    def cpu_clock(self) -> float:
        return self.cpu

    def model(self, cost_us: float, *, jitter: float = 0.0, busy: float = 1.0, seed: int = 0):
        rng = random.Random(seed)

        def fn():
            c = cost_us * 1e-6 * (1 + jitter * rng.uniform(-1, 1))
            self.cpu += c
            self.wall += c * busy

        return fn

    def bursty(self, mean_us: float, seed: int = 0):
        """``mean_us`` on average, but 6.4x that one call in ten: rounds vary by about 40%."""
        rng = random.Random(seed)
        light, heavy = self.model(mean_us * 0.4), self.model(mean_us * 6.4)

        def fn():
            (heavy if rng.random() < 0.1 else light)()

        return fn


def gate(
    clock: FakeClock, variant, baseline, control, *, limit: float | None, max_time_s: float = 1.0, min_rounds: int = 20
) -> dict:
    return side_by_side(
        variant,
        baseline,
        control,
        limit=limit,
        warmup=3,
        min_rounds=min_rounds,
        max_time_s=max_time_s,
        round_s=2e-3,
        confidence=0.95,
        clock=clock.wall_clock,
        cpu_clock=clock.cpu_clock,
    )


def jittered(
    variant_us: float, baseline_us: float = 100, control_us: float = 100, *, busy=(1.0, 1.0, 1.0), **kw
) -> dict:
    """The gate on three fake models of the given costs, each jittered by 5% (seeds 1, 2, 3), each
    waiting ``busy`` x its run time for a core."""
    c = FakeClock()
    sides = [
        c.model(us, jitter=0.05, busy=b, seed=i)
        for i, (us, b) in enumerate(zip((variant_us, baseline_us, control_us), busy, strict=True), 1)
    ]
    return gate(c, *sides, **kw)


def test_pass_when_the_interval_is_inside_the_limit():
    r = jittered(100, limit=1.5)
    assert r["decision"] == "pass"
    assert r["pairs"] == 20  # decided at once: nothing more to measure
    assert 0.97 < r["ratio"] < 1.03 and r["ci_high"] <= 1.5
    assert r["busy"] == 1.0


def test_fail_when_the_interval_is_past_the_limit():
    r = jittered(300, limit=1.3)
    assert r["decision"] == "fail", r
    assert r["ci_low"] > 1.3 and 2.8 < r["ratio"] < 3.2


def test_unsure_measures_more_then_decides_by_the_median():
    # true ratio 1.0 sits exactly on the limit: the interval straddles it for the whole budget
    c = FakeClock()
    r = gate(c, c.bursty(100), c.model(100), None, limit=1.0, max_time_s=0.3)
    assert r["decision"] in ("pass-unsure", "fail-unsure"), r
    assert r["pairs"] > 20  # it kept measuring while unsure
    assert r["ci_low"] <= 1.0 <= r["ci_high"]
    assert r["elapsed_s"] >= 0.3  # the synthetic time budget was spent


def test_bootstrap_interval_contains_the_median_and_shrinks_with_more_data():
    rng = np.random.default_rng(1)
    small = rng.normal(1.0, 0.05, 20)
    big = rng.normal(1.0, 0.05, 400)
    lo1, hi1 = bootstrap_ci(small, 0.95)
    lo2, hi2 = bootstrap_ci(big, 0.95)
    assert lo1 <= np.median(small) <= hi1
    assert (hi2 - lo2) < (hi1 - lo1)


def test_measure_calibrates_rounds_and_reports_percentiles():
    c = FakeClock()
    st, n = measure(c.model(20), warmup=2, rounds=10, round_s=1e-3, clock=c.wall_clock)
    assert n >= 50  # 20 µs calls fill a 1 ms round fifty times over
    assert st["rounds"] == 10 and len(st["samples_ms"]) == 10
    assert abs(st["p50_ms"] - 0.020) < 1e-9 and st["p50_ms"] <= st["p95_ms"] <= st["p99_ms"]
    assert stats([0.001, 0.002, 0.003])["p50_ms"] == 2.0


def test_the_control_widens_the_limit_by_its_own_deviation():
    # a "control" 30% slower than the baseline means identical artifacts differ by 30% here:
    # a variant 20% slower is then not clearly beyond a 1.1 limit
    c = FakeClock()
    r = gate(c, c.model(120), c.model(100), c.model(130), limit=1.1)
    assert abs(r["control"]["ratio"] - 1.3) < 1e-9 and abs(r["control"]["noise"] - 1.3) < 1e-9
    assert abs(r["effective_limit"] - 1.1 * 1.3) < 1e-9
    assert r["decision"] == "pass", r
    c = FakeClock()
    assert gate(c, c.model(120), c.model(100), None, limit=1.1)["decision"] == "fail"


def test_every_side_gets_the_same_call_history():
    calls = {"v": 0, "b": 0, "c": 0}
    c = FakeClock()

    def counted(name):
        tick = c.model(10)

        def fn():
            calls[name] += 1
            tick()

        return fn

    r = gate(c, counted("v"), counted("b"), counted("c"), limit=None, min_rounds=10)
    assert calls["v"] == calls["b"] == calls["c"]
    assert r["pairs"] == 10 and r["decision"] == "measured"


def test_a_busy_machine_that_slows_the_heavier_model_more_is_inconclusive_not_a_fail():
    # True cost: the variant does 2x the baseline's work (CPU time), limit 2.6. Under load the
    # variant waited for a core 3x its run time, the baseline 1.5x: wall time says 4.0.
    r = jittered(200, busy=(3.0, 1.5, 1.5), limit=2.6, max_time_s=0.5)
    assert r["ci_low"] > 2.6 * r["control"]["noise"]  # wall time alone would have failed it
    assert r["decision"] == "inconclusive-busy", r
    assert r["busy"] >= BUSY and 1.9 < r["cpu_ratio"] < 2.1
    assert r["pairs"] > 20  # it measured more before giving up


def test_a_busy_machine_still_fails_a_variant_that_does_more_work():
    r = jittered(400, busy=(2.0, 2.0, 2.0), limit=2.6)
    assert r["busy"] >= BUSY and r["decision"] == "fail", r


def test_decide_on_known_intervals():
    quiet, busy = 1.0, 2.0
    kw = dict(limit=1.5, noise=1.0, final=False)
    assert decide(wall=(1.1, 1.2, 1.3), cpu=(1.1, 1.2, 1.3), busy=quiet, **kw) == "pass"
    assert decide(wall=(1.6, 1.7, 1.8), cpu=(1.1, 1.2, 1.3), busy=quiet, **kw) == "fail"  # quiet: wall decides
    assert decide(wall=(1.6, 1.7, 1.8), cpu=(1.6, 1.7, 1.8), busy=busy, **kw) == "fail"
    assert decide(wall=(1.6, 1.7, 1.8), cpu=(1.1, 1.2, 1.3), busy=busy, **kw) is None  # measure more
    assert (
        decide(wall=(1.6, 1.7, 1.8), cpu=(1.1, 1.2, 1.3), busy=busy, limit=1.5, noise=1.0, final=True)
        == "inconclusive-busy"
    )
    assert (
        decide(wall=(1.4, 1.6, 1.8), cpu=(1.4, 1.6, 1.8), busy=quiet, limit=1.5, noise=1.0, final=True) == "fail-unsure"
    )
    assert decide(wall=(1.6, 1.7, 1.8), cpu=(1.6, 1.7, 1.8), busy=quiet, limit=1.5, noise=1.3, final=False) == "pass"


def test_only_the_slower_side_waiting_for_a_core_is_enough_to_count_as_busy():
    # Measured through pytest on a crowded 2-core machine: the 4x variant's long rounds were
    # preempted (wall/CPU 4.5) while the baseline's and control's short ones mostly were not
    # (1.0): wall ratio 21, CPU ratio 3.9. A median pooled over all rounds said "quiet".
    r = jittered(400, busy=(4.5, 1.0, 1.0), limit=5.2, max_time_s=0.5)
    assert r["busy_sides"][1] == r["busy_sides"][2] == 1.0 and abs(r["busy"] - 4.5) < 1e-9
    assert r["decision"] == "inconclusive-busy" and 3.8 < r["cpu_ratio"] < 4.2, r
