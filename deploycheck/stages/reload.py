"""Reload stage: load the artifact in a fresh process (:mod:`deploycheck.worker`), measure its
latency side by side with the baseline's, run the evaluation batches, and score the outputs."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

from ..cache import result_key
from ..cache.keys import content_sha
from ..errors import StageError
from ..formats import FORMATS
from ..formats.integrity import vet_manifest
from ..loading import search_dirs
from ..outputs import align, as_named
from ..protocol import ArtifactRef, GeneratePlan, LatencyPlan, WorkerResult, load_request
from .build import score
from .save import Artifact


@dataclass
class Reload:
    result: WorkerResult
    outputs: Any
    metric: float
    seconds: float
    extra_outputs: Any = None  # outputs on the semantic triplets' texts, when the spec has them
    key: str = ""  # the result's cache key (a failed timing verdict drops the entry)
    dynamic_outputs: Any = None  # per dynamic-size batch: its named outputs ({} where it failed)


def latency_plan(t, *, example: str, baseline: ArtifactRef | None) -> LatencyPlan:
    """How the worker times ``t``'s artifact on the ``example`` input file, side by side with the
    ``baseline``'s artifact in the same format (None for the baseline itself, or where it has
    none: the latency check says so)."""
    lat = t.spec.latency
    limit = None
    if not t.is_baseline:
        th = t.variant.thresholds.latency
        limits = [x for x in (th.max_ratio, 1 / th.min_speedup if th.min_speedup else None) if x]
        limit = min(limits) if limits else None
    return LatencyPlan(
        example=example,
        warmup=lat.warmup,
        min_rounds=lat.min_rounds,
        max_time_s=lat.max_time_s,
        round_ms=lat.round_ms,
        confidence=lat.confidence,
        batch_sizes=tuple(lat.batch_sizes),
        baseline=baseline if not t.is_baseline else None,
        ratio_limit=limit,
    )


def generate_plan(
    t, *, prompts: str | None, tokenizer_dir: str | None, baseline: ArtifactRef | None = None
) -> GeneratePlan | None:
    """Causal LMs with ``generation``: the worker generates greedily from the ``prompts`` file too
    (token ids), stopping at the end-of-sequence id of the model folder ``tokenizer_dir``, and
    times prefill and decode (side by side with the ``baseline``'s artifact when a variant's
    thresholds set a ratio, as latency is)."""
    g = t.spec.generation
    if g is None or prompts is None or tokenizer_dir is None:
        return None
    import json

    with open(os.path.join(tokenizer_dir, "config.json"), encoding="utf-8") as fh:
        eos = json.load(fh).get("eos_token_id")  # a number from the spec's own model folder
    lat, th = t.spec.latency, t.variant.thresholds.generation
    wants_ratio = th.max_prefill_ratio is not None or th.max_decode_ratio is not None
    timing = {
        "warmup": lat.warmup,
        "min_rounds": lat.min_rounds,
        "max_time_s": lat.max_time_s,
        "round_ms": lat.round_ms,
        "confidence": lat.confidence,
        "prefill_limit": th.max_prefill_ratio,
        "decode_limit": th.max_decode_ratio,
        # None: the generation_speed check says the baseline has no artifact in this format
        "baseline": dataclasses.asdict(baseline)
        if baseline is not None and wants_ratio and not t.is_baseline
        else None,
    }
    return GeneratePlan(
        prompts=prompts,
        new_tokens=g.new_tokens,
        eos_id=eos if isinstance(eos, int) else None,
        kv_cache=g.kv_cache,
        timing=timing,
    )


@dataclass
class Ran:
    """A worker's result for one artifact, before its outputs are read and scored."""

    result: WorkerResult
    outputs_path: str
    seconds: float
    key: str


def run(
    t,
    art: Artifact,
    *,
    files: dict,
    workdir: str,
    latency: LatencyPlan,
    generate: GeneratePlan | None,
    inputs_sha: str,
    cache,
    pool,
) -> Ran:
    """``art`` loaded and run in a fresh process of ``pool`` on the input ``files`` (or its result
    from the cache, keyed by the request and ``inputs_sha``)."""
    req = load_request(
        art.ref(),
        workdir=workdir,
        stem=t.fmt,
        inputs=files["eval"],
        threads=t.spec.latency.threads,
        latency=latency,
        extra_inputs=files.get("semantic"),
        dynamic_inputs=files.get("dynamic"),
        memory_mb=t.spec.isolation.memory_mb,
        python_path=search_dirs(t.spec) if FORMATS.get(t.fmt)().needs_code(t.fspec.options) else (),
        generate=generate,
    )
    for stale in (req.result, req.outputs + ".extra.pt", req.outputs + ".dynamic.pt"):
        if os.path.exists(stale):
            os.unlink(stale)
    rkey = result_key(req, inputs_sha)
    # A file the worker would refuse is refused on every run, never served from the cache
    cached = None if refused(req.target) else cache.get_result(rkey, req.outputs)
    try:  # a cached result is data (caches come from anywhere): one that does not read is a miss
        res = WorkerResult.from_json(cached) if cached is not None else None
    except ValueError:
        res = None
    if res is not None:
        res.cached = True
        return Ran(res, req.outputs, 0.0, rkey)
    # The evaluation alone, kept apart from its timing: a re-measurement (a latency verdict that
    # was inconclusive or failed forgets the full result) times the artifact again, and only that.
    ekey = result_key(dataclasses.replace(req, latency=None), inputs_sha) if req.generate is None else ""
    evaluation = None
    if ekey and req.latency is not None and cached is None and not refused(req.target):
        try:
            got = cache.get_result(ekey, req.outputs, hit="evaluation")
            evaluation = WorkerResult.from_json(got) if got is not None else None
        except ValueError:
            evaluation = None
    if evaluation is not None:
        timed = _timing_only(t, art, req, pool)
        if timed is not None:
            evaluation.latency, evaluation.load_s = timed.result.latency, timed.result.load_s
            evaluation.pid, evaluation.threads = timed.result.pid, timed.result.threads
            cache.put_result(rkey, evaluation.to_json(), req.outputs)
            evaluation.retimed = True
            return Ran(evaluation, req.outputs, timed.seconds, rkey)
    try:
        out = pool.run(req, timeout_s=t.spec.isolation.timeout_s)
    except ValueError as e:
        raise StageError.at(
            t, "load", f"the worker's result for {os.path.basename(art.path)} could not be read: {e}"
        ) from None
    if out.result is None:
        raise StageError.at(
            t,
            "load",
            f"{out.death()} while loading and running {os.path.basename(art.path)}",
            detail=_tail("process output", out.log_tail),
        )
    r = out.result
    if not r.ok:
        stage = "load" if r.stage == "load" else "run"
        msg = f"{r.kind}: {r.message.splitlines()[0] if r.message else ''}"
        if "baked in a size" in msg and t.fmt == "torchscript" and _pt2e(t):
            msg += (
                "; here that is not your code: this variant's static int8 graph (pt2e) holds the sizes it was "
                "exported with (an RNN's state at the example's batch), and TorchScript traces that graph: ship "
                "this variant as export or onnx"
            )
        detail = r.traceback or "\n".join(r.message.splitlines()[1:])
        raise StageError.at(t, stage, msg, detail=_tail("traceback", detail) if detail else "")
    cache.put_result(rkey, r.to_json(), req.outputs)
    if ekey and req.latency is not None:
        cache.put_result(ekey, dataclasses.replace(r, latency=None).to_json(), req.outputs)
    return Ran(r, req.outputs, out.seconds, rkey)


def _timing_only(t, art: Artifact, req, pool):
    """The latency of ``art`` measured again in a fresh process, without its evaluation; None
    where that worker did not answer with a measurement (the whole request then runs as usual)."""
    timing = dataclasses.replace(req, timing_only=True, result=req.result + ".timing.json")
    try:
        out = pool.run(timing, timeout_s=t.spec.isolation.timeout_s)
    except ValueError:
        return None
    if out.result is None or not out.result.ok or out.result.latency is None:
        return None
    return out


def refused(ref: ArtifactRef) -> bool:
    """Whether the worker would refuse ``ref`` before loading it, decided here without loading:
    the artifact's bytes differ from its manifest's sha256, the manifest names code or modules
    (:func:`~deploycheck.formats.integrity.vet_manifest`), or the KV-cache step next to it is
    missing or differs from the manifest's sha256. Such a file goes to the worker, which says why."""
    from ..formats.lm_kv import kv_path

    man = ref.manifest or {}
    if man.get("sha256") is not None and content_sha(ref.artifact) != man["sha256"]:
        return True
    options = FORMATS.get(ref.format)().Options(**ref.options)
    if vet_manifest(man, ref.code, path=ref.artifact, uses_code=FORMATS.get(ref.format)().needs_code(options))[1]:
        return True
    kv = man.get("kv_cache")
    return isinstance(kv, dict) and bool(kv.get("file")) and content_sha(kv_path(ref.artifact)) != kv.get("sha256")


def finish(t, ran: Ran, *, reference, baseline, labels) -> Reload:
    """The worker's outputs read back, paired with the ``reference`` outputs they are held to
    (the in-memory variant's, or the baseline's for a file made elsewhere; None for a baseline
    made elsewhere), and scored against ``labels`` or the ``baseline``'s in-memory outputs (None
    for the baseline itself: its own outputs)."""
    import torch

    outputs_path = ran.outputs_path
    outputs = as_named(torch.load(outputs_path, weights_only=True))
    if reference is not None:
        # The format may not carry the output structure (ONNX names its graph outputs itself):
        # paired by position under the in-memory names, so the metric reads the same output.
        pairs, why = align(reference, outputs)
        if why is not None:
            raise StageError.at(t, "run", f"the reloaded {t.fmt} artifact {why}")
        outputs = {n: g for n, _, g in pairs}
    value = score(t, outputs, labels=labels, reference=outputs if baseline is None else baseline, what="reloaded")
    extra = None
    if os.path.exists(outputs_path + ".extra.pt"):
        extra = as_named(torch.load(outputs_path + ".extra.pt", weights_only=True))
    dyn = None
    if os.path.exists(outputs_path + ".dynamic.pt"):
        dyn = torch.load(outputs_path + ".dynamic.pt", weights_only=True)
    return Reload(ran.result, outputs, value, ran.seconds, extra, ran.key, dyn)


#: frames of the test runner itself, which a TorchScript error lists as the stack it was traced in
_RUNNER_FRAMES = re.compile(r"/site-packages/(_pytest|pluggy|xdist|execnet)/")


def _pt2e(t) -> bool:
    return any(getattr(step, "method", None) == "static_int8" for step in t.variant.steps)


def _tail(title: str, text: str, n: int = 25) -> str:
    lines = [ln for ln in text.rstrip().splitlines() if not _RUNNER_FRAMES.search(ln)]
    if not lines:
        return ""
    return f"--- {title} (last {min(n, len(lines))} lines) ---\n" + "\n".join(lines[-n:])
