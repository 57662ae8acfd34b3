"""Quality checks: does the reloaded artifact still compute what the model did? Loads and runs
(``load``), the same outputs as in memory (``outputs``, ``dynamic``), the metric within its
thresholds of the baseline's (``metric``), and for embedding models the cosine to the baseline
(``fidelity``) and the order of triplets (``semantic``)."""

from __future__ import annotations

import math
from typing import Any

from ..metrics import resolve, targets_for
from ..numeric import (
    compare_arrays,
    describe_nonfinite,
    fmt_num,
    nonfinite,
    output_tolerance,
    precision_span,
    render_mismatch,
)
from ..outputs import align, label, pick
from ..protocol import batch_len
from ..recipes.quantize import saturation_hint
from ..target import Target
from .base import Bound, Gate, Verdict, check, given, unset_words

# --- load ---------------------------------------------------------------------------------------


@check("load")
def load_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    cached = r.result.cached
    return Verdict(
        passed=True,
        formula="loaded and ran in a fresh process"
        + (
            " (cached result)" if cached else " (cached evaluation; latency measured again)" if r.result.retimed else ""
        ),
        value=round(r.result.load_s, 4),
        details={
            "load_s": r.result.load_s,
            "process_s": r.seconds,
            "cached": cached,
            "retimed": r.result.retimed,
            "peak_rss_mb": r.result.peak_rss_mb,
            # this session's own cost of the artifact: its build and export seconds (0 when the
            # cache held them), and the session's peak memory after them
            **runner.costs_of(t),
        },
    )


# --- finite -------------------------------------------------------------------------------------


def baseline_nonfinite(runner, t: Target) -> str | None:
    """Why comparisons with the baseline are meaningless (its outputs hold NaN/Inf), or None.

    The baseline's own ``outputs`` items fail with the details, once; a variant's comparisons
    with it are skipped with this pointer instead of failing as a delta."""
    if any(nonfinite(o) is not None for o in runner.built(t.baseline()).outputs.values()):
        return f"the baseline's in-memory outputs are not finite (see {t.spec.name}::baseline::*::outputs)"
    return None


def where_it_departs(runner, t: Target, *, against: str = "baseline", by: str = "error") -> tuple[str, dict]:
    """On a failing comparison: the message's continuation naming the first module where the
    variant (its reloaded artifact where the format exposes layers) departs from the baseline,
    or from the in-memory variant, with a short per-layer table, and the same as details.
    ``by="kl"``: a causal LM's blocks ranked by next-token KL (the LM checks)."""
    if t.is_baseline and against == "baseline":
        return "", {}
    res = runner.divergence(t, against=against, by=by)
    return "\n" + res.render(), {"divergence": res.as_dict()}


def baseline_not_compared(runner, t: Target) -> Verdict | None:
    """A comparison with a NaN baseline is no verdict: a skip pointing at the baseline's failure."""
    if t.is_baseline:
        return None
    why = baseline_nonfinite(runner, t)
    return Verdict.not_compared(f"not compared: {why}") if why else None


# --- outputs ------------------------------------------------------------------------------------


def finite_verdict(runner, t: Target) -> Verdict | None:
    """NaN or Inf in the in-memory or reloaded outputs: a failed ``outputs`` verdict saying where."""
    b = runner.built(t)
    r = runner.reload(t)
    whose = "the baseline's" if t.is_baseline else "the variant's"
    problems, details = [], {}
    sides = [("in-memory", b.outputs)] if not t.made_elsewhere else []
    for side, outs in sides + [(f"reloaded {t.fmt}", r.outputs)]:
        for name, out in outs.items():
            info = nonfinite(out)
            if info is not None:
                key = side + label(name, outs)
                details[key] = info
                what = f"{whose} {side} output {name!r}" if len(outs) > 1 else f"{whose} {side} outputs"
                problems.append(describe_nonfinite(info, whose=what))
    if not problems:
        return None
    return Verdict(
        passed=False,
        message="\n".join(problems),
        formula=problems[0],
        value=sum(d["bad"] for d in details.values()),
        threshold={"finite": True},
        details={"nonfinite": details},
    )


@check("outputs")
def outputs_check(runner, t: Target) -> Verdict:
    """Finite outputs first (NaN/Inf fail here, where they arise), then reloaded vs in-memory."""
    bad = finite_verdict(runner, t)
    if bad is not None:
        return bad
    r = runner.reload(t)
    v = t.variant
    # A file made elsewhere has no in-memory twin: it is held to the baseline on the same batches.
    made_elsewhere = t.made_elsewhere and not t.is_baseline
    b = runner.built(t.baseline() if made_elsewhere else t)
    other = "the baseline" if made_elsewhere else "the in-memory variant"
    n_in = sum(batch_len(x) for x in runner.batches(t.spec))
    pairs, why = align(b.outputs, r.outputs)
    if why is not None:
        return Verdict(
            passed=False,
            message=f"the reloaded {t.fmt} artifact {why.replace('the reference', other)}",
            value=list(r.outputs),
            threshold=list(b.outputs),
        )
    unknown = [n for n in v.thresholds.outputs.per_output if n not in b.outputs]
    if unknown:
        return Verdict(
            passed=False,
            message=f"thresholds.outputs gives tolerances for {', '.join(map(repr, unknown))}, "
            f"not an output of the model; its outputs are {', '.join(map(repr, b.outputs))}",
            value=unknown,
            threshold=list(b.outputs),
        )
    failed: list[str] = []
    formulas: list[str] = []
    per: dict[str, dict[str, Any]] = {}
    thresholds: dict[str, Any] = {}
    for name, ref, got in pairs:
        th = output_threshold(v, name)
        lab = label(name, b.outputs)
        if got.shape != ref.shape:
            msg = (
                f"the reloaded {t.fmt} artifact returned{lab} of shape {tuple(got.shape)} but {other} "
                f"returned {tuple(ref.shape)} for the same {n_in} inputs"
            )
            failed.append(msg)
            formulas.append(msg)
            per[name] = {"shape": list(got.shape), "expected_shape": list(ref.shape)}
            continue
        tol = output_tolerance(
            atol=th.atol,
            rtol=th.rtol,
            precision=None if made_elsewhere else v.precision,
            quant_steps=th.quant_steps,
            span=precision_span(ref, None if made_elsewhere else v.precision),
            inherited=not v.sets_tolerance(name),
        )
        st = compare_arrays(got, ref, atol=tol.atol, rtol=tol.rtol)
        per[name] = {k: st[k] for k in ("mismatched", "total", "max_abs", "mean_abs", "max_rel", "min_atol")}
        thr: dict = {"atol": tol.atol, "rtol": tol.rtol}
        if tol.steps is not None:
            thr.update(quant_steps=tol.steps, precision=tol.precision, step=tol.step)
            per[name]["steps"] = st["max_abs"] / tol.step if tol.step else None
            f = (
                f"max abs diff {fmt_num(st['max_abs'])}: {tol.describe(st['max_abs'])}; {st['mismatched']} of "
                f"{st['total']} elements beyond it"
            )
        else:
            f = (
                f"max abs diff {fmt_num(st['max_abs'])}; {st['mismatched']} of {st['total']} elements outside "
                f"{tol.describe(st['max_abs'])}"
            )
        thresholds[name] = thr
        formulas.append((f"{name}: " if lab else "") + f)
        if st["mismatched"]:
            what = (
                f"output {name!r} of the reloaded {t.fmt} artifact differs from {other}"
                if lab
                else f"outputs of the reloaded {t.fmt} artifact differ from {other}"
            )
            failed.append(
                render_mismatch(
                    st,
                    what=what,
                    left="reloaded",
                    right="baseline" if made_elsewhere else "in-memory",
                    atol=tol.atol,
                    rtol=tol.rtol,
                    hint=f"  {tol.describe(st['max_abs'])}" if tol.steps is not None else "",
                )
            )
    compared = [d for d in per.values() if "total" in d]
    details: dict = {
        "mismatched": sum(d["mismatched"] for d in compared),
        "total": sum(d["total"] for d in compared),
        "max_abs": max((d["max_abs"] for d in compared), default=None),
        "mean_abs": max((d["mean_abs"] for d in compared), default=None),
        "max_rel": max((d["max_rel"] for d in compared), default=None),
        "min_atol": max((d["min_atol"] for d in compared), default=None),
    }
    if len(pairs) == 1 and compared and "steps" in compared[0]:
        details["steps"] = compared[0]["steps"]
    if len(pairs) > 1:
        details["outputs"] = per
    formula = "; ".join(formulas)
    threshold = next(iter(thresholds.values())) if len(thresholds) == 1 else thresholds
    if failed:
        msg = "\n".join(failed) + saturation_hint(v.steps)
        if not made_elsewhere and compared:
            where, det = where_it_departs(runner, t, against="in-memory")
            msg += where
            details.update(det)
        return Verdict(
            passed=False, message=msg, formula=formula, value=details["max_abs"], threshold=threshold, details=details
        )
    return Verdict(passed=True, formula=formula, value=details["max_abs"], threshold=threshold, details=details)


def output_threshold(variant, name: str):
    """The tolerances for one output: ``thresholds.outputs.<name>`` where given, else the flat ones."""
    th = variant.thresholds.outputs
    return th.per_output.get(name, th)


# --- dynamic dimensions --------------------------------------------------------------------------


def _has_dynamic(t: Target) -> bool:
    return any(
        d.dim > 0 and d.min is not None and d.max is not None
        for _, i in t.spec.model.inputs.items
        for d in i.dynamic_dims
    )


@check("dynamic", applies=_has_dynamic)
def dynamic_check(runner, t: Target) -> Verdict:
    """The reloaded artifact at every declared dynamic dimension's min, middle and max size,
    against the in-memory variant (the baseline, for a file made elsewhere) on the same inputs."""
    r = runner.reload(t)
    probes = runner.dynamic_probes(t.spec)
    ref_t = t.baseline() if t.made_elsewhere and not t.is_baseline else t
    if t.made_elsewhere and t.is_baseline:
        return Verdict.not_compared(
            "an artifact made elsewhere as the baseline has no in-memory model to compare sizes with"
        )
    # the in-memory outputs at each size (from the cache when this build ran these probes before)
    refs = runner.run_each(ref_t, "dynamic", lambda: [p.batch for p in probes])
    failed, ok_labels, details = [], [], {}
    got_all = r.dynamic_outputs or []
    errors = r.result.dynamic_errors or []
    for i, p in enumerate(probes):
        head = f"{p.name} traced at {p.traced}; at {p.size} ({', '.join(p.where)})"
        ref = refs[i]
        if isinstance(ref, str):  # the declaration promises a size the model itself cannot take
            fixed = next((s.summary for s in (runner.built(ref_t).steps or ()) if "; traced at " in s.summary), "")
            hint = (
                "the static int8 build fixed that dimension: " + fixed.split("; traced at ")[1].split(" (")[0]
                if fixed
                else "check model.inputs dynamic min/max"
            )
            failed.append(f"{head} the in-memory variant fails: {ref} ({hint})")
            details[p.label()] = "in-memory failed"
            continue
        err = errors[i] if i < len(errors) else "no result for this size"
        if err:
            failed.append(f"{head} the reloaded {t.fmt} artifact fails: {err}")
            details[p.label()] = "failed"
            continue
        got = got_all[i]
        pairs, why = align(ref, got)
        if why is not None:
            failed.append(
                f"{head} the reloaded {t.fmt} artifact {why.replace('the reference', 'the in-memory variant')}"
            )
            continue
        bad = []
        for name, a, g in pairs:
            lab = f" output {name!r}" if len(pairs) > 1 else " output"
            if g.shape != a.shape:
                bad.append(
                    f"returned{lab} of shape {tuple(g.shape)} where the in-memory variant returned {tuple(a.shape)}"
                )
                continue
            th = output_threshold(t.variant, name)
            tol = output_tolerance(
                atol=th.atol,
                rtol=th.rtol,
                precision=None if t.made_elsewhere else t.variant.precision,
                quant_steps=th.quant_steps,
                span=precision_span(a, None if t.made_elsewhere else t.variant.precision),
                inherited=not t.variant.sets_tolerance(name),
            )
            st = compare_arrays(g, a, atol=tol.atol, rtol=tol.rtol)
            if st["mismatched"]:
                bad.append(
                    f"differs on{lab}: {st['mismatched']} of {st['total']} elements outside "
                    f"{tol.describe(st['max_abs'])} (max abs diff {fmt_num(st['max_abs'])})"
                )
        if bad:
            failed.append(f"{head} the reloaded {t.fmt} artifact " + "; ".join(bad))
            details[p.label()] = "differs"
        else:
            ok_labels.append(p.label())
            details[p.label()] = "ok"
    sizes = ", ".join(p.label() for p in probes)
    if failed:
        if t.fspec is not None and getattr(t.fspec.options, "dynamic_seq", True) is False:
            how = (
                f"this {t.fmt} artifact was exported with dynamic_seq: false, so it takes the example's sizes "
                "only; where a layer cannot keep the dimension dynamic under the exporter (nn.GRU, nn.LSTM), "
                "ship the sizes that vary in TorchScript, or declare the dimension without min/max to gate "
                "one size"
            )
        elif any(getattr(s, "method", None) == "static_int8" for s in t.variant.steps):
            how = (
                "a static int8 (pt2e) build traced at the example's size keeps it where a layer specialised "
                "the dimension (its build summary says `traced at …`): ship that variant at that size"
            )
        else:
            how = "export with these dimensions dynamic (model.inputs dynamic) or fix the model's size-dependent Python code"
        msg = "\n".join(failed) + f"\n  {how}; sizes tried: {sizes}"
        return Verdict(
            passed=False, message=msg, formula=failed[0], value=len(failed), threshold={"sizes": sizes}, details=details
        )
    return Verdict(passed=True, formula=f"matches the in-memory variant at {sizes}", value=len(probes), details=details)


# --- metric -------------------------------------------------------------------------------------


def _with_interval(ok: bool, f: str, *, name: str, key: str, limit: float, ci, th, notes: list) -> tuple[bool, str]:
    """The point verdict ``ok`` with its formula ``f``, revised by the drop's paired interval:
    an interval wholly within (beyond) the limit decides; one that straddles it is inconclusive
    and ``th.inconclusive`` decides (the measured drop, pass, or fail)."""
    if ci is None:
        return ok, f
    from ..stats import judge, samples_to_decide

    outcome = judge(ci, limit)
    op = {"pass": "<=", "fail": ">", "inconclusive": "straddles"}[outcome]
    f += f"; {name} drop {ci.drop:.4f} ({ci.describe()}) {op} {key} {fmt_num(limit)}"
    if outcome != "inconclusive":
        return outcome == "pass", f
    need = samples_to_decide(ci, limit)
    how = {
        "point": "the measured drop decides",
        "pass": "passed (inconclusive: pass)",
        "fail": "failed (inconclusive: fail: the whole interval must be within the limit)",
    }[th.inconclusive]
    notes.append(
        f"inconclusive: {key} {fmt_num(limit)} lies inside the {ci.confidence:.0%} interval; "
        + (
            f"about {need:,} samples (now {ci.n:,}) would decide it"
            if need
            else "the drop sits on the limit, no sample size decides it"
        )
        + f"; {how}"
    )
    return (ok if th.inconclusive == "point" else th.inconclusive == "pass"), f


def metric_verdict(*, name: str, value: float, baseline: float, higher: bool, th, ci=None) -> Verdict:
    """Decide the metric gate; the formula shows every number that decided it. ``ci``: the
    drop's paired interval (:mod:`deploycheck.stats`), which revises the drop thresholds."""
    gate = Gate()
    notes: list[str] = []
    delta = value - baseline
    what = f"{name} {fmt_num(value)}"
    if th.max_drop is not None:
        ok, f = Bound.drop(baseline=baseline, max_drop=th.max_drop, higher=higher).judge(value, what)
        gate.add(*_with_interval(ok, f, name=name, key="max_drop", limit=th.max_drop, ci=ci, th=th, notes=notes))
    if th.max_relative_drop is not None:
        bound = Bound.relative_drop(baseline=baseline, max_relative_drop=th.max_relative_drop, higher=higher)
        ok, f = bound.judge(value, what)
        limit = abs(baseline) * th.max_relative_drop
        gate.add(*_with_interval(ok, f, name=name, key="max_relative_drop", limit=limit, ci=ci, th=th, notes=notes))
    if th.min is not None:
        gate.bound(Bound.at_least("min", th.min), value, what)
    if th.max is not None:
        gate.bound(Bound.at_most("max", th.max), value, what)
    unset = f"{what} (baseline {fmt_num(baseline)}, delta {delta:+.4g}); " + unset_words(
        "thresholds.metric", "max_drop", "max_relative_drop", "min", "max"
    )
    formula = "; ".join([gate.formula(unset=unset)] + notes)
    details = {"metric": name, "value": value, "baseline": baseline, "delta": delta, "higher_is_better": higher}
    if ci is not None:
        details["drop_ci"] = {
            "drop": ci.drop,
            "low": ci.low,
            "high": ci.high,
            "confidence": ci.confidence,
            "n": ci.n,
            "method": ci.method,
            "inconclusive": bool(notes),
        }
    return Verdict(
        passed=gate.ok,
        message="" if gate.ok else formula,
        formula=formula,
        value=value,
        threshold=given(th, "max_drop", "max_relative_drop", "min", "max"),
        details=details,
        outcome="not_gated" if gate.empty else "decided",
    )


def drop_interval(runner, t: Target, outputs, metric, confidence: float):
    """The paired interval of the variant's drop vs the baseline on the same samples, or None
    when there is nothing to pair (no drop threshold, outputs of another length)."""
    th = t.variant.thresholds.metric
    if th.max_drop is None and th.max_relative_drop is None:
        return None
    import numpy as np
    import torch

    from ..stats import DropCI, bootstrap_paired_drop, bootstrap_paired_mean_drop, exact_paired_drop

    base = pick(runner.built(t.baseline()).outputs, t.spec.metric.output)  # the output the metric reads
    outputs = pick(outputs, t.spec.metric.output)
    if len(base) != len(outputs) or len(outputs) < 2:
        return None
    targets = targets_for(metric, runner.labels(t.spec), base)
    name = t.spec.metric.name
    if name in ("accuracy", "top_k") and metric.needs_labels and base.ndim == 2:
        y = targets.long().view(-1, 1)
        k = 1 if name == "accuracy" else min(t.spec.metric.k, base.shape[1])
        hit = lambda o: (o.float().topk(k, dim=1).indices == y).any(1).numpy()  # noqa: E731
        return exact_paired_drop(hit(base), hit(outputs), confidence)

    def score(idx):
        i = torch.from_numpy(np.asarray(idx))
        return metric(base[i], targets[i]), metric(outputs[i], targets[i])

    def compute() -> list | None:
        try:
            if metric.per_sample is not None:  # a mean over samples: each sample's value, once
                ci = bootstrap_paired_mean_drop(
                    metric.samples(base, targets),
                    metric.samples(outputs, targets),
                    higher=metric.higher_is_better,
                    confidence=confidence,
                )
            else:
                ci = bootstrap_paired_drop(score, len(outputs), higher=metric.higher_is_better, confidence=confidence)
        except Exception:  # noqa: BLE001 - a metric that cannot score a resample: the point verdict stands alone
            return None
        return [ci.drop, ci.low, ci.high, ci.confidence, ci.n, ci.method]

    # 1000 resamples of the metric: kept under the baseline's build (which covers the metric's
    # definition and code) and the exact outputs and targets they resample
    got = runner.cached_value(
        runner.built(t.baseline()).key,
        "bootstrap-drop",
        [base, outputs, targets, float(confidence), bool(metric.higher_is_better)],
        compute,
    )
    return None if got is None else DropCI(*got)


@check("metric")
def metric_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    base = runner.built(t.baseline()).metric
    m = resolve(t.spec)
    skip = baseline_not_compared(runner, t)
    if skip is not None:
        return skip
    if not math.isfinite(r.metric):
        info = nonfinite(pick(r.outputs, t.spec.metric.output))
        why = (
            describe_nonfinite(info, whose=f"the reloaded {t.fmt} outputs")
            if info
            else "the metric function returned a non-finite value"
        )
        return Verdict(
            passed=False,
            message=f"metric {m.name} is {r.metric}, not a number to compare: {why}",
            formula=f"metric {m.name} is {r.metric}",
            value=r.metric,
            details={"metric": m.name, "value": r.metric, "higher_is_better": m.higher_is_better},
        )
    th = t.variant.thresholds.metric
    ci = None if t.is_baseline else drop_interval(runner, t, r.outputs, m, th.confidence)
    v = metric_verdict(name=m.name, value=r.metric, baseline=base, higher=m.higher_is_better, th=th, ci=ci)
    read = t.spec.metric.output or next(iter(r.outputs))
    v.details["output"] = read
    if len(r.outputs) > 1:  # which of several outputs the metric read, said in the verdict and the report
        v.formula += f" (metric on output {read!r} of {', '.join(map(repr, r.outputs))})"
        if v.message:
            v.message += f" (metric on output {read!r})"
    if not v.passed:
        where, det = where_it_departs(runner, t)
        v.message += saturation_hint(t.variant.steps) + where
        v.details.update(det)
    return v


# --- fidelity and semantic order (embedding models) ---------------------------------------------


def _fidelity_applies(t: Target) -> bool:
    f = t.variant.thresholds.fidelity
    return f.min_mean_cosine is not None or f.min_cosine is not None


@check("fidelity", applies=_fidelity_applies)
def fidelity_check(runner, t: Target) -> Verdict:
    """Row-wise cosine to the baseline, for every output (a failure names the output)."""
    import torch

    r = runner.reload(t)
    skip = baseline_not_compared(runner, t)
    if skip is not None:
        return skip
    base = runner.built(t.baseline()).outputs
    th = t.variant.thresholds.fidelity
    thr = given(th, "min_mean_cosine", "min_cosine")
    pairs, why = align(base, r.outputs)
    if why is not None:
        return Verdict(
            passed=False,
            message=f"the reloaded {t.fmt} artifact {why.replace('the reference', 'the baseline')}",
            formula="outputs differ",
            threshold=thr,
        )
    gate = Gate()
    per: dict[str, dict[str, Any]] = {}
    for name, ref, got in pairs:
        lab = f"output {name!r}: " if len(pairs) > 1 else ""
        if got.shape != ref.shape:
            gate.add(False, f"{lab}shape {tuple(got.shape)} differs from the baseline's {tuple(ref.shape)}")
            continue
        cos = torch.nn.functional.cosine_similarity(
            got.reshape(len(got), -1).double(), ref.reshape(len(ref), -1).double(), dim=1
        )
        mean, worst, at = cos.mean().item(), cos.min().item(), int(cos.argmin())
        per[name] = {"mean_cosine": mean, "min_cosine": worst, "worst_sample": at}
        if not math.isfinite(mean):
            info = nonfinite(got)
            what = f"the reloaded {t.fmt} " + (f"output {name!r}" if lab else "outputs")
            why = describe_nonfinite(info, whose=what) if info else "cosine is not finite"
            return Verdict(
                passed=False,
                message=f"cosine to the baseline is not a number: {why}",
                formula="cosine is not finite",
                value=mean,
                details={"mean_cosine": mean},
            )
        if th.min_mean_cosine is not None:
            what = f"{lab}mean cosine vs baseline {mean:.6f} (1 - cos = {1 - mean:.1e})"
            gate.bound(Bound.at_least("min_mean_cosine", th.min_mean_cosine), mean, what)
        if th.min_cosine is not None:
            what = f"{lab}min cosine vs baseline {worst:.6f} (1 - cos = {1 - worst:.1e}, sample {at})"
            gate.bound(Bound.at_least("min_cosine", th.min_cosine), worst, what)
    formula = gate.formula()
    first = per.get(pairs[0][0], {}) if pairs else {}
    lowest = min((d["mean_cosine"] for d in per.values()), default=None)
    details: dict[str, Any] = {
        "mean_cosine": lowest,
        "min_cosine": min((d["min_cosine"] for d in per.values()), default=None),
        "worst_sample": first.get("worst_sample"),
    }
    if len(pairs) > 1:
        details["outputs"] = per
    if not gate.ok:
        where, det = where_it_departs(runner, t)
        return Verdict(
            passed=False, message=formula + where, formula=formula, value=lowest, threshold=thr, details=details | det
        )
    return Verdict(passed=True, formula=formula, value=lowest, threshold=thr, details=details)


def _triplet_order(emb, triplets):
    import torch

    e = torch.nn.functional.normalize(emb.reshape(len(emb), -1).double(), dim=1)
    kept = [i for i, (a, c, f) in enumerate(triplets) if float(e[a] @ e[c]) > float(e[a] @ e[f])]
    return kept


@check("semantic", applies=lambda t: t.spec.semantic is not None)
def semantic_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    _, triplets = runner.semantic_batches(t.spec)
    base_emb = runner.embeddings(t.baseline())  # once per session, whatever the number of formats
    base_kept = set(_triplet_order(base_emb, triplets))
    kept = set(_triplet_order(pick(r.extra_outputs, t.spec.metric.output), triplets))
    n = len(triplets)
    agreement = len(kept) / n if n else 1.0
    lost = sorted(base_kept - kept)
    assert t.spec.semantic is not None  # applies= collects this check only for specs with one
    need = t.spec.semantic.min_agreement
    ok, formula = Bound.at_least("min_agreement", need).judge(
        agreement,
        f"{len(kept)} of {n} triplets keep their order (agreement {agreement:.3f}",
        tail=f"; the baseline keeps {len(base_kept)})",
    )
    return Verdict(
        passed=ok,
        message="" if ok else formula + "".join(f"\n  triplet {i + 1} lost its order" for i in lost[:10]),
        formula=formula,
        value=agreement,
        threshold={"min_agreement": need},
        details={"kept": len(kept), "triplets": n, "baseline_kept": len(base_kept), "lost": lost},
    )
