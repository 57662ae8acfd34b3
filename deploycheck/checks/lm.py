"""Checks for causal language models (``model.hf`` with ``task: causal-lm``).

Each reads what the reloaded artifact produced in the fresh worker process: its logits on the
held-out texts (perplexity, next-token agreement and KL vs the baseline) and its greedy
generations from the prompts (exact match vs the baseline and vs the in-memory variant, with
the first departing position in decoded text). The math is :mod:`deploycheck.lm`.
"""

from __future__ import annotations

import os

from .. import lm
from ..data.sources import read_lines
from ..errors import StageError
from ..outputs import pick
from ..target import Target
from .base import Gate, Verdict, check, given
from .quality import baseline_not_compared


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
    formula += f" ({n} tokens of {len(ids)} held-out texts, reloaded {t.fmt})"
    return Verdict(
        passed=ok,
        message="" if ok else formula,
        formula=formula,
        value=value,
        threshold=given(th, "max_relative_increase", "max_increase"),
        details={"perplexity": value, "baseline": ref, "tokens": n},
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
    ok, formula = lm.agreement_verdict(st, min_top1=th.min_top1, max_mean_kl=th.max_mean_kl)
    return Verdict(
        passed=ok,
        message="" if ok else formula,
        formula=formula,
        value=st["mean_kl"],
        threshold=given(th, "min_top1", "max_mean_kl"),
        details={k: st[k] for k in ("top1", "mean_kl", "max_kl", "positions")},
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
        msg = (
            f"greedy generation through the reloaded {t.fmt} artifact failed: {why}\n"
            f"  (the artifact ran the held-out texts, padded to one length, but not a sequence one token longer "
            f"per step: was the sequence length specialised at export? see formats' dynamic_seq)"
        )
        return Verdict(
            passed=False,
            message=msg,
            formula="generation failed",
            details={"error": why, "traceback": r.result.traceback[-1500:]},
        )
    gens = [list(x) for x in r.result.generations]
    dec = decoder(runner.tokenizer_dir(t.spec))
    gate = Gate()
    details: dict = {"generations": gens, "seconds": r.result.generation_s}
    refs = [("the baseline", t.baseline(), th.min_exact_match, "min_exact_match")]
    in_memory = (t, th.min_exact_match_in_memory, "min_exact_match_in_memory")
    if not t.made_elsewhere and not t.is_baseline:
        refs.append(("the in-memory variant", *in_memory))
    elif t.is_baseline:
        refs = [("the in-memory baseline", *in_memory)]
    for label, ref_t, need, name in refs:
        ref = runner.generations(ref_t)
        ok, msg, deps = lm.generation_verdict(
            gens, ref, min_exact_match=need, against=label, prompts=texts, decode=dec, show=g.show, name=name
        )
        gate.add(ok, msg)
        details[label] = {
            "exact_match": 1 - len(deps) / len(ref),
            "departures": [{"prompt": d.prompt, "position": d.position} for d in deps],
        }
    n_tok = sum(len(x) for x in gens)
    tail = (
        f" ({len(gens)} prompts × up to {g.new_tokens} new tokens, {n_tok} generated through the reloaded "
        f"{t.fmt} artifact)"
    )
    formula = "; ".join(m.splitlines()[0] for m in gate.failed or gate.passed) + tail
    message = "\n".join([formula] + [ln for m in gate.failed for ln in m.splitlines()[1:]]) if gate.failed else ""
    value = details.get("the baseline", details.get("the in-memory baseline", {})).get("exact_match")
    return Verdict(
        passed=gate.ok,
        message=message,
        formula=formula,
        value=value,
        threshold={"min_exact_match": th.min_exact_match, "min_exact_match_in_memory": th.min_exact_match_in_memory},
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
    ref = token_ids(texts, path=runner.tokenizer_dir(t.spec))
    got = token_ids(texts, path=shipped)
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
