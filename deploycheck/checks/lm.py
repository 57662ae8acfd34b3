"""Checks for causal language models (``model.hf`` with ``task: causal-lm``).

Each reads what the reloaded artifact produced in the fresh worker process: its logits on the
held-out texts (perplexity, next-token agreement and KL vs the baseline) and its greedy
generations from the prompts (exact match vs the baseline and vs the in-memory variant, with
the first departing position in decoded text). The math is :mod:`deploycheck.lm`.
"""

from __future__ import annotations

import math
import os

from .. import lm
from ..data.sources import read_lines
from ..errors import StageError
from ..numeric import fmt_num
from ..outputs import pick
from ..target import Target
from .base import Gate, Verdict, check, given, unset_words
from .performance import ratio_formula
from .quality import baseline_not_compared, where_it_departs


def is_causal_lm(t: Target) -> bool:
    hf = t.spec.model.hf
    return hf is not None and hf.task == "causal-lm"


def _ids_mask(runner, spec):
    import torch

    x = torch.cat(runner.batches(spec))
    if x.ndim != 3 or x.shape[1] != 2:
        raise StageError(
            "check",
            f"a causal LM's evaluation inputs are (N, 2, seq_len) token ids and attention mask "
            f"(the tokenize step); got shape {tuple(x.shape)}",
            spec=spec.name,
            where=spec.where("data"),
        )
    return x[:, 0], x[:, 1]


def _logits(runner, t: Target):
    """(reloaded logits, baseline's in-memory logits), shapes checked."""
    r = runner.reload(t)
    name = t.spec.metric.output  # the logits: the output the metric reads (the first by default)
    out, base = pick(r.outputs, name), pick(runner.built(t.baseline()).outputs, name)
    if out.ndim != 3:
        raise StageError(
            "check",
            f"a causal LM returns (batch, seq_len, vocab) logits; the reloaded {t.fmt} artifact "
            f"returned shape {tuple(out.shape)}",
            **t.ident(),
        )
    return out, base


@check("perplexity", applies=is_causal_lm)
def perplexity_check(runner, t: Target) -> Verdict:
    runner.reload(t)  # a load error comes first
    skip = baseline_not_compared(runner, t)
    if skip is not None:
        return skip
    out, base = _logits(runner, t)
    ids, mask = _ids_mask(runner, t.spec)
    value, ref = lm.perplexity(out, ids, mask), lm.perplexity(base, ids, mask)
    th = t.variant.thresholds.perplexity
    ok, formula = lm.perplexity_verdict(
        value, ref, max_relative_increase=th.max_relative_increase, max_increase=th.max_increase
    )
    _, n = lm.token_nll(out, ids, mask)
    ratio = None
    if math.isfinite(value) and len(ids) > 1:
        ratio = lm.perplexity_ratio_ci(out, base, ids, mask)
        formula += f"; ratio {ratio[0]:.4f} [95% {ratio[1]:.4f}, {ratio[2]:.4f}, paired bootstrap over texts]"
    formula += f" ({n} tokens of {len(ids)} held-out texts, reloaded {t.fmt})"
    where, where_details = ("", {}) if ok else where_it_departs(runner, t, by="kl")
    return Verdict(
        passed=ok,
        message="" if ok else formula + where,
        formula=formula,
        value=value,
        threshold=given(th, "max_relative_increase", "max_increase"),
        details={
            "perplexity": value,
            "baseline": ref,
            "tokens": n,
            **({"ratio": ratio[0], "ratio_ci95": [ratio[1], ratio[2]]} if ratio else {}),
            **where_details,
        },
        outcome="decided" if given(th, "max_relative_increase", "max_increase") else "not_gated",
    )


@check("next_token", applies=is_causal_lm)
def next_token_check(runner, t: Target) -> Verdict:
    runner.reload(t)  # a load error comes first
    skip = baseline_not_compared(runner, t)
    if skip is not None:
        return skip
    out, base = _logits(runner, t)
    _, mask = _ids_mask(runner, t.spec)
    try:
        st = lm.next_token_stats(out, base, mask)
    except ValueError as e:
        return Verdict(passed=False, message=f"next-token distributions not compared: {e}", formula=str(e))
    th = t.variant.thresholds.next_token
    names = ("min_top1", *(name for _, name, _ in lm.KL_GATES))
    ok, formula = lm.agreement_verdict(st, **{n: getattr(th, n) for n in names})
    where, where_details = ("", {}) if ok else where_it_departs(runner, t, by="kl")
    return Verdict(
        passed=ok,
        message="" if ok else formula + where,
        formula=formula,
        value=st["mean_kl"],
        threshold=given(th, *names),
        details={
            **{
                k: st[k]
                for k in (
                    "top1",
                    "top1_ci95",
                    "mean_kl",
                    "median_kl",
                    "p99_kl",
                    "p999_kl",
                    "max_kl",
                    "positions",
                    "worst",
                )
            },
            **where_details,
        },
        outcome="decided" if given(th, *names) else "not_gated",
    )


@check("generation", applies=lambda t: is_causal_lm(t) and t.spec.generation is not None)
def generation_check(runner, t: Target) -> Verdict:
    from ..hf import decoder

    r = runner.reload(t)
    g, th = t.spec.generation, t.variant.thresholds.generation
    assert g is not None  # applies= collects this check only for specs with a generation section
    texts, _ = runner.prompts(t.spec)
    if r.result.generation_error or r.result.generations is None:
        why = r.result.generation_error or "the worker returned no generations"
        msg = f"greedy generation through the reloaded {t.fmt} artifact{_path_words(r.result)} failed: {why}"
        if not why.startswith("the KV-cache step failed to load"):  # a missing or changed file says so itself
            msg += (
                "\n  (the artifact ran the held-out texts, padded to one length, but not a sequence of another "
                "length: was the sequence length specialised at export? see formats' dynamic_seq)"
            )
        return Verdict(
            passed=False,
            message=msg,
            formula="generation failed",
            details={"error": why, "traceback": r.result.traceback[-1500:]},
        )
    gens = [list(x) for x in r.result.generations]
    gate = Gate()
    details: dict = {"generations": gens, "seconds": r.result.generation_s, "path": r.result.generation_path}
    refs = [("the baseline", t.baseline(), th.min_exact_match, "min_exact_match")]
    in_memory = (t, th.min_exact_match_in_memory, "min_exact_match_in_memory")
    if not t.made_elsewhere and not t.is_baseline:
        refs.append(("the in-memory variant", *in_memory))
    elif t.is_baseline:
        refs = [("the in-memory baseline", *in_memory)]
    against = [(label, runner.generations(ref_t), need, name) for label, ref_t, need, name in refs]
    notes: list[str] = []
    dec = _decoded(runner, t, gens, [ref for _, ref, _, _ in against], show=g.show, decode=decoder)
    for label, ref, need, name in against:
        keep = list(range(len(ref)))
        note = ""
        if label == "the in-memory variant" and 1 - len(lm.departures(gens, ref)) / max(1, len(ref)) < need:
            # Blame where it belongs: where the in-memory variant itself answers differently through
            # its KV cache and by recomputing the whole sequence (per-token activation scales), the
            # file cannot be held to either; those prompts are set aside, and said so.
            again = runner.generations(t, recompute=True)
            unstable = [i for i, (a, b) in enumerate(zip(ref, again, strict=True)) if list(a) != list(b)]
            if unstable:
                keep = [i for i in keep if i not in unstable]
                note = (
                    f"the in-memory variant itself generates differently through its KV cache and by "
                    f"recomputing the sequence on {len(unstable)} of {len(ref)} prompts "
                    f"({', '.join(map(str, unstable[:8]))}): its recipe makes the result depend on the path "
                    "(per-token activation scales), so those prompts are not held against the file"
                )
                details["in_memory_path_dependent_prompts"] = unstable
        if not keep:
            details[label] = {"exact_match": None, "note": note}
            notes.append(note + "; nothing is left to compare the file with its in-memory variant")
            continue
        ok, msg, deps = lm.generation_verdict(
            [gens[i] for i in keep],
            [ref[i] for i in keep],
            min_exact_match=need,
            against=label,
            prompts=texts,
            decode=dec,
            show=g.show,
            name=name,
            indices=keep,
        )
        if note:
            msg += f"\n  note: {note}"
        gate.add(ok, msg)
        details[label] = {
            "exact_match": 1 - len(deps) / len(keep),
            "departures": [{"prompt": d.prompt, "position": d.position} for d in deps],
        }
        if label == "the baseline" and th.min_prefix_match is not None:
            ok, msg, frac = lm.prefix_verdict(gens, ref, min_prefix_match=th.min_prefix_match)
            gate.add(ok, msg)
            details[label]["prefix_match"] = frac
    n_tok = sum(len(x) for x in gens)
    tail = (
        f" ({len(gens)} prompts × up to {g.new_tokens} new tokens, {n_tok} generated through the reloaded "
        f"{t.fmt} artifact{_path_words(r.result)})"
    )
    formula = "; ".join(m.splitlines()[0] for m in gate.failed or gate.passed) + tail
    message = "\n".join([formula] + [ln for m in gate.failed for ln in m.splitlines()[1:]]) if gate.failed else ""
    if notes:
        message += ("\n" if message else "") + "\n".join(f"  note: {n}" for n in notes)
    value = details.get("the baseline", details.get("the in-memory baseline", {})).get("exact_match")
    return Verdict(
        passed=gate.ok,
        message=message,
        formula=formula,
        value=value,
        threshold={
            "min_exact_match": th.min_exact_match,
            "min_exact_match_in_memory": th.min_exact_match_in_memory,
            **given(th, "min_prefix_match"),
        },
        details=details,
    )


@check("tokenizer", applies=lambda t: is_causal_lm(t) and not t.made_elsewhere)
def tokenizer_check(runner, t: Target) -> Verdict:
    """The tokenizer files shipped next to the artifact are the ones hashed into its manifest and
    give the same ids as the spec's tokenizer on every held-out text and prompt."""
    from ..hf import token_ids, tokenizer_files

    art = runner.artifact(t)
    shipped = os.path.join(os.path.dirname(art.path), "tokenizer")
    want = art.manifest.get("tokenizer") or {}
    if not want:
        return Verdict(
            passed=False, message=f"the {t.fmt} artifact's manifest holds no tokenizer hashes", formula="no hashes"
        )
    try:
        have = tokenizer_files(shipped)
    except FileNotFoundError as e:
        return Verdict(passed=False, message=f"no tokenizer shipped next to the artifact: {e}", formula="no tokenizer")
    changed = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
    if changed:
        msg = f"the tokenizer next to the artifact differs from the one hashed into its manifest: {', '.join(changed)}"
        return Verdict(passed=False, message=msg, formula=msg, value=len(changed), details={"changed": changed})
    texts = list(runner.prompts(t.spec)[0]) if t.spec.generation is not None else []
    scheme, _, rest = t.spec.data.source.partition(":")
    if scheme == "text":
        texts += read_lines(os.path.join(os.path.dirname(os.path.abspath(t.spec.path)), rest))
    if not texts:
        return Verdict(
            passed=False,
            message="no texts to tokenize: give a text: data source or generation prompts",
            formula="nothing compared",
        )
    # both tokenizations kept by the cache: the spec's under its model files (in the baseline's
    # build key), the shipped one under the hashes of every file in the shipped folder
    ref = runner.spec_value(t.spec, "token-ids", texts, lambda: token_ids(texts, path=runner.tokenizer_dir(t.spec)))
    every = {n: _sha(os.path.join(shipped, n)) for n in sorted(os.listdir(shipped))}  # all it may read
    got = runner.spec_value(t.spec, "shipped-token-ids", [texts, every], lambda: token_ids(texts, path=shipped))
    bad = [i for i, (a, b) in enumerate(zip(got, ref, strict=True)) if a != b]
    formula = (
        f"{len(texts) - len(bad)} of {len(texts)} texts tokenize to the same ids with the tokenizer shipped "
        f"next to the artifact ({len(have)} files, sha256 as in the manifest)"
    )
    if bad:
        i = bad[0]
        msg = formula + f"\n  text {i} {texts[i]!r}: shipped {got[i][:20]}, spec's {ref[i][:20]}"
        return Verdict(passed=False, message=msg, formula=formula, value=len(bad), details={"differing": bad})
    return Verdict(passed=True, formula=formula, value=0, details={"files": have, "texts": len(texts)})


def _decoded(runner, t: Target, gens, refs, *, show: int, decode):
    """The decoder the verdicts' departure lines use: every text they show decoded at once and kept
    by the cache (under the tokenizer's files, in the baseline's build key), so a rerun with the
    same departures loads no tokenizer."""
    wanted: list[list[int]] = []
    for ref in refs:
        for d in lm.departures(gens, ref)[:show]:
            wanted += [list(d.common), list(d.got), list(d.want)]
    if not wanted:
        return None

    def compute() -> list[str]:
        return list(map(decode(runner.tokenizer_dir(t.spec)), wanted))

    texts = runner.spec_value(t.spec, "decoded", wanted, compute)
    if not (isinstance(texts, list) and len(texts) == len(wanted) and all(isinstance(x, str) for x in texts)):
        texts = compute()  # not what was kept: decoded again
    table = {tuple(ids): text for ids, text in zip(wanted, texts, strict=True)}
    return lambda ids: table[tuple(ids)]


def _sha(path: str) -> str | None:
    import hashlib

    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _path_words(res) -> str:
    """How the worker generated: `` with its KV cache`` or `` by full recompute``."""
    if res.generation_path == "kv-cache":
        return "'s KV-cache step (static cache, prefill then one token per step)"
    if res.generation_path == "full-recompute":
        return " by full recompute (no KV cache: the whole sequence each step)"
    return ""


def _generation_applies(t: Target) -> bool:
    return is_causal_lm(t) and t.spec.generation is not None


def _unset(t: Target, *, memory: bool = False) -> str:
    """What would gate a generation measurement that nothing gates."""
    if memory:
        if t.is_baseline:
            return unset_words(
                "the baseline is the reference of max_peak_memory_ratio; thresholds.generation", "max_peak_memory_mb"
            )
        return unset_words("thresholds.generation", "max_peak_memory_mb", "max_peak_memory_ratio")
    if t.is_baseline:
        return "the baseline is the reference of max_prefill_ratio and max_decode_ratio: nothing to gate"
    return unset_words("thresholds.generation", "max_prefill_ratio", "max_decode_ratio")


def _not_measured(t: Target, r, wanted: dict) -> Verdict:
    why = r.result.generation_error or (r.result.generation_timing or {}).get("error") or "nothing measured"
    msg = f"not measured: the generation through the reloaded {t.fmt} artifact failed: {why}"
    if not wanted:  # nothing gated: not a pass, and the failure is said
        return Verdict(passed=True, formula=msg + "; " + _unset(t), details={"error": why}, outcome="not_gated")
    return Verdict(passed=False, message=msg, formula=msg, threshold=wanted, details={"error": why})


@check("generation_speed", applies=_generation_applies)
def generation_speed_check(runner, t: Target) -> Verdict:
    """Time to first token (prefill) and decode tokens/s of the reloaded artifact; for a variant,
    each as a ratio to the baseline artifact's, measured side by side in the fresh worker with a
    control (:func:`deploycheck.timing.side_by_side`: a busy machine is inconclusive, never a
    false fail)."""
    from types import SimpleNamespace

    r = runner.reload(t)
    th = t.variant.thresholds.generation
    wanted = {k: getattr(th, k) for k in ("max_prefill_ratio", "max_decode_ratio") if getattr(th, k) is not None}
    if t.is_baseline:
        wanted = {}
    tm = r.result.generation_timing or {}
    if r.result.generation_error or "error" in tm or not tm:
        return _not_measured(t, r, wanted)
    pre, dec = tm["prefill"], tm["decode"]
    head = (
        f"prefill {fmt_num(pre['p50_ms'])} ms ({tm['prompt_tokens']} tokens), decode "
        f"{fmt_num(dec['tokens_per_s'])} tokens/s through the reloaded {t.fmt} artifact{_path_words(r.result)}"
    )
    parts: list[str] = []
    failed: list[str] = []
    inconclusive = False
    details: dict = {
        "prefill_ms": pre["p50_ms"],
        "decode_ms": dec["p50_ms"],
        "decode_tokens_per_s": dec["tokens_per_s"],
        "prompt_tokens": tm["prompt_tokens"],
        "path": r.result.generation_path,
    }
    for phase, key, m in (("prefill", "max_prefill_ratio", pre), ("decode", "max_decode_ratio", dec)):
        if key not in wanted:
            continue
        ratio = m.get("ratio")
        if not ratio:
            failed.append(
                f"no side-by-side {phase} measurement vs the baseline: "
                f"{tm.get('ratio_error') or f'the baseline has no {t.fmt} artifact'}"
            )
            continue
        details[f"{phase}_ratio"] = ratio["ratio"]
        details[f"{phase}_ratio_ci"] = [ratio["ci_low"], ratio["ci_high"]]
        details[f"{phase}_decision"] = ratio["decision"]
        text = ratio_formula(ratio, SimpleNamespace(max_ratio=wanted[key], min_speedup=None))
        text = text.replace("latency ratio", f"{phase} time ratio").replace("max_ratio", key)
        if ratio["decision"] == "inconclusive-busy":
            inconclusive = True
        (failed if ratio["decision"].startswith("fail") else parts).append(text)
    formula = "; ".join([head] + (failed or parts or [_unset(t)]))
    message = ""
    if failed:
        message = "; ".join(failed) + f"\n  ({head})"
    return Verdict(
        passed=not failed,
        message=message,
        formula=formula,
        value=dec["tokens_per_s"],
        threshold=wanted or None,
        details=details,
        outcome="inconclusive" if inconclusive and not failed else "decided" if wanted else "not_gated",
        remeasure=bool(failed or inconclusive),  # measured afresh next run
    )


@check("generation_memory", applies=_generation_applies)
def generation_memory_check(runner, t: Target) -> Verdict:
    """Peak memory of the generation in the fresh worker (the resident memory its KV-cache step
    and the generation add to the process: Linux VmHWM, reset before it), against
    ``max_peak_memory_mb`` and, for a variant, the baseline artifact's (``max_peak_memory_ratio``)."""
    r = runner.reload(t)
    th = t.variant.thresholds.generation
    wanted = {k: getattr(th, k) for k in ("max_peak_memory_ratio", "max_peak_memory_mb") if getattr(th, k) is not None}
    if t.is_baseline:
        wanted.pop("max_peak_memory_ratio", None)
    mem = r.result.generation_memory or {}
    if r.result.generation_error or not mem:
        if not r.result.generation_error and not mem:
            why = "peak memory is not readable on this system (needs Linux /proc/self/clear_refs)"
            if wanted:
                return Verdict(passed=False, message=why, formula=why, threshold=wanted)
            return Verdict(passed=True, formula=why + "; " + _unset(t, memory=True), outcome="not_gated")
        return _not_measured(t, r, wanted)
    peak = mem["peak_mb"]
    head = f"peak memory of the generation {fmt_num(peak)} MB ({mem['method']})"
    parts: list[str] = []
    failed: list[str] = []
    details: dict = dict(mem)
    if "max_peak_memory_mb" in wanted:
        lim = wanted["max_peak_memory_mb"]
        ok = peak <= lim
        (parts if ok else failed).append(f"{fmt_num(peak)} MB {'<=' if ok else '>'} max_peak_memory_mb {fmt_num(lim)}")
    if "max_peak_memory_ratio" in wanted:
        base = runner.reload(t.baseline()).result
        bmem = base.generation_memory or {}
        if not bmem or base.generation_error:
            failed.append(f"no baseline peak memory to compare with: {base.generation_error or 'not measured'}")
        else:
            lim = wanted["max_peak_memory_ratio"]
            ratio = peak / bmem["peak_mb"] if bmem["peak_mb"] > 0 else float("inf")
            details.update(baseline_peak_mb=bmem["peak_mb"], ratio=ratio)
            ok = ratio <= lim
            (parts if ok else failed).append(
                f"peak memory ratio {fmt_num(peak)} MB / baseline {fmt_num(bmem['peak_mb'])} MB = {ratio:.3f} "
                f"{'<=' if ok else '>'} max_peak_memory_ratio {fmt_num(lim)}"
            )
    formula = "; ".join([head] + (failed or parts or [_unset(t, memory=True)]))
    return Verdict(
        passed=not failed,
        message="; ".join(failed) + f"\n  ({head})" if failed else "",
        formula=formula,
        value=peak,
        threshold=wanted or None,
        details=details,
        outcome="decided" if wanted else "not_gated",
    )
