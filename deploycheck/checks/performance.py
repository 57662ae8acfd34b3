"""Performance checks: latency (absolute ceilings and the side-by-side ratio to the baseline)
and artifact size."""

from __future__ import annotations

from .. import machine
from ..errors import StageError
from ..loading import describe_state, state_tensors
from ..numeric import fmt_num
from ..stages.build import loaded_model
from ..stages.save import VariantUnsupported
from ..target import Target
from .base import Bound, Gate, Outcome, Verdict, check, given, unset_words

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
    lat = r.result.latency
    th = t.variant.thresholds.latency
    if lat is None:  # the worker always measures when a latency item exists: never pass unmeasured
        raise StageError.at(t, "latency", "the worker returned no latency measurement")
    gate = Gate()
    elsewhere = machine.scope_mismatch(th.machines) if th.machines is not None else None
    gated = False  # did any threshold decide on this machine?
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        limit = getattr(th, key)
        if limit is not None:
            v = getattr(lat, key)
            if elsewhere:  # a ceiling set for other machines: reported, not gated
                gate.add(
                    True,
                    f"{key[:3]} {fmt_num(v)} ms (not gated by {key} {fmt_num(limit)} ms: set for other "
                    f"machines; {elsewhere})",
                )
                continue
            gate.bound(Bound.at_most(key, limit, unit=" ms"), v, f"{key[:3]} {fmt_num(v)} ms")
            gated = True
    ratio = lat.ratio
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
            gate.add(
                False,
                f"no side-by-side measurement vs the baseline: {lat.ratio_error or f'the baseline has no {t.fmt} artifact'}",
            )
        else:  # the decision is the timing module's (paired rounds, control, busy machine)
            gate.add(not ratio["decision"].startswith("fail"), ratio_formula(ratio, th))
        gated = True
    if wants_ratio and t.is_baseline:  # the baseline is what the ratio compares with
        why = unset_words(
            "the baseline is the reference of max_ratio and min_speedup; thresholds.latency",
            "p50_ms",
            "p95_ms",
            "p99_ms",
        )
    else:
        why = unset_words("thresholds.latency", "max_ratio", "min_speedup", "p50_ms", "p95_ms", "p99_ms")
    formula = gate.formula(unset=f"p50 {fmt_num(lat.p50_ms)} ms, p95 {fmt_num(lat.p95_ms)} ms; {why}")
    thr = given(th, "p50_ms", "p95_ms", "p99_ms", "max_ratio", "min_speedup")
    message = ""
    # a busy machine's numbers are not kept, and a failing measurement is never served again
    remeasure = bool(ratio and ratio["decision"] == "inconclusive-busy" and not t.is_baseline) or not gate.ok
    if not gate.ok:
        message = formula + (
            "\n  (a cached measurement: dropped, the next run measures again)"
            if r.result.cached
            else "\n  (not kept in the cache: the next run measures again)"
        )
    busy = bool(ratio and ratio["decision"] == "inconclusive-busy" and gate.ok)
    # no threshold, or only ceilings set for other machines: nothing was checked here, not a pass
    outcome: Outcome = "inconclusive" if busy else "not_gated" if not gated else "decided"
    return Verdict(
        passed=gate.ok,
        message=message,
        formula=formula,
        value=lat.get(t.spec.latency.percentile + "_ms"),
        threshold=thr,
        details=details,
        outcome=outcome,
        remeasure=remeasure,
    )


# --- size ---------------------------------------------------------------------------------------


def onnx_initializers(path: str) -> list[tuple[str, str, int]]:
    """The ONNX graph's weights as ``(name, dtype, bytes)``, read without loading external data:
    what the file holds in int8 and what in float (an int8 variant whose export dequantized its
    weights shows float here). Empty where the file cannot be read as ONNX."""
    try:
        import onnx

        graph = onnx.load(path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - the load item reports an unreadable file
        return []
    out = []
    for init in graph.initializer:
        dtype = onnx.TensorProto.DataType.Name(init.data_type).lower()
        n = 1
        for d in init.dims:
            n *= int(d)
        size = n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize if n else len(init.raw_data)
        out.append((init.name, dtype, int(size)))
    return out


def shipped_files(art) -> dict[str, int]:
    """Every file an artifact ships that holds the model, by name and bytes: the artifact, and a
    causal LM's KV-cache step next to it (a second copy of the weights), which generation needs."""
    import os

    files = {os.path.basename(art.path): int(art.size)}
    kv = (art.manifest or {}).get("kv_cache") or {}
    if kv.get("file") and kv.get("size") is not None:
        files[str(kv["file"])] = int(kv["size"])
    return files


@check("size")
def size_check(runner, t: Target) -> Verdict:
    art = runner.artifact(t)
    th = t.variant.thresholds.size
    files = shipped_files(art)
    size = sum(files.values())
    mb = size / 1e6
    parts = (
        " (" + " + ".join(f"{name} {fmt_num(n / 1e6)} MB" for name, n in files.items()) + ")" if len(files) > 1 else ""
    )
    gate = Gate()
    details = {"size_mb": mb, "sha256": art.sha256, "path": art.path, "files": files}
    if th.max_mb is not None:
        gate.bound(Bound.at_most("max_mb", th.max_mb), mb, f"size {fmt_num(mb)} MB{parts}")
    base_size = None
    if not t.is_baseline:
        try:
            base_size = sum(shipped_files(runner.artifact(t.baseline())).values())
        except (StageError, VariantUnsupported):
            base_size = None
    if base_size:
        details["size_ratio"] = size / base_size
    if th.max_ratio is not None and not t.is_baseline:
        if base_size is None:
            gate.add(False, f"no baseline {t.fmt} artifact to compare the size with")
        else:
            ratio = size / base_size
            what = f"size ratio {ratio:.3f} ({fmt_num(mb)} MB / baseline {fmt_num(base_size / 1e6)} MB)"
            gate.bound(Bound.at_most("max_ratio", th.max_ratio), ratio, what)
    if th.max_ratio is not None and t.is_baseline:  # the baseline is what the ratio compares with
        why = unset_words("the baseline is the reference of max_ratio; thresholds.size", "max_mb")
    else:
        why = unset_words("thresholds.size", "max_mb", "max_ratio")
    formula = gate.formula(unset=f"size {fmt_num(mb)} MB{parts}; {why}")
    message = "" if gate.ok else formula
    # Where the bytes are, on a failure (a passing item does not load a built model or parse a
    # file that a rerun otherwise serves from the cache): the built model's state by dtype, and an
    # ONNX file's own weights (initializers) by dtype.
    built = None if t.made_elsewhere else runner.built(t) if message else runner.built_if_ready(t)
    model = None if built is None else built.model if message else loaded_model(built)
    if model is not None:
        tensors = state_tensors(model)
        details["state_by_dtype"] = {d: sum(n for _, dd, n in tensors if dd == d) for d in {d for _, d, _ in tensors}}
        if message:
            message += f"\n  where the bytes are (the built model's state): {describe_state(tensors)}"
    if t.fmt == "onnx" and message:
        held = onnx_initializers(art.path)
        if held:
            details["file_by_dtype"] = {d: sum(n for _, dd, n in held if dd == d) for d in {d for _, d, _ in held}}
            message += f"\n  in the ONNX file (its initializers): {describe_state(held)}"
    return Verdict(
        passed=gate.ok,
        message=message,
        formula=formula,
        value=mb,
        threshold=given(th, "max_mb", "max_ratio"),
        details=details,
        outcome="not_gated" if gate.empty else "decided",
    )
