"""Reload stage: load the artifact in a fresh process (:mod:`deploycheck.worker`), measure its
latency side by side with the baseline's, run the evaluation batches, and score the outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..cache import result_key
from ..errors import StageError
from ..formats import FORMATS
from ..models import search_dirs
from ..outputs import align, as_named
from ..protocol import GeneratePlan, LatencyPlan, WorkerResult, load_request
from .save import VariantUnsupported


@dataclass
class Reload:
    result: WorkerResult
    outputs: Any
    metric: float | None
    seconds: float
    extra_outputs: Any = None  # outputs on the semantic triplets' texts, when the spec has them
    key: str = ""  # the result's cache key (a failed timing verdict drops the entry)
    dynamic_outputs: Any = None  # per dynamic-size batch: its named outputs ({} where it failed)


def latency_plan(runner, t) -> LatencyPlan:
    lat = t.spec.latency
    base, limit = None, None
    if not t.is_baseline:
        try:
            base = runner.artifact(t.baseline()).ref()
        except (StageError, VariantUnsupported):
            base = None  # the latency check says the baseline has no artifact in this format
        th = t.variant.thresholds.latency
        limits = [x for x in (th.max_ratio, 1 / th.min_speedup if th.min_speedup else None) if x]
        limit = min(limits) if limits else None
    return LatencyPlan(
        example=runner.inputs_files(t.spec)["example"],
        warmup=lat.warmup,
        min_rounds=lat.min_rounds,
        max_time_s=lat.max_time_s,
        round_ms=lat.round_ms,
        confidence=lat.confidence,
        batch_sizes=tuple(lat.batch_sizes),
        baseline=base,
        ratio_limit=limit,
    )


def generate_plan(runner, t) -> GeneratePlan | None:
    """Causal LMs with ``generation``: the worker generates greedily from the prompts too."""
    g = t.spec.generation
    if g is None:
        return None
    import json

    with open(os.path.join(runner.tokenizer_dir(t.spec), "config.json"), encoding="utf-8") as fh:
        eos = json.load(fh).get("eos_token_id")  # a number from the spec's own model folder
    return GeneratePlan(
        prompts=runner.inputs_files(t.spec)["prompts"],
        new_tokens=g.new_tokens,
        eos_id=eos if isinstance(eos, int) else None,
        kv_cache=g.kv_cache,
        timing=generation_timing_plan(runner, t),
    )


def generation_timing_plan(runner, t) -> dict:
    """Prefill and decode timing in the worker: absolute for the baseline; side by side with the
    baseline artifact (and a control) when a variant's thresholds set a ratio, as latency is."""
    import dataclasses

    lat, th = t.spec.latency, t.variant.thresholds.generation
    plan: dict[str, Any] = {
        "warmup": lat.warmup,
        "min_rounds": lat.min_rounds,
        "max_time_s": lat.max_time_s,
        "round_ms": lat.round_ms,
        "confidence": lat.confidence,
        "prefill_limit": th.max_prefill_ratio,
        "decode_limit": th.max_decode_ratio,
        "baseline": None,
    }
    if not t.is_baseline and (th.max_prefill_ratio is not None or th.max_decode_ratio is not None):
        try:
            plan["baseline"] = dataclasses.asdict(runner.artifact(t.baseline()).ref())
        except (StageError, VariantUnsupported):
            pass  # the generation check says the baseline has no artifact in this format
    return plan


def reload(runner, t) -> Reload:
    art = runner.artifact(t)
    files = runner.inputs_files(t.spec)
    req = load_request(
        art.ref(),
        workdir=runner.variant_dir(t),
        stem=t.fmt,
        inputs=files["eval"],
        threads=t.spec.latency.threads,
        latency=latency_plan(runner, t),
        extra_inputs=files.get("semantic"),
        dynamic_inputs=files.get("dynamic"),
        memory_mb=t.spec.isolation.memory_mb,
        python_path=search_dirs(t.spec) if FORMATS.get(t.fmt)().needs_code(t.fspec.options) else (),
        generate=generate_plan(runner, t),
    )
    for stale in (req.result, req.outputs + ".extra.pt", req.outputs + ".dynamic.pt"):
        if os.path.exists(stale):
            os.unlink(stale)
    rkey = result_key(req.to_json(), runner.inputs_sha(t.spec))
    cached = runner.cache.get_result(rkey, req.outputs)
    if cached is not None:
        res = WorkerResult.from_json(cached)
        res.cached = True
        return _finish(runner, t, res, req.outputs, 0.0, rkey)
    out = runner.pool.run(req, timeout_s=t.spec.isolation.timeout_s)
    if out.result is None:
        raise StageError(
            "load",
            f"{out.death()} while loading and running {os.path.basename(art.path)}",
            detail=_tail("process output", out.log_tail),
            **t.ident(),
        )
    r = out.result
    if not r.ok:
        stage = "load" if r.stage == "load" else "run"
        msg = f"{r.kind}: {r.message.splitlines()[0] if r.message else ''}"
        detail = r.traceback or "\n".join(r.message.splitlines()[1:])
        raise StageError(stage, msg, detail=_tail("traceback", detail) if detail else "", **t.ident())
    runner.cache.put_result(rkey, r.to_json(), req.outputs)
    return _finish(runner, t, r, req.outputs, out.seconds, rkey)


def _finish(runner, t, r: WorkerResult, outputs_path: str, seconds: float, key: str) -> Reload:
    import torch

    outputs = as_named(torch.load(outputs_path, weights_only=True))
    ref = None
    if not t.made_elsewhere:
        ref = runner.built(t).outputs
    elif not t.is_baseline:
        ref = runner.built(t.baseline()).outputs  # a file made elsewhere is held to the baseline
    if ref is not None:
        # The format may not carry the output structure (ONNX names its graph outputs itself):
        # paired by position under the in-memory names, so the metric reads the same output.
        pairs, why = align(ref, outputs)
        if why is not None:
            raise StageError("run", f"the reloaded {t.fmt} artifact {why}", **t.ident())
        outputs = {n: g for n, _, g in pairs}
    value = runner.score(t, outputs, what="reloaded")
    extra = None
    if os.path.exists(outputs_path + ".extra.pt"):
        extra = as_named(torch.load(outputs_path + ".extra.pt", weights_only=True))
    dyn = None
    if os.path.exists(outputs_path + ".dynamic.pt"):
        dyn = torch.load(outputs_path + ".dynamic.pt", weights_only=True)
    return Reload(r, outputs, value, seconds, extra, key, dyn)


def _tail(title: str, text: str, n: int = 25) -> str:
    lines = text.rstrip().splitlines()
    if not lines:
        return ""
    return f"--- {title} (last {min(n, len(lines))} lines) ---\n" + "\n".join(lines[-n:])
