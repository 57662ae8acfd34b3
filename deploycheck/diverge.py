"""Where a variant departs from its baseline: per-layer comparison on the failing probes.

Run only when a check that compares a variant with its baseline fails (metric, fidelity,
snapshot), so it costs nothing while checks pass. Both in-memory models run the same probes
with forward hooks on every module; modules are matched by name (a wrapper's prefix such as the
fp16 cast's ``inner.`` is stripped). Per matched module, in the variant's execution order: the
largest absolute difference, the mean cosine similarity to the baseline's activation, and the
relative error ``||variant - baseline|| / ||baseline||`` as a share of the final output's. The
first module whose relative error is beyond tolerance is where the variant departs.

A reloaded artifact does not expose its layers here (an exported graph or an ONNX session would
need format-specific plumbing), so the table always describes the in-memory variant, and says so.
"""

from __future__ import annotations

from typing import Any

#: a layer departs when its relative error exceeds this, or 10% of the final output's
MIN_REL = 1e-3


def _first_tensor(out: Any):
    import torch
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _capture(model, probes) -> tuple[dict[str, Any], list[str], Any]:
    """Every module's first output tensor on ``probes``, by name, and the call order."""
    import torch
    acts: dict[str, Any] = {}
    order: list[str] = []
    hooks = []
    named = dict(model.named_modules()) if hasattr(model, "named_modules") else {}
    for name, mod in named.items():
        if not name:
            continue

        def hook(_m, _inp, out, _name=name):
            t = _first_tensor(out)
            if t is not None and _name not in acts:
                try:
                    acts[_name] = t.detach().dequantize() if t.is_quantized else t.detach()
                    order.append(_name)
                except Exception:  # noqa: BLE001 - an activation we cannot read is just not compared
                    pass
        try:
            hooks.append(mod.register_forward_hook(hook))
        except Exception:  # noqa: BLE001 - scripted or exported modules may refuse hooks
            pass
    try:
        with torch.inference_mode():
            final = _first_tensor(model(probes))
    finally:
        for h in hooks:
            h.remove()
    return acts, order, final


def _strip(names, other: set[str]) -> dict[str, str]:
    """Map the variant's module names onto the baseline's (a wrapper adds a prefix)."""
    out = {}
    for n in names:
        cand = n
        while cand and cand not in other:
            cand = cand.partition(".")[2]
        if cand:
            out[n] = cand
    return out


def _stats(a, b) -> dict | None:
    import torch
    if a.shape != b.shape:
        return None
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    diff = (a - b)
    denom = b.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else float(diff.norm().item() > 0)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean().item()
    return {"max_abs": diff.abs().max().item() if diff.numel() else 0.0, "rel": rel, "cosine": cos}


def localise(baseline, variant, probes) -> dict:
    """Per-layer comparison of ``variant`` with ``baseline`` on ``probes`` (see module doc)."""
    try:
        b_acts, _, b_final = _capture(baseline, probes)
        v_acts, v_order, v_final = _capture(variant, probes)
    except Exception as e:  # noqa: BLE001 - localisation explains a failure; it never adds one
        return {"rows": [], "first": None, "note": f"could not run the layer comparison: {type(e).__name__}: {e}"}
    names = _strip(v_order, set(b_acts))
    final = _stats(v_final.float(), b_final.float()) if v_final is not None and b_final is not None else None
    final_rel = final["rel"] if final else 0.0
    rows, skipped = [], 0
    for vn in v_order:
        bn = names.get(vn)
        if bn is None:
            continue
        st = _stats(v_acts[vn].float(), b_acts[bn].float())
        if st is None:
            skipped += 1  # the recipe changed this layer's shape (structured pruning, a student)
            continue
        st["module"] = bn
        st["share"] = st["rel"] / final_rel if final_rel > 0 else 0.0
        rows.append(st)
    limit = max(MIN_REL, 0.1 * final_rel)
    first = next((r["module"] for r in rows if r["rel"] > limit), None)
    note = ""
    if not rows:
        note = ("no module of the variant matches the baseline's by name and shape (an exported graph, a "
                "student or a restructured model): no layer table")
    elif skipped:
        note = f"{skipped} modules changed shape and are not compared"
    return {"rows": rows, "first": first, "limit": limit, "final": final, "note": note}


def render(result: dict, *, probes: int, limit_rows: int = 10) -> str:
    """The message's continuation: where it departs, then a short per-layer table."""
    rows = result.get("rows") or []
    lines = []
    if result.get("first"):
        lines.append(f"  where: the variant first departs from the baseline at module {result['first']!r} "
                     f"(relative error > {result['limit']:.2g}), on {probes} probes, in memory "
                     "(a reloaded artifact does not expose its layers)")
    elif rows:
        lines.append(f"  where: no module departs beyond {result['limit']:.2g}; the difference appears at the output")
    if result.get("note"):
        lines.append(f"  note: {result['note']}")
    if rows:
        start = 0
        if result.get("first"):
            start = max(0, next(i for i, r in enumerate(rows) if r["module"] == result["first"]) - 1)
        shown = rows[start:start + limit_rows]
        width = max(len("module"), *(len(r["module"]) for r in shown))
        lines.append(f"    {'module':<{width}}  {'max abs diff':>12}  {'cosine':>9}  {'share of final error':>20}")
        for r in shown:
            lines.append(f"    {r['module']:<{width}}  {r['max_abs']:>12.4g}  {r['cosine']:>9.5f}  {r['share']:>19.1%}")
        if len(rows) > start + limit_rows:
            lines.append(f"    … {len(rows) - start - limit_rows} more modules in the JSON report")
    return "\n".join(lines)
