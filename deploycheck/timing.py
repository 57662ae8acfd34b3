"""Latency measurement and statistics (runs inside the worker process).

Rounds are calibrated as pytest-benchmark does: a round repeats the call until it lasts at
least ``round_ms``, so timer resolution does not dominate tiny models. Ratio gates load the
variant, the baseline and a control (the baseline loaded a second time) fresh in one process
before anything else runs there, give them identical call histories, interleave their rounds
and judge a bootstrap interval of the median ratio against the limit widened by the control's
own deviation (see :func:`side_by_side`).

The clocks are injectable (``clock`` for wall time, ``cpu_clock`` for this process's CPU time),
so the decisions are tested on synthetic times. Each round records both: on a busy machine the
process waits for a core and wall time grows while CPU time barely moves; the wall/CPU ratio
says how busy the machine was, and a verdict that a busy machine could have made fail is judged
on CPU time too, or called inconclusive (see :func:`decide`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Clock = Callable[[], float]

#: median wall/CPU time of a side's rounds from which the machine counts as busy: one core
#: shared with another runnable process gives about 2; a quiet machine 1.00-1.05
BUSY = 1.3


def calibrate(fn: Callable[[], object], round_s: float, *, clock: Clock = time.perf_counter) -> int:
    n = 1
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        dt = clock() - t0
        if dt >= round_s or n >= 1 << 20:
            return n
        n = max(n * 2, int(n * round_s / max(dt, 1e-9) * 1.2))


def one_round(fn: Callable[[], object], n: int, *, clock: Clock = time.perf_counter) -> float:
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def timed_round(fn: Callable[[], object], n: int, *, clock: Clock, cpu_clock: Clock) -> tuple[float, float]:
    """Wall and CPU seconds per call over one round of ``n`` calls."""
    w0, c0 = clock(), cpu_clock()
    for _ in range(n):
        fn()
    return (clock() - w0) / n, (cpu_clock() - c0) / n


def stats(samples_s: list[float]) -> dict:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "stdev_ms": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "rounds": int(len(a)),
        "samples_ms": [float(f"{v:.5g}") for v in a],
    }


def measure(
    fn: Callable[[], object], *, warmup: int, rounds: int, round_s: float, clock: Clock = time.perf_counter
) -> tuple[dict, int]:
    for _ in range(warmup):
        fn()
    n = calibrate(fn, round_s, clock=clock)
    samples = [one_round(fn, n, clock=clock) for _ in range(rounds)]
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


def decide(
    *,
    wall: tuple[float, float, float],
    cpu: tuple[float, float, float],
    busy: float,
    limit: float,
    noise: float,
    final: bool,
) -> str | None:
    """The ratio verdict from the wall-time interval ``(lo, median, hi)``, guarded by CPU time.

    On a quiet machine (``busy``, the largest of the sides' median wall/CPU, below :data:`BUSY`) wall time
    decides. On a busy one a wall-time fail stands only if the CPU-time interval fails too (the
    variant really does more work); otherwise the waiting for a core may be what made it slow:
    measure more while time is left, then ``inconclusive-busy``, never a false fail."""
    got = _decide(wall[0], wall[2], wall[1], limit, noise, final=final)
    if busy < BUSY or got is None or not got.startswith("fail"):
        return got
    if _decide(cpu[0], cpu[2], cpu[1], limit, noise, final=True) == "fail":
        return "fail"
    return "inconclusive-busy" if final else None


def side_by_side(
    variant: Callable[[], object],
    baseline: Callable[[], object],
    control: Callable[[], object] | None,
    *,
    limit: float | None,
    warmup: int,
    min_rounds: int,
    max_time_s: float,
    round_s: float,
    confidence: float,
    clock: Clock = time.perf_counter,
    cpu_clock: Clock = time.process_time,
) -> dict:
    """Variant vs baseline, with a control: a second, independently loaded copy of the baseline.

    The three callables were loaded fresh in this process and get the same call history: the
    same warm-up calls, one shared calibration, then rounds of ``n`` calls each, their order
    rotating through all six permutations so position effects cancel. Per round the variant's
    time and the control's are divided by the baseline's.

    The control (A/A) says how far two identical artifacts differ here and now. The ratio is
    judged against ``limit x noise``, where ``noise`` is the control's median deviation from 1
    (``max(c, 1/c)``, never below 1): ``fail`` only when the variant's whole interval is beyond
    that, ``pass`` when it is all within; otherwise measure more (doubling) until
    ``max_time_s``, then decide by the medians and mark the verdict ``unsure``. A busy machine
    (wall/CPU of the rounds at least :data:`BUSY`) never fails a verdict alone: see :func:`decide`.
    """
    sides = [variant, baseline, control] if control is not None else [variant, baseline]
    for _ in range(warmup):
        for f in sides:
            f()

    def all_once():
        for f in sides:
            f()

    n = max(1, calibrate(all_once, round_s * len(sides), clock=clock))
    times: list[list[float]] = [[] for _ in sides]
    cpus: list[list[float]] = [[] for _ in sides]
    t_start = clock()
    target = min_rounds
    rounds = 0
    orders = ORDERS if len(sides) == 3 else ((0, 1), (1, 0))
    while True:
        while rounds < target:
            got = [(0.0, 0.0)] * len(sides)
            for i in orders[rounds % len(orders)]:
                got[i] = timed_round(sides[i], n, clock=clock, cpu_clock=cpu_clock)
            for i, (w, c) in enumerate(got):
                times[i].append(w)
                cpus[i].append(c)
            rounds += 1
        v, b = np.asarray(times[0]), np.asarray(times[1])
        r = v / b
        lo, hi = bootstrap_ci(r, confidence)
        med = float(np.median(r))
        # how busy, per side: a side whose rounds are longer than the scheduler's slice is
        # preempted in most of them while short rounds often finish untouched, so a pooled
        # median can say "quiet" while the slower side waited 4x its run time (measured)
        busy_sides = [
            float(np.median(np.asarray(times[i]) / np.maximum(np.asarray(cpus[i]), 1e-12))) for i in range(len(sides))
        ]
        busy = max(busy_sides)
        cv, cb = np.asarray(cpus[0]), np.asarray(cpus[1])
        cr = cv / np.maximum(cb, 1e-12)
        clo, chi = bootstrap_ci(cr, confidence, seed=2)
        cmed_cpu = float(np.median(cr))
        noise, ctrl = 1.0, None
        if control is not None:
            c = np.asarray(times[2]) / b
            klo, khi = bootstrap_ci(c, confidence, seed=1)
            cmed = float(np.median(c))
            noise = max(1.0, cmed, 1.0 / cmed) if cmed > 0 else 1.0
            ctrl = {"ratio": cmed, "ci_low": klo, "ci_high": khi, "noise": noise}
        elapsed = clock() - t_start
        if limit is None:
            decision: str | None = "measured"
            break
        decision = decide(
            wall=(lo, med, hi),
            cpu=(clo, cmed_cpu, chi),
            busy=busy,
            limit=limit,
            noise=noise,
            final=elapsed >= max_time_s,
        )
        if decision is not None:
            break
        target = rounds * 2
    return {
        "ratio": med,
        "ci_low": lo,
        "ci_high": hi,
        "pairs": rounds,
        "calls_per_round": n,
        "confidence": confidence,
        "decision": decision,
        "elapsed_s": clock() - t_start,
        "control": ctrl,
        "limit": limit,
        "effective_limit": None if limit is None else limit * noise,
        "busy": busy,
        "busy_sides": busy_sides,
        "cpu_ratio": cmed_cpu,
        "cpu_ci": [clo, chi],
        "variant": stats(times[0]),
        "baseline": stats(times[1]),
        "history": {"warmup": warmup, "calls_per_side": warmup + n * (1 + rounds)},
    }
