"""Causal language models: the numbers the LM checks decide on, as pure functions.

Perplexity on held-out text, next-token agreement and KL divergence against a baseline's
distributions, greedy generation with a KV cache through any backend (two callables: prefill
and decode), exact-match rate and the first position where a generation departs. Each verdict
function returns ``(ok, formula)`` with every number that decided it, e.g.
``perplexity 4.12 > baseline 3.90 × (1 + max_relative_increase 0.05) = 4.10``.

Conventions: ``logits`` are (batch, seq, vocab); ``ids`` and ``mask`` are (batch, seq) with
right padding (mask 1 on real tokens). Position ``t``'s logits predict token ``t + 1``; a
position counts where both the token and its successor are real.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .numeric import fmt_num


def _scored(mask):
    """(batch, seq-1) bool: positions whose next token is real text."""
    m = mask.bool()
    return m[:, :-1] & m[:, 1:]


def token_nll(logits, ids, mask) -> tuple[float, int]:
    """Summed negative log-likelihood (nats, float64) of each real next token, and their count."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].long().unsqueeze(-1)).squeeze(-1)
    keep = _scored(mask)
    return float(nll[keep].sum()), int(keep.sum())


def text_nll(logits, ids, mask):
    """Per text: the summed NLL (nats, float64) of its real next tokens and their count, as numpy."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].long().unsqueeze(-1)).squeeze(-1)
    keep = _scored(mask)
    return torch.where(keep, nll, torch.zeros_like(nll)).sum(1).numpy(), keep.sum(1).double().numpy()


def perplexity_ratio_ci(
    logits, base_logits, ids, mask, *, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """The perplexity ratio variant / baseline and its paired bootstrap interval over the texts
    (both resampled together): exp of the difference of mean NLLs per token. Each text's NLL is
    computed once; the resamples add numbers, never logits."""
    import numpy as np

    nv, count = text_nll(logits, ids, mask)
    nb, _ = text_nll(base_logits, ids, mask)
    d = nv - nb
    if count.sum() == 0:
        raise ValueError("no position to score: every text is a single token (or fully masked)")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, 100):
        k = min(100, n_boot - start)
        idx = rng.integers(0, len(d), size=(k, len(d)))
        ratios[start : start + k] = np.exp(d[idx].sum(1) / np.maximum(count[idx].sum(1), 1))
    lo, hi = np.percentile(ratios, [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
    return float(np.exp(d.sum() / count.sum())), float(lo), float(hi)


def perplexity(logits, ids, mask) -> float:
    """exp(mean NLL per predicted token); ``inf`` when the logits are not finite."""
    import math

    total, n = token_nll(logits, ids, mask)
    if n == 0:
        raise ValueError("no position to score: every text is a single token (or fully masked)")
    mean = total / n
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf


def next_token_stats(logits, base_logits, mask) -> dict[str, Any]:
    """Top-1 agreement and KL(baseline || variant) of the next-token distributions, over the
    scored positions: ``{"top1": fraction, "mean_kl": nats, "max_kl": nats, "positions": n,
    "worst": (sample, position)}``."""
    import torch

    if tuple(logits.shape) != tuple(base_logits.shape):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} cannot be compared with the baseline's {tuple(base_logits.shape)}"
        )
    keep = _scored(mask)
    a = torch.log_softmax(logits[:, :-1].double(), dim=-1)[keep]
    b = torch.log_softmax(base_logits[:, :-1].double(), dim=-1)[keep]
    n = int(keep.sum())
    if n == 0:
        raise ValueError("no position to score: every text is a single token (or fully masked)")
    same = int((a.argmax(-1) == b.argmax(-1)).sum())
    # KL(p_base || p_var) = sum p_base (log p_base - log p_var); 0 * log 0 counts as 0
    pb = b.exp()
    kl = torch.where(pb > 0, pb * (b - a), torch.zeros_like(pb)).sum(-1).clamp_min(0)
    worst_flat = int(kl.argmax()) if n else 0
    where = keep.nonzero()[worst_flat].tolist() if n else [0, 0]
    q = torch.quantile(kl, torch.tensor([0.5, 0.99, 0.999], dtype=kl.dtype)).tolist()
    return {
        "top1": same / n,
        "top1_ci95": wilson(same, n),
        "mean_kl": float(kl.mean()),
        "median_kl": q[0],
        "p99_kl": q[1],
        "p999_kl": q[2],
        "max_kl": float(kl.max()),
        "positions": n,
        "worst": (int(where[0]), int(where[1])),
    }


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k``/``n`` (95% by default): unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or n agreements."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def greedy(
    prefill: Callable[[Sequence[int]], tuple[Any, Any]],
    decode: Callable[[int, Any], tuple[Any, Any]],
    prompt: Sequence[int],
    *,
    new_tokens: int,
    eos_id: int | None = None,
) -> list[int]:
    """Greedy decoding through a KV cache: ``prefill(prompt_ids) -> (last logits, state)`` once,
    then ``decode(token, state) -> (logits, state)`` per new token. Stops early on ``eos_id``.
    Ties break to the lowest id (argmax), the same on every backend."""
    logits, state = prefill(list(prompt))
    out: list[int] = []
    for i in range(new_tokens):
        tok = int(logits.reshape(-1).argmax())
        out.append(tok)
        if tok == eos_id or i == new_tokens - 1:
            break
        logits, state = decode(tok, state)
    return out


def first_departure(gen: Sequence[int], ref: Sequence[int]) -> int | None:
    """The first position where two generations differ (a shorter one departs where it ends), or None."""
    for i, (a, b) in enumerate(zip(gen, ref, strict=False)):
        if a != b:
            return i
    return None if len(gen) == len(ref) else min(len(gen), len(ref))


@dataclass(frozen=True)
class Departure:
    prompt: int  # index of the prompt
    position: int  # first differing new token (0 = the first generated token)
    common: list[int]  # the tokens both produced before it
    got: list[int]  # the rest of the generation from there
    want: list[int]  # the reference's rest from there


def departures(gens: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> list[Departure]:
    if len(gens) != len(refs):
        raise ValueError(f"{len(gens)} generations cannot be compared with {len(refs)} reference generations")
    out = []
    for i, (g, r) in enumerate(zip(gens, refs, strict=True)):
        pos = first_departure(g, r)
        if pos is not None:
            out.append(Departure(i, pos, list(g[:pos]), list(g[pos:]), list(r[pos:])))
    return out


def exact_match_rate(gens: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> float:
    """Fraction of prompts whose generation equals the reference token for token."""
    if not refs:
        raise ValueError("no prompts to generate from")
    return 1 - len(departures(gens, refs)) / len(refs)


def prefix_match(gens: Sequence[Sequence[int]], refs: Sequence[Sequence[int]]) -> float:
    """Mean over prompts of the fraction of the reference generation reproduced before the first
    departure (1.0: every generation equal; 0.5: on average the first half of the tokens match)."""
    if not refs:
        raise ValueError("no prompts to generate from")
    if len(gens) != len(refs):
        raise ValueError(f"{len(gens)} generations cannot be compared with {len(refs)} reference generations")
    total = 0.0
    for g, r in zip(gens, refs, strict=True):
        pos = first_departure(g, r)
        total += 1.0 if pos is None or not r else min(pos, len(r)) / len(r)
    return total / len(refs)


# --- verdicts: (ok, formula) ---------------------------------------------------------------------


def _cmp(ok: bool, low_is_good: bool) -> str:
    return ("<=" if ok else ">") if low_is_good else (">=" if ok else "<")


def perplexity_verdict(
    value: float, baseline: float, *, max_relative_increase: float | None = None, max_increase: float | None = None
) -> tuple[bool, str]:
    """``perplexity V <= baseline B × (1 + max_relative_increase r) = L``; with ``max_increase`` an
    absolute bound ``baseline B + max_increase d = L`` too. Every bound set must hold."""
    import math

    parts: list[str] = []
    failed: list[str] = []
    if not math.isfinite(value):
        return False, f"perplexity {value} is not finite (baseline {fmt_num(baseline)})"
    if max_relative_increase is not None:
        bound = baseline * (1 + max_relative_increase)
        ok = value <= bound * (1 + 1e-12)
        (parts if ok else failed).append(
            f"perplexity {fmt_num(value)} {_cmp(ok, True)} baseline {fmt_num(baseline)} × (1 + max_relative_increase "
            f"{fmt_num(max_relative_increase)}) = {fmt_num(bound)}"
        )
    if max_increase is not None:
        bound = baseline + max_increase
        ok = value <= bound + 1e-12
        (parts if ok else failed).append(
            f"perplexity {fmt_num(value)} {_cmp(ok, True)} baseline {fmt_num(baseline)} + max_increase "
            f"{fmt_num(max_increase)} = {fmt_num(bound)}"
        )
    if not parts and not failed:
        parts.append(f"perplexity {fmt_num(value)} (baseline {fmt_num(baseline)}; no threshold set)")
    return not failed, "; ".join(failed or parts)


#: the KL statistics a next_token threshold may bound: (stats key, threshold name, words)
KL_GATES = (
    ("mean_kl", "max_mean_kl", "mean"),
    ("median_kl", "max_median_kl", "median"),
    ("p99_kl", "max_p99_kl", "99th percentile"),
    ("p999_kl", "max_p999_kl", "99.9th percentile"),
    ("max_kl", "max_kl", "largest"),
)


def kl_spread(stats: dict[str, Any]) -> str:
    """``median 0.001, p99 0.02, p99.9 0.05, max 0.08 nats``: the tail of the per-position KL."""
    return (
        f"median {fmt_num(stats['median_kl'])}, p99 {fmt_num(stats['p99_kl'])}, "
        f"p99.9 {fmt_num(stats['p999_kl'])}, max {fmt_num(stats['max_kl'])} nats"
    )


def agreement_verdict(
    stats: dict[str, Any], *, min_top1: float | None = None, max_mean_kl: float | None = None, **kl_limits: float | None
) -> tuple[bool, str]:
    """``top-1 agreement A [95% lo, hi] >= min_top1 m`` and each KL bound given (``max_mean_kl``,
    ``max_median_kl``, ``max_p99_kl``, ``max_p999_kl``, ``max_kl``) over n positions; every
    line ends with the KL spread and the worst position."""
    unknown = set(kl_limits) - {name for _, name, _ in KL_GATES}
    if unknown:
        raise TypeError(f"unknown next-token thresholds {sorted(unknown)}")
    limits = {"max_mean_kl": max_mean_kl, **kl_limits}
    n = stats["positions"]
    lo, hi = stats["top1_ci95"]
    s, p = stats["worst"]
    tail = f"({n} positions; KL {kl_spread(stats)}, worst at text {s} position {p})"
    parts: list[str] = []
    failed: list[str] = []
    if min_top1 is not None:
        ok = stats["top1"] >= min_top1 - 1e-12
        (parts if ok else failed).append(
            f"next-token top-1 agreement {stats['top1']:.4f} [95% {lo:.4f}, {hi:.4f}] {_cmp(ok, False)} "
            f"min_top1 {fmt_num(min_top1)}"
        )
    for key, name, words in KL_GATES:
        limit = limits.get(name)
        if limit is None:
            continue
        ok = stats[key] <= limit + 1e-15
        (parts if ok else failed).append(
            f"{words} KL(baseline || variant) {fmt_num(stats[key])} nats {_cmp(ok, True)} {name} {fmt_num(limit)}"
        )
    if not parts and not failed:
        parts.append(
            f"next-token top-1 agreement {stats['top1']:.4f} [95% {lo:.4f}, {hi:.4f}], mean KL "
            f"{fmt_num(stats['mean_kl'])} nats; no threshold set"
        )
    return not failed, "; ".join(failed or parts) + " " + tail


def generation_verdict(
    gens: Sequence[Sequence[int]],
    refs: Sequence[Sequence[int]],
    *,
    min_exact_match: float,
    against: str,
    prompts: Sequence[str] = (),
    decode: Callable[[list[int]], str] | None = None,
    show: int = 3,
    name: str = "min_exact_match",
    indices: Sequence[int] | None = None,
) -> tuple[bool, str, list[Departure]]:
    """``exact match 14/16 = 0.875 >= min_exact_match 0.8 vs the baseline``; on failure (and on
    success with departures) each departing prompt's first differing position with decoded text.
    ``indices``: the prompts' numbers where ``gens`` and ``refs`` are a subset of them."""
    deps = departures(gens, refs)
    if indices is not None:
        deps = [dataclasses.replace(d, prompt=indices[d.prompt]) for d in deps]
    n = len(refs)
    rate = 1 - len(deps) / n if n else 1.0
    ok = rate >= min_exact_match - 1e-12
    formula = (
        f"greedy exact match {n - len(deps)}/{n} = {rate:.3f} {_cmp(ok, False)} {name} "
        f"{fmt_num(min_exact_match)} vs {against}"
    )
    if deps:
        d = deps[0]
        formula += f"; first departure: prompt {d.prompt} at new token {d.position}"
    lines = [formula]
    dec = decode or (lambda ids: " ".join(map(str, ids)))
    for d in deps[:show]:
        head = repr(prompts[d.prompt]) if d.prompt < len(prompts) else f"prompt {d.prompt}"
        lines.append(
            f"  prompt {d.prompt} {head}: departs at new token {d.position} after {dec(d.common)!r}: "
            f"got {dec(d.got)!r}, {against} {dec(d.want)!r}"
        )
    if len(deps) > show:
        lines.append(f"  … and {len(deps) - show} more departing prompts")
    return ok, "\n".join(lines), deps


def hf_steps(model) -> tuple[Callable, Callable]:
    """``(prefill, decode)`` for :func:`greedy` over an in-memory ``transformers`` causal LM, its
    own KV cache (a ``DynamicCache``) carried as the state."""
    import torch

    def prefill(ids: Sequence[int]):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([list(ids)]), use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    def decode(tok: int, cache):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float(), out.past_key_values

    return prefill, decode


def recompute_steps(model) -> tuple[Callable, Callable]:
    """``(prefill, decode)`` for :func:`greedy` without a cache: every step runs the whole sequence
    again (the state is the token ids so far). A model whose generations depend on the path (per-token
    activation scales, a cache bug) answers differently here than through its own KV cache."""
    import torch

    def run(ids: Sequence[int]):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([list(ids)]), use_cache=False)
        return out.logits[0, -1].float()

    def prefill(ids: Sequence[int]):
        return run(ids), list(ids)

    def decode(tok: int, seq):
        seq = [*seq, tok]
        return run(seq), seq

    return prefill, decode


def prefix_verdict(
    gens: Sequence[Sequence[int]], refs: Sequence[Sequence[int]], *, min_prefix_match: float
) -> tuple[bool, str, float]:
    """``prefix match 0.62 >= min_prefix_match 0.5 vs the baseline (mean share of each baseline
    generation reproduced before the first departure)``: a gate for variants (int4) whose
    generations all depart somewhere, where exact match alone would have to be 0."""
    frac = prefix_match(gens, refs)
    ok = frac >= min_prefix_match - 1e-12
    return (
        ok,
        f"prefix match {frac:.3f} {_cmp(ok, False)} min_prefix_match {fmt_num(min_prefix_match)} vs the baseline "
        f"(mean share of each baseline generation reproduced before the first departure)",
        frac,
    )
