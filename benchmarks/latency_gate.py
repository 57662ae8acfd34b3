"""Verdict quality of the latency ratio gate vs the naive approach, on this machine.

    python benchmarks/latency_gate.py [--reps 100] [--write]

Baseline: the digits MLP as a TorchScript module (1 thread). Variants: an identical copy (A/A),
and wrappers doing proportional extra work (1.10x and 1.25x: one extra model call per 10 or per 4
calls). Gate: `max_ratio: 1.10`.

- deploycheck: variant and baseline interleaved in one process, bootstrap interval of the median
  ratio, adaptive rounds up to the time budget (deploycheck.timing.side_by_side, without its
  control: this loop has no second load). The end-to-end benchmark through pytest is
  benchmarks/latency_verdicts.py.
- naive: the variant's median now vs the baseline's median stored from an earlier run (what
  pytest-benchmark's --benchmark-compare-fail does), failing when the ratio > 1.10. The stored
  baseline is measured once, on the quiet machine, before anything else.

Each is run on a quiet machine and under intermittent background load (two processes burning
the cores in random bursts), as on a shared CI runner whose load differs from the run that
stored the baseline.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sys
import time

import numpy as np
import torch
from _common import ROOT, machine_line, write_section

sys.path.insert(0, ROOT)


def model():
    from safetensors.torch import load_file

    from examples.digits import MLP

    m = MLP()
    m.load_state_dict(load_file(os.path.join(ROOT, "specs", "models", "digits_mlp.safetensors")))
    return torch.jit.trace(m.eval(), torch.rand(1, 64))


class Slowed:
    """Calls the model, plus one extra call every 1/(factor-1) calls: proportional extra work."""

    def __init__(self, fn, factor: float):
        self.fn, self.extra, self.debt = fn, factor - 1.0, 0.0

    def __call__(self):
        self.fn()
        self.debt += self.extra
        while self.debt >= 1.0 - 1e-9:
            self.fn()
            self.debt -= 1.0


def burner(stop):
    rng = random.Random(0)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.005, 0.08)
        while time.perf_counter() < end:
            pass
        time.sleep(rng.uniform(0.005, 0.08))


def stored_baseline() -> tuple[float, int]:
    """The naive approach's reference: the baseline's median from an earlier, quiet run."""
    from deploycheck.timing import calibrate, one_round

    torch.set_num_threads(1)
    x = torch.rand(1, 64)
    a = model()
    base = lambda: a(x)  # noqa: E731
    with torch.inference_mode():
        for _ in range(200):
            base()
        n = calibrate(base, 1e-3)
        return float(np.median([one_round(base, n) for _ in range(100)])), n


def run(reps: int, noisy: bool, stored: float) -> dict:
    from deploycheck.timing import calibrate, one_round, side_by_side

    torch.set_num_threads(1)
    x = torch.rand(1, 64)
    a, b = model(), model()
    base = lambda: a(x)  # noqa: E731
    procs, stop = [], mp.Event()
    if noisy:
        procs = [mp.Process(target=burner, args=(stop,), daemon=True) for _ in range(2)]
        for p in procs:
            p.start()
    results = {}
    try:
        with torch.inference_mode():
            for _ in range(200):
                base()
            n = calibrate(base, 1e-3)
            for name, factor in (("A/A (1.00x)", 1.0), ("1.10x slower", 1.10), ("1.25x slower", 1.25)):
                var = Slowed(lambda: b(x), factor) if factor > 1 else (lambda: b(x))
                dc_fail = naive_fail = 0
                ratios, pairs = [], []
                t0 = time.perf_counter()
                for _ in range(reps):
                    var_med = np.median([one_round(var, n) for _ in range(30)])
                    naive_fail += (var_med / stored) > 1.10
                    r = side_by_side(
                        var,
                        base,
                        None,
                        limit=1.10,
                        warmup=2,
                        min_rounds=30,
                        max_time_s=2.0,
                        round_s=1e-3,
                        confidence=0.95,
                    )
                    dc_fail += r["decision"].startswith("fail")
                    ratios.append(r["ratio"])
                    pairs.append(r["pairs"])
                results[name] = {
                    "deploycheck_fail": dc_fail / reps,
                    "naive_fail": naive_fail / reps,
                    "median_ratio": float(np.median(ratios)),
                    "mean_pairs": float(np.mean(pairs)),
                    "seconds": time.perf_counter() - t0,
                }
    finally:
        stop.set()
        for p in procs:
            p.join()
    return results


def main() -> None:
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 100
    from tabulate import tabulate

    rows = []
    stored, _ = stored_baseline()
    for noisy in (False, True):
        res = run(reps, noisy, stored)
        for name, r in res.items():
            want = "fail" if "1.25" in name else ("pass" if "A/A" in name else "either (at the limit)")
            rows.append(
                [
                    "busy (2 burner processes)" if noisy else "quiet",
                    name,
                    want,
                    f"{r['deploycheck_fail']:.0%}",
                    f"{r['naive_fail']:.0%}",
                    f"{r['median_ratio']:.3f}",
                    f"{r['mean_pairs']:.0f}",
                    f"{r['seconds'] / reps:.2f}",
                ]
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"Measured on {machine_line()}, {reps} repetitions per row, gate `max_ratio: 1.10`; "
            "`python benchmarks/latency_gate.py --write`.",
            "",
            tabulate(
                rows,
                headers=[
                    "machine",
                    "variant",
                    "right verdict",
                    "deploycheck: fail rate",
                    "naive: fail rate",
                    "median ratio",
                    "mean pairs",
                    "s per decision",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    )
    print(text)
    if "--write" in sys.argv:
        write_section("latency-gate", text)


if __name__ == "__main__":
    main()
