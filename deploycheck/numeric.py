"""Numeric comparison and number formatting shared by checks, snapshots and reports.

pytest-regressions style: one summary line, then shape, how many elements differ, max/mean abs
and rel error and the worst elements.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def fmt_num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000 or a < 1e-3:
        return f"{x:.3g}"
    return f"{x:.4g}" if a < 1 else f"{x:.4g}"


#: levels of one quantization step per reduced precision: int8 has 255 steps over the output
#: range; fp16 keeps 10 mantissa bits, bf16 7 (one step is the output's scale / 2^bits)
LEVELS = {"int8": 255.0, "fp16": 2.0**10, "bf16": 2.0**7}


def precision_span(t, precision: str | None) -> float:
    """What one step of ``precision`` divides: int8 quantizes an output's range (affine, 255 steps);
    a float format keeps 10 (fp16) or 7 (bf16) bits of each value, so its step follows the output's
    scale, the larger of its range and its largest magnitude: outputs near 1 that span 0.35 round
    by 1/1024, not 0.35/1024 (an fp16 ONNX file one rounding away from torch failed its dynamic
    item by 2.8 range-steps); the range alone stays the floor, so no tolerance got tighter."""
    if not t.numel():
        return 0.0
    d = t.double()
    if precision in ("fp16", "bf16"):
        return max(float(d.max() - d.min()), float(d.abs().max()))
    return float(d.max() - d.min())


#: the outputs tolerance of full-precision variants when none is set
FLOAT_ATOL, FLOAT_RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class Tolerance:
    """The tolerance an outputs comparison uses, and where it came from: set in the spec, the
    float default, or ``steps`` steps of a reduced ``precision`` over an output range ``span``."""

    atol: float
    rtol: float
    precision: str | None = None
    steps: float | None = None
    step: float | None = None
    span: float | None = None
    spec_atol: float | None = None  # the spec's atol, looser-of'd with the steps (see output_tolerance)

    def describe(self, max_abs: float) -> str:
        """``within 1.2 int8 steps; limit 2 (one step 0.2 = output range 51 / 255)`` for a
        tolerance in steps, else the atol/rtol sentence."""
        if self.steps is None or not self.step or self.precision is None:
            return f"atol {fmt_num(self.atol)} + rtol {fmt_num(self.rtol)} * |expected|"
        used = max_abs / self.step
        word = "within" if used <= self.steps else "off by"
        over = "output range" if self.precision == "int8" else "output scale"
        text = (
            f"{word} {used:.2g} {self.precision} steps; limit {self.steps:g} (one step {self.step:.3g} = {over} "
            f"{self.span:.4g} / {LEVELS[self.precision]:g}; default for {self.precision} variants)"
        )
        if self.spec_atol is not None:
            text += (
                f" + rtol {fmt_num(self.rtol)} * |expected|: looser than the spec's atol {fmt_num(self.spec_atol)}, "
                "which this variant inherits (set thresholds.outputs on the variant for an exact one)"
            )
        return text


def output_tolerance(
    *,
    atol: float | None,
    rtol: float | None,
    precision: str | None,
    quant_steps: float,
    span: float,
    inherited: bool = False,
) -> Tolerance:
    """The outputs tolerance: atol/rtol when either is set; else for a reduced ``precision``
    ``quant_steps`` steps of it over ``span`` (never below the float atol); else the float default.

    ``inherited``: the atol/rtol given are the spec's, not the variant's own. For a reduced
    precision the looser of the two then holds (the spec's atol was written for its full-precision
    variants; it must not silently switch off the step tolerance of an fp16 one). A variant's own
    atol/rtol is exact."""
    given = atol is not None or rtol is not None
    if precision not in LEVELS or (given and not inherited):
        return Tolerance(FLOAT_ATOL if atol is None else atol, FLOAT_RTOL if rtol is None else rtol)
    step = span / LEVELS[precision]
    steps = Tolerance(max(quant_steps * step, FLOAT_ATOL), 0.0, precision, quant_steps, step, span)
    if not given:
        return steps
    spec = Tolerance(FLOAT_ATOL if atol is None else atol, FLOAT_RTOL if rtol is None else rtol)
    if spec.atol >= steps.atol:
        return spec
    return dataclasses.replace(steps, rtol=spec.rtol, spec_atol=spec.atol)


def compare_arrays(actual, expected, *, atol: float, rtol: float, worst: int = 5) -> dict:
    """pytest-regressions style statistics of |actual - expected| against atol + rtol * |expected|."""
    import torch

    a, e = actual.double(), expected.double()
    diff = (a - e).abs()
    # the same NaN or Inf on both sides is no difference (the finite check reports them)
    same = (torch.isnan(a) & torch.isnan(e)) | (torch.isinf(a) & (a == e))
    diff = torch.where(same, torch.zeros_like(diff), diff)
    rel = diff / e.abs().clamp_min(1e-12)
    bad = diff > atol + rtol * e.abs()
    bad = bad | torch.isnan(a) ^ torch.isnan(e)
    n_bad = int(bad.sum())
    # the smallest atol that would have passed at this rtol (inf where NaN meets a number)
    need = (diff - rtol * e.abs()).clamp_min(0)
    need = torch.where(torch.isnan(a) ^ torch.isnan(e), torch.full_like(need, float("inf")), need)
    min_atol = float(need.max()) if need.numel() else 0.0
    flat = diff.flatten()
    order = torch.argsort(flat, descending=True)[:worst]
    rows = []
    for idx in order.tolist():
        pos = list(_unravel(idx, tuple(a.shape)))
        rows.append((pos, float(a.flatten()[idx]), float(e.flatten()[idx]), float(flat[idx])))
    return {
        "shape": tuple(a.shape),
        "mismatched": n_bad,
        "total": a.numel(),
        "max_abs": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs": float(diff.mean()) if diff.numel() else 0.0,
        "max_rel": float(rel.max()) if rel.numel() else 0.0,
        "mean_rel": float(rel.mean()) if rel.numel() else 0.0,
        "min_atol": min_atol,
        "worst": rows,
    }


def _unravel(idx: int, shape: tuple) -> list[int]:
    out = []
    for d in reversed(shape):
        out.append(idx % d)
        idx //= d
    return list(reversed(out))


def render_mismatch(st: dict, *, what: str, left: str, right: str, atol: float, rtol: float, hint: str = "") -> str:
    pct = 100.0 * st["mismatched"] / max(st["total"], 1)
    lines = [
        f"{what} (atol {fmt_num(atol)}, rtol {fmt_num(rtol)}): |{left} - {right}| <= atol + rtol * |{right}| failed"
    ]
    if hint:
        lines.append(hint)
    lines += [
        f"  shape: {st['shape']}",
        f"  mismatched elements: {st['mismatched']} / {st['total']} ({pct:.2f}%)",
        f"  max abs diff: {fmt_num(st['max_abs'])}   mean abs diff: {fmt_num(st['mean_abs'])}",
        f"  max rel diff: {fmt_num(st['max_rel'])}   mean rel diff: {fmt_num(st['mean_rel'])}",
        f"  minimum required atol: {fmt_num(st['min_atol'])} (at rtol {fmt_num(rtol)})",
        "  worst elements:",
        f"    {'index':<14}{left:>14}{right:>14}{'abs diff':>12}",
    ]
    for pos, av, ev, d in st["worst"]:
        lines.append(f"    {str(pos):<14}{av:>14.6g}{ev:>14.6g}{d:>12.4g}")
    return "\n".join(lines)


def nonfinite(t) -> dict | None:
    """Where a tensor holds NaN or Inf: counts and the first sample and output index, or None.

    The first sample is the first row (batch index); the output index is the position inside
    that row's output, so a message can point at both."""
    import torch

    t = t.detach()
    if not t.is_floating_point():
        return None
    bad = ~torch.isfinite(t)
    n_bad = int(bad.sum())
    if not n_bad:
        return None
    first = int(torch.nonzero(bad.flatten())[0])
    pos = _unravel(first, tuple(t.shape))
    return {
        "nan": int(torch.isnan(t).sum()),
        "posinf": int(torch.isposinf(t).sum()),
        "neginf": int(torch.isneginf(t).sum()),
        "bad": n_bad,
        "total": t.numel(),
        "first_sample": pos[0] if pos else 0,
        "first_index": pos[1:],
        "first_value": float(t.flatten()[first]),
    }


def describe_nonfinite(info: dict, *, whose: str) -> str:
    """``the variant's outputs contain 4,500 NaN of 4,500; first at sample 0, output index [3]``."""
    kinds = [f"{info[k]:,} {name}" for k, name in (("nan", "NaN"), ("posinf", "+Inf"), ("neginf", "-Inf")) if info[k]]
    where = f"first at sample {info['first_sample']}"
    if info["first_index"]:
        where += f", output index {info['first_index']}"
    return f"{whose} contain {' and '.join(kinds)} of {info['total']:,} values; {where}"
