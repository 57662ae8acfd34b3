"""Latency measurement and statistics (runs inside the worker process).

Rounds are calibrated as pytest-benchmark does: a round repeats the call until it lasts at
least ``round_ms``, so timer resolution does not dominate tiny models. Ratio gates load the
variant, the baseline and a control (the baseline loaded a second time) fresh in one process
before anything else runs there, give them identical call histories, interleave their rounds
and judge a bootstrap interval of the median ratio against the limit widened by the control's
own deviation (see :func:`side_by_side`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2))


def _decide(lo: float, hi: float, med: float, limit: float, noise: float, *, final: bool) -> str | None:
    """pass: the whole interval is within limit x noise; fail: the whole interval is beyond it."""
    bound = limit * noise
    if hi <= bound:
        return "pass"
    if lo > bound:
        return "fail"
    if final:
        return "pass-unsure" if med <= bound else "fail-unsure"
    return None


def side_by_side(variant: Callable[[], object], baseline: Callable[[], object], control: Callable[[], object] | None,
                 *, limit: float | None, warmup: int, min_rounds: int, max_time_s: float, round_s: float,
                 confidence: float) -> dict:
    """Variant vs baseline, with a control: a second, independently loaded copy of the baseline.

    The three callables were loaded fresh in this process and get the same call history: the
    same warm-up calls, one shared calibration, then rounds of ``n`` calls each, their order
    rotating through all six permutations so position effects cancel. Per round the variant's
    time and the control's are divided by the baseline's.

    The control (A/A) says how far two identical artifacts differ here and now. The ratio is
    judged against ``limit x noise``, where ``noise`` is the control's median deviation from 1
    (``max(c, 1/c)``, never below 1): ``fail`` only when the variant's whole interval is beyond
    that, ``pass`` when it is all within; otherwise measure more (doubling) until
    ``max_time_s``, then decide by the medians and mark the verdict ``unsure``.
    """
    sides = [variant, baseline, control] if control is not None else [variant, baseline]
    for _ in range(warmup):
        for f in sides:
            f()

    def all_once():
        for f in sides:
            f()
    n = max(1, calibrate(all_once, round_s * len(sides)))
    times: list[list[float]] = [[] for _ in sides]
    t_start = time.perf_counter()
    target = min_rounds
    rounds = 0
    orders = ORDERS if len(sides) == 3 else ((0, 1), (1, 0))
    while True:
        while rounds < target:
            got = [0.0] * len(sides)
            for i in orders[rounds % len(orders)]:
                got[i] = one_round(sides[i], n)
            for i, t in enumerate(got):
                times[i].append(t)
            rounds += 1
        v, b = np.asarray(times[0]), np.asarray(times[1])
        r = v / b
        lo, hi = bootstrap_ci(r, confidence)
        med = float(np.median(r))
        noise, ctrl = 1.0, None
        if control is not None:
            c = np.asarray(times[2]) / b
            clo, chi = bootstrap_ci(c, confidence, seed=1)
            cmed = float(np.median(c))
            noise = max(1.0, cmed, 1.0 / cmed) if cmed > 0 else 1.0
            ctrl = {"ratio": cmed, "ci_low": clo, "ci_high": chi, "noise": noise}
        elapsed = time.perf_counter() - t_start
        if limit is None:
            decision: str | None = "measured"
            break
        decision = _decide(lo, hi, med, limit, noise, final=elapsed >= max_time_s)
        if decision is not None:
            break
        target = rounds * 2
    return {"ratio": med, "ci_low": lo, "ci_high": hi, "pairs": rounds, "calls_per_round": n,
            "confidence": confidence, "decision": decision, "elapsed_s": time.perf_counter() - t_start,
            "control": ctrl, "limit": limit, "effective_limit": None if limit is None else limit * noise,
            "variant": stats(times[0]), "baseline": stats(times[1]),
            "history": {"warmup": warmup, "calls_per_side": warmup + n * (1 + rounds)}}
