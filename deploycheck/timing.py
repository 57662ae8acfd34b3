"""Latency measurement and statistics (runs inside the worker process).

Rounds are calibrated as pytest-benchmark does: a round repeats the call until it lasts at
least ``round_ms``, so timer resolution does not dominate tiny models. Ratio gates interleave
variant and baseline rounds (A B A B ...) in one process and judge a bootstrap interval of
the median ratio, measuring more while the interval straddles the threshold.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np


def calibrate(fn: Callable[[], object], round_s: float) -> int:
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= round_s or n >= 1 << 20:
            return n
        n = max(n * 2, int(n * round_s / max(dt, 1e-9) * 1.2))


def one_round(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def stats(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "stdev_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "rounds": int(len(a)),
            "samples_ms": [float(f"{v:.5g}") for v in a]}


def measure(fn: Callable[[], object], *, warmup: int, rounds: int, round_s: float) -> tuple[dict, int]:
    for _ in range(warmup):
        fn()
    n = calibrate(fn, round_s)
    samples = [one_round(fn, n) for _ in range(rounds)]
    return stats(samples), n


def bootstrap_ci(ratios: np.ndarray, confidence: float, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ratios), size=(n_boot, len(ratios)))
    meds = np.median(ratios[idx], axis=1)
    lo, hi = np.percentile(meds, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(lo), float(hi)


def interleaved(variant: Callable[[], object], baseline: Callable[[], object], *, limit: float | None,
                warmup: int, min_rounds: int, max_time_s: float, round_s: float, confidence: float) -> dict:
    """Median of per-pair time ratios variant/baseline with a bootstrap interval.

    Decision: ``pass`` when the interval's upper bound is <= limit, ``fail`` when its lower
    bound is > limit; otherwise keep measuring (doubling) until ``max_time_s``, then decide by
    the median and mark the verdict ``unsure``.
    """
    for _ in range(warmup):
        variant()
        baseline()
    n = max(1, min(calibrate(variant, round_s), calibrate(baseline, round_s)))
    ratios: list[float] = []
    va: list[float] = []
    ba: list[float] = []
    t_start = time.perf_counter()
    target = min_rounds
    while True:
        while len(ratios) < target:
            # Alternate which goes first so drift within a pair does not bias the ratio.
            if len(ratios) % 2:
                b = one_round(baseline, n)
                v = one_round(variant, n)
            else:
                v = one_round(variant, n)
                b = one_round(baseline, n)
            va.append(v)
            ba.append(b)
            ratios.append(v / b)
        r = np.asarray(ratios)
        lo, hi = bootstrap_ci(r, confidence)
        med = float(np.median(r))
        elapsed = time.perf_counter() - t_start
        if limit is None:
            decision = "measured"
            break
        if hi <= limit:
            decision = "pass"
            break
        if lo > limit:
            decision = "fail"
            break
        if elapsed >= max_time_s:
            decision = "pass-unsure" if med <= limit else "fail-unsure"
            break
        target = len(ratios) * 2
    return {"ratio": med, "ci_low": lo, "ci_high": hi, "pairs": len(ratios), "calls_per_round": n,
            "confidence": confidence, "decision": decision, "elapsed_s": time.perf_counter() - t_start,
            "variant": stats(va), "baseline": stats(ba)}
