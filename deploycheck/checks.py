"""Checks: thresholds -> verdicts that carry the formula and numbers that decided them.

One registry: each check says when it applies and how it decides. Items in
:mod:`deploycheck.collect` only run a check and show its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from . import machine, snapshots
from .errors import StageError
from .metrics import resolve, targets_for
from .numeric import (
    compare_arrays,
    describe_nonfinite,
    fmt_num,
    nonfinite,
    output_tolerance,
    precision_span,
    render_mismatch,
)
from .outputs import align, label, pick
from .protocol import batch_len, concat_inputs, rows, run_batch, take
from .registry import Registry
from .stages.save import VariantUnsupported
from .target import Target


@dataclass
class Verdict:
    check: str
    passed: bool
    message: str = ""  # the failure message (or a note on success)
    formula: str = ""  # e.g. "accuracy 0.9512 >= baseline 0.9722 - max_drop 0.01 = 0.9622"
    value: Any = None
    threshold: Any = None
    details: dict = field(default_factory=dict)
    inconclusive: bool = False  # the measurement cannot decide (noise): the item is skipped, saying why


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # "format" (per variant and format) or "variant"
    applies: Callable[[Target], bool]
    run: Callable[..., Verdict]  # run(runner, target) -> Verdict
    needs_item: bool = False  # run(..., item=the pytest item): for checks that talk to pytest plugins


CHECKS: Registry[Check] = Registry("check")


def check(
    name: str, *, level: str = "format", applies: Callable[[Target], bool] = lambda t: True, needs_item: bool = False
):
    def deco(fn):
        CHECKS.register(name, Check(name, level, applies, fn, needs_item))
        return fn

    return deco


# --- load ---------------------------------------------------------------------------------------


@check("load")
def load_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    cached = r.result.cached
    return Verdict(
        "load",
        True,
        formula="loaded and ran in a fresh process" + (" (cached result)" if cached else ""),
        value=round(r.result.load_s, 4),
        details={
            "load_s": r.result.load_s,
            "process_s": r.seconds,
            "cached": cached,
            "peak_rss_mb": r.result.peak_rss_mb,
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


def where_it_departs(runner, t: Target, *, against: str = "baseline") -> tuple[str, dict]:
    """On a failing comparison: the message's continuation naming the first module where the
    variant (its reloaded artifact where the format exposes layers) departs from the baseline,
    or from the in-memory variant, with a short per-layer table, and the same as details."""
    if t.is_baseline and against == "baseline":
        return "", {}
    res = runner.divergence(t, against=against)
    return "\n" + res.render(), {"divergence": res.as_dict()}


def skip_if_baseline_nonfinite(runner, t: Target) -> None:
    """A comparison with a NaN baseline is no verdict: skip it, pointing at the baseline's failure."""
    if t.is_baseline:
        return
    why = baseline_nonfinite(runner, t)
    if why:
        raise pytest.skip.Exception(f"not compared: {why}", _use_item_location=True)


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
        "outputs",
        False,
        "\n".join(problems),
        problems[0],
        sum(d["bad"] for d in details.values()),
        {"finite": True},
        {"nonfinite": details},
    )


@check("outputs")
def outputs_check(runner, t: Target) -> Verdict:
    """Finite outputs first (NaN/Inf fail here, where they arise), then reloaded vs in-memory."""
    bad = finite_verdict(runner, t)
    if bad is not None:
        return bad
    r = runner.reload(t)
    fspec, v = t.fspec, t.variant
    # A file made elsewhere has no in-memory twin: it is held to the baseline on the same batches.
    made_elsewhere = t.made_elsewhere and not t.is_baseline
    b = runner.built(t.baseline() if made_elsewhere else t)
    other = "the baseline" if made_elsewhere else "the in-memory variant"
    n_in = sum(batch_len(x) for x in runner.batches(t.spec))
    pairs, why = align(b.outputs, r.outputs)
    if why is not None:
        return Verdict(
            "outputs",
            False,
            f"the reloaded {fspec.name} artifact {why.replace('the reference', other)}",
            value=list(r.outputs),
            threshold=list(b.outputs),
        )
    unknown = [n for n in v.thresholds.outputs.per_output if n not in b.outputs]
    if unknown:
        return Verdict(
            "outputs",
            False,
            f"thresholds.outputs gives tolerances for {', '.join(map(repr, unknown))}, "
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
                f"the reloaded {fspec.name} artifact returned{lab} of shape {tuple(got.shape)} but {other} "
                f"returned {tuple(ref.shape)} for the same {n_in} inputs"
            )
            failed.append(msg)
            formulas.append(msg)
            per[name] = {"shape": list(got.shape), "expected_shape": list(ref.shape)}
            continue
        tol = output_tolerance(
            atol=th.atol,
            rtol=th.rtol,
            precision=None if made_elsewhere else precision(v),
            quant_steps=th.quant_steps,
            span=precision_span(ref, None if made_elsewhere else precision(v)),
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
                f"output {name!r} of the reloaded {fspec.name} artifact differs from {other}"
                if lab
                else f"outputs of the reloaded {fspec.name} artifact differ from {other}"
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
        msg = "\n".join(failed) + saturation_hint(v)
        if not made_elsewhere and compared:
            where, det = where_it_departs(runner, t, against="in-memory")
            msg += where
            details.update(det)
        return Verdict("outputs", False, msg, formula, details["max_abs"], threshold, details)
    return Verdict("outputs", True, formula=formula, value=details["max_abs"], threshold=threshold, details=details)


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
        pytest.skip("an artifact made elsewhere as the baseline has no in-memory model to compare sizes with")
    model = runner.built(ref_t).model
    failed, ok_labels, details = [], [], {}
    got_all = r.dynamic_outputs or []
    errors = r.result.dynamic_errors or []
    for i, p in enumerate(probes):
        head = f"{p.name} traced at {p.traced}; at {p.size} ({', '.join(p.where)})"
        try:
            import torch

            with torch.inference_mode():
                ref = {k: o.float() for k, o in run_batch(model, p.batch).items()}
        except Exception as e:  # the declaration promises a size the model itself cannot take
            failed.append(
                f"{head} the in-memory variant fails: {type(e).__name__}: {str(e).splitlines()[0][:300]} "
                f"(check model.inputs dynamic min/max)"
            )
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
                precision=None if t.made_elsewhere else precision(t.variant),
                quant_steps=th.quant_steps,
                span=precision_span(a, None if t.made_elsewhere else precision(t.variant)),
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
        msg = "\n".join(failed) + (
            f"\n  export with these dimensions dynamic (model.inputs dynamic) or fix the "
            f"model's size-dependent Python code; sizes tried: {sizes}"
        )
        return Verdict("dynamic", False, msg, failed[0], len(failed), {"sizes": sizes}, details)
    return Verdict(
        "dynamic", True, formula=f"matches the in-memory variant at {sizes}", value=len(probes), details=details
    )


# --- metric -------------------------------------------------------------------------------------


def _with_interval(ok: bool, f: str, *, name: str, key: str, limit: float, ci, th, notes: list) -> tuple[bool, str]:
    """The point verdict ``ok`` with its formula ``f``, revised by the drop's paired interval:
    an interval wholly within (beyond) the limit decides; one that straddles it is inconclusive
    and ``th.inconclusive`` decides (the measured drop, pass, or fail)."""
    if ci is None:
        return ok, f
    from .stats import judge, samples_to_decide

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


def metric_verdict(name: str, value: float, baseline: float, higher: bool, th, ci=None) -> Verdict:
    """Decide the metric gate; the formula shows every number that decided it. ``ci``: the
    drop's paired interval (:mod:`deploycheck.stats`), which revises the drop thresholds."""
    parts: list[str] = []
    failed: list[str] = []
    notes: list[str] = []
    sign = "-" if higher else "+"
    delta = value - baseline
    if th.max_drop is not None:
        bound = baseline - th.max_drop if higher else baseline + th.max_drop
        ok = value >= bound - 1e-12 if higher else value <= bound + 1e-12
        op = (">=" if ok else "<") if higher else ("<=" if ok else ">")
        f = f"{name} {fmt_num(value)} {op} baseline {fmt_num(baseline)} {sign} max_drop {fmt_num(th.max_drop)} = {fmt_num(bound)}"
        ok, f = _with_interval(ok, f, name=name, key="max_drop", limit=th.max_drop, ci=ci, th=th, notes=notes)
        (parts if ok else failed).append(f)
    if th.max_relative_drop is not None:
        factor = 1 - th.max_relative_drop if higher else 1 + th.max_relative_drop
        bound = baseline * factor
        ok = value >= bound - 1e-12 if higher else value <= bound + 1e-12
        op = (">=" if ok else "<") if higher else ("<=" if ok else ">")
        f = (
            f"{name} {fmt_num(value)} {op} baseline {fmt_num(baseline)} × (1 {sign} max_relative_drop "
            f"{fmt_num(th.max_relative_drop)}) = {fmt_num(bound)}"
        )
        ok, f = _with_interval(
            ok,
            f,
            name=name,
            key="max_relative_drop",
            limit=abs(baseline) * th.max_relative_drop,
            ci=ci,
            th=th,
            notes=notes,
        )
        (parts if ok else failed).append(f)
    if th.min is not None:
        ok = value >= th.min
        (parts if ok else failed).append(f"{name} {fmt_num(value)} {'>=' if ok else '<'} min {fmt_num(th.min)}")
    if th.max is not None:
        ok = value <= th.max
        (parts if ok else failed).append(f"{name} {fmt_num(value)} {'<=' if ok else '>'} max {fmt_num(th.max)}")
    if not parts and not failed:
        parts.append(f"{name} {fmt_num(value)} (baseline {fmt_num(baseline)}, delta {delta:+.4g}; no threshold set)")
    formula = "; ".join((failed or parts) + notes)
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
    thr = {k: getattr(th, k) for k in ("max_drop", "max_relative_drop", "min", "max") if getattr(th, k) is not None}
    return Verdict("metric", not failed, formula if failed else "", formula, value, thr, details)


def drop_interval(runner, t: Target, outputs, metric, confidence: float):
    """The paired interval of the variant's drop vs the baseline on the same samples, or None
    when there is nothing to pair (no drop threshold, outputs of another length)."""
    th = t.variant.thresholds.metric
    if th.max_drop is None and th.max_relative_drop is None:
        return None
    import numpy as np
    import torch

    from .stats import bootstrap_paired_drop, exact_paired_drop

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

    try:
        return bootstrap_paired_drop(score, len(outputs), higher=metric.higher_is_better, confidence=confidence)
    except Exception:  # noqa: BLE001 - a metric that cannot score a resample: the point verdict stands alone
        return None


@check("metric")
def metric_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    base = runner.built(t.baseline()).metric
    m = resolve(t.spec)
    skip_if_baseline_nonfinite(runner, t)
    if not math.isfinite(r.metric):
        info = nonfinite(pick(r.outputs, t.spec.metric.output))
        why = (
            describe_nonfinite(info, whose=f"the reloaded {t.fmt} outputs")
            if info
            else "the metric function returned a non-finite value"
        )
        return Verdict(
            "metric",
            False,
            f"metric {m.name} is {r.metric}, not a number to compare: {why}",
            f"metric {m.name} is {r.metric}",
            r.metric,
            None,
            {"metric": m.name, "value": r.metric, "higher_is_better": m.higher_is_better},
        )
    th = t.variant.thresholds.metric
    ci = None if t.is_baseline else drop_interval(runner, t, r.outputs, m, th.confidence)
    v = metric_verdict(m.name, r.metric, base, m.higher_is_better, th, ci)
    read = t.spec.metric.output or next(iter(r.outputs))
    v.details["output"] = read
    if len(r.outputs) > 1:  # which of several outputs the metric read, said in the verdict and the report
        v.formula += f" (metric on output {read!r} of {', '.join(map(repr, r.outputs))})"
        if v.message:
            v.message += f" (metric on output {read!r})"
    if not v.passed:
        where, det = where_it_departs(runner, t)
        v.message += saturation_hint(t.variant) + where
        v.details.update(det)
    return v


# --- latency ------------------------------------------------------------------------------------


def ratio_formula(ratio: dict, th) -> str:
    """The side-by-side verdict with the control that widened it, e.g.
    ``latency ratio 1.182 (95% CI 1.171–1.190, 60 rounds) > max_ratio 1.1 × control 1.012 = 1.113``."""
    conf = int(ratio["confidence"] * 100)
    ctrl = ratio.get("control")
    noise = ctrl["noise"] if ctrl else 1.0
    failed = ratio["decision"].startswith("fail")
    unsure = (
        " (interval straddles the limit after the time budget; decided by the median)"
        if ratio["decision"].endswith("unsure")
        else ""
    )
    if ctrl:
        cnote = (
            f"; control: baseline reloaded vs baseline {ctrl['ratio']:.3f} "
            f"(CI {ctrl['ci_low']:.3f}–{ctrl['ci_high']:.3f})"
        )
    else:
        cnote = "; no control" + (f" ({ratio['control_error']})" if ratio.get("control_error") else "")
    if ratio["decision"] == "inconclusive-busy":
        clo, chi = ratio["cpu_ci"]
        return (
            f"inconclusive: the machine was busy (wall/CPU {ratio['busy']:.1f}): latency ratio "
            f"{ratio['ratio']:.3f} by wall time (CI {ratio['ci_low']:.3f}–{ratio['ci_high']:.3f}) but "
            f"{ratio['cpu_ratio']:.3f} by CPU time (CI {clo:.3f}–{chi:.3f}, {ratio['pairs']} rounds) against "
            f"the limit {ratio['effective_limit']:.3f}; not failed, and measured again next run{cnote}"
        )
    if th.min_speedup is not None and (th.max_ratio is None or 1 / th.min_speedup < th.max_ratio):
        sp, lo, hi = 1 / ratio["ratio"], 1 / ratio["ci_high"], 1 / ratio["ci_low"]
        bound = th.min_speedup / noise
        return (
            f"speedup {sp:.3f} ({conf}% CI {lo:.3f}–{hi:.3f}, {ratio['pairs']} rounds) {'<' if failed else '>='} "
            f"min_speedup {fmt_num(th.min_speedup)} / control {noise:.3f} = {bound:.3f}{unsure}{cnote}"
        )
    bound = th.max_ratio * noise
    return (
        f"latency ratio {ratio['ratio']:.3f} ({conf}% CI {ratio['ci_low']:.3f}–{ratio['ci_high']:.3f}, "
        f"{ratio['pairs']} rounds) {'>' if failed else '<='} max_ratio {fmt_num(th.max_ratio)} × control "
        f"{noise:.3f} = {bound:.3f}{unsure}{cnote}"
    )


@check("latency")
def latency_check(runner, t: Target) -> Verdict:
    r = runner.reload(t)
    lat = r.result.latency or {}
    th = t.variant.thresholds.latency
    parts: list[str] = []
    failed: list[str] = []
    elsewhere = machine.scope_mismatch(th.machines) if th.machines is not None else None
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        limit = getattr(th, key)
        if limit is not None:
            v = lat[key]
            ok = v <= limit
            if elsewhere:  # a ceiling set for other machines: reported, not gated
                parts.append(
                    f"{key[:3]} {fmt_num(v)} ms (not gated by {key} {fmt_num(limit)} ms: set for other "
                    f"machines; {elsewhere})"
                )
                continue
            (parts if ok else failed).append(
                f"{key[:3]} {fmt_num(v)} ms {'<=' if ok else '>'} {key} {fmt_num(limit)} ms"
            )
    ratio = lat.get("ratio")
    details = {
        k: lat.get(k)
        for k in (
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "mean_ms",
            "rounds",
            "calls_per_round",
            "throughput_per_s",
            "batch",
            "samples_ms",
            "throughput",
        )
    }
    details["threads"] = r.result.threads
    if elsewhere:
        details["absolute_not_gated"] = elsewhere
    if ratio:
        details.update(
            ratio=ratio["ratio"],
            ratio_ci=[ratio["ci_low"], ratio["ci_high"]],
            ratio_pairs=ratio["pairs"],
            ratio_decision=ratio["decision"],
            control=ratio.get("control"),
            effective_limit=ratio.get("effective_limit"),
            busy=ratio.get("busy"),
            cpu_ratio=ratio.get("cpu_ratio"),
        )
    wants_ratio = th.max_ratio is not None or th.min_speedup is not None
    if wants_ratio and not t.is_baseline:
        if not ratio:
            failed.append(
                f"no side-by-side measurement vs the baseline: {lat.get('ratio_error') or f'the baseline has no {t.fmt} artifact'}"
            )
        else:
            (parts if not ratio["decision"].startswith("fail") else failed).append(ratio_formula(ratio, th))
    if not parts and not failed:
        parts.append(f"p50 {fmt_num(lat.get('p50_ms'))} ms, p95 {fmt_num(lat.get('p95_ms'))} ms (no threshold set)")
    formula = "; ".join(failed or parts)
    thr = {
        k: getattr(th, k)
        for k in ("p50_ms", "p95_ms", "p99_ms", "max_ratio", "min_speedup")
        if getattr(th, k) is not None
    }
    message = ""
    if ratio and ratio["decision"] == "inconclusive-busy" and not t.is_baseline:
        details["forgotten"] = runner.forget_measurement(t)  # a busy machine's numbers are not kept
    if failed:
        # a failing measurement is never served again: the next run measures afresh
        details["forgotten"] = runner.forget_measurement(t)
        message = formula + (
            "\n  (a cached measurement: dropped, the next run measures again)"
            if r.result.cached
            else "\n  (not kept in the cache: the next run measures again)"
        )
    return Verdict(
        "latency",
        not failed,
        message,
        formula,
        lat.get(t.spec.latency.percentile + "_ms"),
        thr,
        details,
        inconclusive=bool(ratio and ratio["decision"] == "inconclusive-busy" and not failed),
    )


# --- size ---------------------------------------------------------------------------------------


@check("size")
def size_check(runner, t: Target) -> Verdict:
    art = runner.artifact(t)
    th = t.variant.thresholds.size
    mb = art.size / 1e6
    parts: list[str] = []
    failed: list[str] = []
    details = {"size_mb": mb, "sha256": art.sha256, "path": art.path}
    if th.max_mb is not None:
        ok = mb <= th.max_mb
        (parts if ok else failed).append(f"size {fmt_num(mb)} MB {'<=' if ok else '>'} max_mb {fmt_num(th.max_mb)}")
    base_size = None
    if not t.is_baseline:
        try:
            base_size = runner.artifact(t.baseline()).size
        except (StageError, VariantUnsupported):
            base_size = None
    if base_size:
        details["size_ratio"] = art.size / base_size
    if th.max_ratio is not None and not t.is_baseline:
        if base_size is None:
            failed.append(f"no baseline {t.fmt} artifact to compare the size with")
        else:
            ratio = art.size / base_size
            ok = ratio <= th.max_ratio
            (parts if ok else failed).append(
                f"size ratio {ratio:.3f} ({fmt_num(mb)} MB / baseline {fmt_num(base_size / 1e6)} MB) "
                f"{'<=' if ok else '>'} max_ratio {fmt_num(th.max_ratio)}"
            )
    if not parts and not failed:
        parts.append(f"size {fmt_num(mb)} MB (no threshold set)")
    formula = "; ".join(failed or parts)
    thr = {k: getattr(th, k) for k in ("max_mb", "max_ratio") if getattr(th, k) is not None}
    return Verdict("size", not failed, formula if failed else "", formula, mb, thr, details)


# --- batch invariance (variant level) -----------------------------------------------------------

INT8_METHODS = ("dynamic_int8", "weight_only_int8", "static_int8")


def is_int8(variant) -> bool:
    """The variant has an int8 quantization step."""
    return any(getattr(s, "method", None) in INT8_METHODS for s in variant.steps)


def precision(variant) -> str | None:
    """The coarsest reduced precision a variant's recipe uses: int8, bf16, fp16, or None."""
    methods = {getattr(s, "method", None) for s in variant.steps}
    if methods & set(INT8_METHODS):
        return "int8"
    return "bf16" if "bf16" in methods else "fp16" if "fp16" in methods else None


def saturation_hint(variant) -> str:
    """On x86 without VNNI, int8 u8 x s8 dot products saturate a 16-bit intermediate: say so, and
    name the option that avoids it. Empty where it cannot be the cause."""
    if not is_int8(variant) or not machine.saturation_risk():
        return ""
    fp = machine.fingerprint()
    static = [s for s in variant.steps if getattr(s, "method", None) == "static_int8"]
    if static and not all(s.weight_bits == 7 for s in static):
        fix = "quantize with `weight_bits: 7` (weights in [-64, 63] keep every pair of u8 x s7 products inside 16 bits)"
    elif static:
        fix = "weight_bits is already 7, so saturation is ruled out; int8 rounding still differs by ISA"
    else:
        fix = (
            "dynamic int8 on the x86/fbgemm engine already uses 7-bit activations; the ISA's int8 rounding "
            "still differs, so widen the tolerance or approve this class with `pytest --snapshot-update`"
        )
    return (
        f"\n  likely cause: this CPU ({machine.isa_class(fp)}) has no VNNI, so int8 dot products (u8 x s8) "
        f"accumulate pairs in a saturating 16-bit intermediate and results differ from VNNI machines; {fix}"
    )


def _batch_sensitive(variant) -> bool:
    """Recipes whose activations are quantized per batch make a sample's output depend on its neighbours."""
    return any(getattr(s, "method", None) == "dynamic_int8" for s in variant.steps)


def _bi_applies(t: Target) -> bool:
    on = t.variant.thresholds.batch_invariance.enabled
    return _batch_sensitive(t.variant) if on is None else on


@check("batch_invariance", level="variant", applies=_bi_applies)
def batch_invariance_check(runner, t: Target) -> Verdict:
    import torch

    th = t.variant.thresholds.batch_invariance
    x = concat_inputs(runner.batches(t.spec))
    n = min(th.probes, rows(x))
    probes = take(x, slice(0, n))
    fill = take(x, slice(n, n + max(th.batch_size - n, 0)))
    n_fill = rows(fill)
    # each probe alone; all probes first in a batch of other samples; then last in it
    outs = runner.run_model(
        t,
        "batch-invariance",
        lambda: (
            [take(probes, slice(i, i + 1)) for i in range(n)]
            + [concat_inputs([probes, fill]), concat_inputs([fill, probes])]
        ),
    )
    diff = 0.0
    for name in outs[0]:  # every output: a batch-dependent embedding is as wrong as a batch-dependent logit
        a = torch.cat([o[name] for o in outs[:n]])
        d = torch.maximum((a - outs[n][name][:n]).abs().amax(), (a - outs[n + 1][name][n_fill:]).abs().amax())
        diff = max(diff, d.item())
    mo = [pick(o, t.spec.metric.output) for o in outs]
    alone = torch.cat(mo[:n])
    batched, rev = mo[n][:n], mo[n + 1][n_fill:]
    changed = 0
    if alone.ndim == 2 and alone.shape[1] > 1 and resolve(t.spec).needs_labels:  # classifiers: compare predictions
        changed = int(((alone.argmax(1) != batched.argmax(1)) | (alone.argmax(1) != rev.argmax(1))).sum())
    ok = diff <= th.atol and changed <= th.max_changed_predictions
    formula = (
        f"max |alone - batched| {fmt_num(diff)} {'<=' if diff <= th.atol else '>'} atol {fmt_num(th.atol)}; "
        f"changed predictions {changed} {'<=' if changed <= th.max_changed_predictions else '>'} "
        f"max_changed_predictions {th.max_changed_predictions} ({n} probes, batches of {n + n_fill})"
    )
    return Verdict(
        "batch_invariance",
        ok,
        "" if ok else formula,
        formula,
        diff,
        {"atol": th.atol, "max_changed_predictions": th.max_changed_predictions},
        {"max_diff": diff, "changed_predictions": changed, "probes": n},
    )


# --- snapshot (syrupy) --------------------------------------------------------------------------


@check("snapshot", applies=lambda t: t.spec.snapshot.enabled, needs_item=True)
def snapshot_check(runner, t: Target, *, item) -> Verdict:
    assert t.fmt is not None  # a snapshot item is per format
    r = runner.reload(t)
    st = t.spec.snapshot
    metric = resolve(t.spec)
    fp = machine.fingerprint()
    current = machine.isa_class(fp)
    data = snapshots.snapshot_data(
        spec=t.spec,
        vname=t.vname,
        fmt=t.fmt,
        outputs={k: o[: st.probes] for k, o in r.outputs.items()},
        metric_output=t.spec.metric.output,
        metric_name=metric.name,
        metric=r.metric,
        top_k=st.top_k,
        classifier=metric.needs_labels,
        machine=machine.snapshot_machine(fp),
        isa_class=current,
    )
    out = snapshots.assert_matches(item, data, settings=st, current=current, precision=precision(t.variant))
    cmp, rel = out.comparison, out.path
    details = {
        "snapshot": rel,
        "created": out.created,
        "updated": out.updated,
        "probes": data["probes"],
        "isa_class": current,
        "approved_on": cmp.get("reference"),
        "rule": cmp["rule"].name if cmp.get("rule") else None,
    }
    if out.ok:
        state = "created" if out.created else "updated" if out.updated else "matches"
        how = snapshots.describe_rule(cmp) if state == "matches" else f"entry for {current}"
        return Verdict("snapshot", True, formula=f"snapshot {state}: {rel} ({how})", value=state, details=details)
    if out.missing:
        msg = (
            f"no approved snapshot at {rel}: run `pytest --snapshot-update` to record the current outputs "
            f"({data['probes']} probes), then review and commit the file"
        )
        return Verdict("snapshot", False, msg, "snapshot missing", "missing", details=details)
    if isinstance(out.error, snapshots.UnreadableSnapshot):
        msg = (
            f"approved snapshot {rel} does not parse: {out.error}; it is left as it is, even with "
            "--snapshot-update: resolve it by hand (keep every machine's entry), or delete it and record it anew"
        )
        return Verdict("snapshot", False, msg, "snapshot unreadable", "error", details=details)
    if out.error is not None:
        msg = f"snapshot {rel} could not be compared: {type(out.error).__name__}: {out.error}"
        return Verdict("snapshot", False, msg, "snapshot unreadable", "error", details=details)
    cmp = cmp or {"problems": ["unknown"]}
    where, det = where_it_departs(runner, t) if cmp.get("values", {}).get("mismatched") else ("", {})
    msg = snapshots.render_drift(cmp, where=rel) + saturation_hint(t.variant) + where
    details.update(det)
    rule = cmp.get("rule")
    return Verdict(
        "snapshot",
        False,
        msg,
        f"snapshot drift: {', '.join(cmp['problems'])}",
        "drift",
        {"atol": rule.atol, "rtol": rule.rtol} if rule else None,
        details,
    )


# --- fidelity and semantic order (embedding models) ---------------------------------------------


def _fidelity_applies(t: Target) -> bool:
    f = t.variant.thresholds.fidelity
    return f.min_mean_cosine is not None or f.min_cosine is not None


@check("fidelity", applies=_fidelity_applies)
def fidelity_check(runner, t: Target) -> Verdict:
    """Row-wise cosine to the baseline, for every output (a failure names the output)."""
    import torch

    r = runner.reload(t)
    skip_if_baseline_nonfinite(runner, t)
    base = runner.built(t.baseline()).outputs
    th = t.variant.thresholds.fidelity
    thr = {k: getattr(th, k) for k in ("min_mean_cosine", "min_cosine") if getattr(th, k) is not None}
    pairs, why = align(base, r.outputs)
    if why is not None:
        return Verdict(
            "fidelity",
            False,
            f"the reloaded {t.fmt} artifact {why.replace('the reference', 'the baseline')}",
            "outputs differ",
            None,
            thr,
        )
    parts: list[str] = []
    failed: list[str] = []
    per: dict[str, dict[str, Any]] = {}
    for name, ref, got in pairs:
        lab = f"output {name!r}: " if len(pairs) > 1 else ""
        if got.shape != ref.shape:
            failed.append(f"{lab}shape {tuple(got.shape)} differs from the baseline's {tuple(ref.shape)}")
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
                "fidelity",
                False,
                f"cosine to the baseline is not a number: {why}",
                "cosine is not finite",
                mean,
                None,
                {"mean_cosine": mean},
            )
        if th.min_mean_cosine is not None:
            ok = mean >= th.min_mean_cosine
            (parts if ok else failed).append(
                f"{lab}mean cosine vs baseline {mean:.6f} (1 - cos = {1 - mean:.1e}) "
                f"{'>=' if ok else '<'} min_mean_cosine "
                f"{fmt_num(th.min_mean_cosine)}"
            )
        if th.min_cosine is not None:
            ok = worst >= th.min_cosine
            (parts if ok else failed).append(
                f"{lab}min cosine vs baseline {worst:.6f} (1 - cos = {1 - worst:.1e}, "
                f"sample {at}) {'>=' if ok else '<'} "
                f"min_cosine {fmt_num(th.min_cosine)}"
            )
    formula = "; ".join(failed or parts)
    first = per.get(pairs[0][0], {}) if pairs else {}
    lowest = min((d["mean_cosine"] for d in per.values()), default=None)
    details: dict[str, Any] = {
        "mean_cosine": lowest,
        "min_cosine": min((d["min_cosine"] for d in per.values()), default=None),
        "worst_sample": first.get("worst_sample"),
    }
    if len(pairs) > 1:
        details["outputs"] = per
    if failed:
        where, det = where_it_departs(runner, t)
        return Verdict("fidelity", False, formula + where, formula, lowest, thr, {**details, **det})
    return Verdict("fidelity", True, "", formula, lowest, thr, details)


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
    need = t.spec.semantic.min_agreement
    ok = agreement >= need
    formula = (
        f"{len(kept)} of {n} triplets keep their order (agreement {agreement:.3f} {'>=' if ok else '<'} "
        f"min_agreement {fmt_num(need)}; the baseline keeps {len(base_kept)})"
    )
    msg = formula if ok else formula + "".join(f"\n  triplet {i + 1} lost its order" for i in lost[:10])
    return Verdict(
        "semantic",
        ok,
        "" if ok else msg,
        formula,
        agreement,
        {"min_agreement": need},
        {"kept": len(kept), "triplets": n, "baseline_kept": len(base_kept), "lost": lost},
    )


def declared_files(spec) -> set[str]:
    """The snapshot file names a spec declares: ``<spec>.<variant>.<format>.snapshot.json``."""
    check = CHECKS.get("snapshot")
    return {
        f"{spec.name}.{v.name}.{f.name}.snapshot.json"
        for v in spec.variants.values()
        for f in v.formats
        if check.applies(Target(spec, v, f))
    }
