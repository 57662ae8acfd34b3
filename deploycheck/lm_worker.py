"""Greedy generation in the fresh worker: through the artifact's KV-cache step when it has one
(:mod:`deploycheck.formats.lm_kv`), else by recomputing the whole sequence each step; the peak
memory of that generation; and prefill / decode time side by side with the baseline's.

Two phases, so the memory is measured before the other phases have filled the allocator:
:func:`start` right after the artifact loads (load the KV step, generate, read the peak), and
:func:`finish` after the evaluation batches (the full-recompute path, and the timing, which loads
the baseline's step twice: baseline and control, as the latency ratio does).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import timing
from .lm import greedy
from .protocol import ArtifactRef, GeneratePlan, WorkerResult, first_tensor
from .quiet import heavy, quiet

MEMORY_METHOD_KV = "VmHWM during generation - VmRSS before loading the KV-cache step (Linux /proc, peak reset)"
MEMORY_METHOD_FULL = "VmHWM during generation - VmRSS before it (the artifact already loaded; Linux /proc, peak reset)"


def _proc_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Generation:
    path: str = ""  # "kv-cache" or "full-recompute"
    steps: tuple[Callable, Callable] | None = None
    generations: list | None = None
    error: str | None = None
    traceback: str = ""
    seconds: float = 0.0
    memory: dict = field(default_factory=dict)
    kv_error: str | None = None


def full_steps(fn) -> tuple[Callable, Callable]:
    """``(prefill, decode)`` through the one-tensor artifact: the whole sequence each step, one
    token longer every time, so an artifact that specialised the sequence length fails here."""
    import torch

    def full(ids):
        x = torch.tensor([[ids, [1] * len(ids)]], dtype=torch.int64)
        with torch.inference_mode():
            logits = first_tensor(fn(x))
        if logits is None:
            raise TypeError("the artifact returned no tensor")
        if logits.ndim != 3 or logits.shape[1] != len(ids):
            raise ValueError(
                f"a causal LM returns (batch, seq_len, vocab) logits; for {len(ids)} tokens the artifact "
                f"returned shape {tuple(logits.shape)}"
            )
        return logits[0, -1].float(), ids

    return full, lambda tok, ids: full(ids + [tok])


def kv_steps(ref: ArtifactRef) -> tuple[Callable, Callable]:
    from .formats.lm_kv import cached_steps, load_step

    info = (ref.manifest or {}).get("kv_cache") or {}
    return cached_steps(load_step(ref.artifact, fmt=ref.format, info=info), info)


def _first_line(e: BaseException) -> str:
    first = f"{type(e).__name__}: {e}".strip().splitlines()
    return first[0][:500] if first else type(e).__name__


def _run(g: Generation, plan: GeneratePlan) -> None:
    import torch

    prefill, decode = g.steps  # type: ignore[misc]
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            g.generations = [
                greedy(prefill, decode, list(p), new_tokens=plan.new_tokens, eos_id=plan.eos_id)
                for p in torch.load(plan.prompts, weights_only=True)
            ]
    except Exception as e:  # noqa: BLE001 - reported by the generation check
        g.error, g.traceback = _first_line(e), "".join(traceback.format_exception(e))[-3000:]
    g.seconds = time.perf_counter() - t0


def start(plan: GeneratePlan, ref: ArtifactRef) -> Generation:
    """Right after the artifact loaded: the KV-cache path (load its step, generate, peak memory)."""
    info = (ref.manifest or {}).get("kv_cache")
    g = Generation()
    if not plan.kv_cache or not info:
        return g  # full recompute, in finish()
    g.path = "kv-cache"
    if "error" in info:
        g.kv_error = str(info["error"])[:500]
        g.error = g.kv_error
        return g
    before = _proc_kb("VmRSS")
    reset = _reset_peak()
    try:
        g.steps = kv_steps(ref)
    except Exception as e:  # noqa: BLE001 - reported by the generation check
        g.error, g.traceback = (
            f"the KV-cache step failed to load: {_first_line(e)}",
            "".join(traceback.format_exception(e))[-3000:],
        )
        return g
    _run(g, plan)
    peak = _proc_kb("VmHWM")
    if reset and before is not None and peak is not None:
        g.memory = {"peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024, "method": MEMORY_METHOD_KV}
    return g


def finish(g: Generation, plan: GeneratePlan, fn, res: WorkerResult, *, load: Callable) -> None:
    """After the evaluation batches: the full-recompute path if that is the one, then the timing;
    everything lands in ``res`` (a failure is the generation check's, never the worker's)."""
    if not g.path:
        g.path = "full-recompute"
        g.steps = full_steps(fn)
        before = _proc_kb("VmRSS")
        reset = _reset_peak()
        with heavy():
            _run(g, plan)
        peak = _proc_kb("VmHWM")
        if reset and before is not None and peak is not None:
            g.memory = {"peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024, "method": MEMORY_METHOD_FULL}
    res.generations, res.generation_s, res.generation_path = g.generations, g.seconds, g.path
    res.generation_memory = g.memory or None
    if g.error:
        res.generation_error = g.error
        res.traceback = g.traceback
        return
    if plan.timing and g.generations is not None:
        try:
            with quiet():  # alone among the session's xdist workers (see deploycheck.quiet)
                res.generation_timing = measure(g, plan, fn, load=load)
        except Exception as e:  # noqa: BLE001 - reported by the generation check
            res.generation_timing = {"error": _first_line(e)}


def _prepared(steps: tuple[Callable, Callable], prompt: list[int]) -> tuple[Callable, Callable]:
    """Zero-argument calls: the prefill of ``prompt``, and one decode step from its cache (each
    call does the same work: the cache is updated out of place)."""
    prefill, decode = steps
    logits, state = prefill(prompt)
    tok = int(logits.reshape(-1).argmax())
    return (lambda: prefill(prompt)), (lambda: decode(tok, state))


def measure(g: Generation, plan: GeneratePlan, fn, *, load: Callable) -> dict:
    """Prefill time (the longest prompt) and one decode step's time; with a baseline, each side by
    side with the baseline's and a control (the baseline loaded again), as the latency ratio is."""
    import torch

    tp = plan.timing or {}
    prompts = [list(p) for p in torch.load(plan.prompts, weights_only=True)]
    prompt = max(prompts, key=len)
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "path": g.path}
    base_steps: list[tuple[Callable, Callable]] = []
    base = tp.get("baseline")
    if base:
        bref = ArtifactRef(**base)
        for _ in range(2):  # the baseline, then an independently loaded control
            try:
                if g.path == "kv-cache":  # its own file, sha256 checked: the one-tensor artifact is not needed
                    base_steps.append(kv_steps(bref))
                    continue
                bfn, diag = load(bref)
                if diag:
                    out["ratio_error"] = (
                        f"baseline artifact failed to load: {diag.kind}: {diag.message.splitlines()[0]}"
                    )
                    break
                base_steps.append(full_steps(bfn))
            except Exception as e:  # noqa: BLE001 - the check says why no ratio
                out["ratio_error"] = f"the baseline's {g.path} generation failed to load: {_first_line(e)}"
                break
    with torch.inference_mode():
        mine = _prepared(g.steps, prompt)  # type: ignore[arg-type]
        theirs = [_prepared(s, prompt) for s in base_steps]
        for i, (name, limit) in enumerate((("prefill", tp.get("prefill_limit")), ("decode", tp.get("decode_limit")))):
            warmup, rounds = int(tp.get("warmup", 3)), int(tp.get("min_rounds", 5))
            round_s = float(tp.get("round_ms", 2.0)) / 1e3
            if theirs:
                r = timing.side_by_side(
                    mine[i],
                    theirs[0][i],
                    theirs[1][i] if len(theirs) > 1 else None,
                    limit=limit,
                    warmup=warmup,
                    min_rounds=rounds,
                    max_time_s=float(tp.get("max_time_s", 1.0)),
                    round_s=round_s,
                    confidence=float(tp.get("confidence", 0.95)),
                )
                st = r["variant"]
                out[name] = {"p50_ms": st["p50_ms"], "ratio": {k: v for k, v in r.items() if k not in ("variant",)}}
            else:
                st, _ = timing.measure(mine[i], warmup=warmup, rounds=rounds, round_s=round_s)
                out[name] = {"p50_ms": st["p50_ms"]}
    out["prefill"]["tokens_per_s"] = (
        len(prompt) / (out["prefill"]["p50_ms"] / 1e3) if out["prefill"]["p50_ms"] else None
    )
    out["decode"]["tokens_per_s"] = 1e3 / out["decode"]["p50_ms"] if out["decode"]["p50_ms"] else None
    return out
