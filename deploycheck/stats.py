"""Paired statistics for the metric gate: how sure is a drop vs the baseline?

The variant and the baseline are scored on the same samples, so their difference is judged per
sample (paired), which removes the samples' own difficulty from the noise. For a per-sample
right/wrong metric (accuracy, top-k) the interval is exact: only discordant pairs (one side
right, the other wrong) carry information, and conditional on their number ``m`` the count where
the baseline alone is right is Binomial(m, p) (McNemar's setting); a Clopper-Pearson interval of
``p`` maps to the drop ``m (2p - 1) / n``. Any other metric gets a paired bootstrap (resampling
sample indices, both sides together) with a fixed seed.

Pure functions on arrays: tested on synthetic data with known answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class DropCI:
    """The worsening of the variant vs the baseline (positive: worse) with its interval."""

    drop: float
    low: float
    high: float
    confidence: float
    n: int
    method: str

    def describe(self) -> str:
        return f"{self.confidence:.0%} CI {self.low:.4f} to {self.high:.4f}, {self.method}"


def clopper_pearson(k: int, m: int, confidence: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion: ``k`` successes in ``m``."""
    from scipy.stats import beta

    if m == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, m - k + 1))
    hi = 1.0 if k == m else float(beta.ppf(1 - a, k + 1, m - k))
    return lo, hi


def exact_paired_drop(base_ok: np.ndarray, var_ok: np.ndarray, confidence: float) -> DropCI:
    """Accuracy drop (baseline - variant) on paired right/wrong outcomes, exact on the discordant pairs.

    With no discordant pair the two agree on every sample: the drop is exactly 0 here."""
    b, v = np.asarray(base_ok, dtype=bool), np.asarray(var_ok, dtype=bool)
    n = len(b)
    lost = int(np.sum(b & ~v))  # the baseline right, the variant wrong
    gained = int(np.sum(~b & v))
    m = lost + gained
    drop = (lost - gained) / n if n else 0.0
    if m == 0:
        return DropCI(drop, 0.0, 0.0, confidence, n, "exact, no discordant pairs")
    lo, hi = clopper_pearson(lost, m, confidence)
    return DropCI(
        drop, m * (2 * lo - 1) / n, m * (2 * hi - 1) / n, confidence, n, f"exact on {m} discordant pairs of {n}"
    )


def bootstrap_paired_drop(
    score: Callable[[np.ndarray], tuple[float, float]],
    n: int,
    *,
    higher: bool,
    confidence: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> DropCI:
    """Paired bootstrap of the drop for any metric: ``score(idx)`` returns (baseline, variant)
    metric values on the samples ``idx``; both sides are resampled together."""
    sign = 1.0 if higher else -1.0
    b0, v0 = score(np.arange(n))
    drop = sign * (b0 - v0)
    rng = np.random.default_rng(seed)
    drops = np.empty(n_boot)
    for i in range(n_boot):
        b, v = score(rng.integers(0, n, size=n))
        drops[i] = sign * (b - v)
    lo, hi = np.percentile(drops, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return DropCI(
        float(drop), float(lo), float(hi), confidence, n, f"paired bootstrap, {n_boot} resamples, seed {seed}"
    )


def bootstrap_paired_mean_drop(
    base: np.ndarray,
    variant: np.ndarray,
    *,
    higher: bool,
    confidence: float,
    n_boot: int = 1000,
    seed: int = 0,
    block: int = 100,
) -> DropCI:
    """:func:`bootstrap_paired_drop` for a metric that is the mean of per-sample values: the same
    resamples (the same seed draws the same indices), each one a mean of the paired per-sample
    drops, computed ``block`` resamples at a time. Costs n_boot x n additions, whatever the model's
    outputs are (a language model's logits are reduced to one number per text once, before)."""
    d = (1.0 if higher else -1.0) * (np.asarray(base, dtype=np.float64) - np.asarray(variant, dtype=np.float64))
    n = len(d)
    rng = np.random.default_rng(seed)
    drops = np.empty(n_boot)
    for start in range(0, n_boot, block):
        k = min(block, n_boot - start)
        drops[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.percentile(drops, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return DropCI(
        float(d.mean()), float(lo), float(hi), confidence, n, f"paired bootstrap, {n_boot} resamples, seed {seed}"
    )


def judge(ci: DropCI, limit: float) -> Outcome:
    """pass: the whole interval is within the limit; fail: all of it beyond; else inconclusive."""
    if ci.high <= limit + 1e-12:
        return "pass"
    if ci.low > limit + 1e-12:
        return "fail"
    return "inconclusive"


def samples_to_decide(ci: DropCI, limit: float) -> int | None:
    """About how many samples would shrink the interval (as ~1/sqrt(n)) clear of the limit, at
    the same observed drop; None when the drop sits on the limit (no sample size decides it)."""
    gap = abs(ci.drop - limit)
    half = max(ci.high - ci.drop, ci.drop - ci.low)
    if gap < 1e-12 or half <= 0:
        return None
    return max(ci.n + 1, math.ceil(ci.n * (half / gap) ** 2))
