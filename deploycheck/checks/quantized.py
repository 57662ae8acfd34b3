"""Quantized (variant level): an integer quantize step must have converted what it targets.

A quantize step that leaves most of its layers in float builds, exports, reloads and passes every
accuracy check (a float model is accurate), and its artifact reads like an int8 one. This check
reads what the step converted from the model it returned (:mod:`deploycheck.recipes.coverage`)
and gates the share of the targeted weights that ended up quantized.
"""

from __future__ import annotations

from ..errors import StageError
from ..numeric import fmt_num
from ..recipes.coverage import describe
from ..recipes.quantize import INT_METHODS, QuantizeConfig
from ..target import Target
from .base import Bound, Gate, Verdict, check


def _applies(t: Target) -> bool:
    return not t.made_elsewhere and any(
        isinstance(s, QuantizeConfig) and s.method in INT_METHODS for s in t.variant.steps
    )


@check("quantized", level="variant", applies=_applies)
def quantized_check(runner, t: Target) -> Verdict:
    th = t.variant.thresholds.quantized
    built = runner.built(t)
    gate = Gate()
    steps = []
    for i, rec in enumerate(built.steps):
        facts = rec.details.get("coverage")
        if not rec.recipe.startswith("quantize:") or facts is None:
            continue
        n, done, frac = facts["targeted_layers"], facts["converted_layers"], float(facts["fraction"])
        where = f"step {i + 1} ({rec.recipe})"
        if n == 0:  # a step that targeted nothing quantized nothing: never a pass by default
            gate.add(False, f"{where}: targeted no layer (no module of its types is left after `skip`)")
            steps.append({"step": i + 1, "recipe": rec.recipe, "shown": f"{where}: targeted no layer", **facts})
            continue
        shown = f"{where}: quantized fraction {fmt_num(frac)} of the targeted weights ({done} of {n} layers)"
        gate.bound(
            Bound.at_least("min_fraction", th.min_fraction),
            frac,
            shown,
            tail=f"\n  left in float: {describe(facts['float'])}" if facts.get("float") else "",
        )
        steps.append({"step": i + 1, "recipe": rec.recipe, "shown": shown, **facts})
    if not steps:  # applies() saw a quantize step, so its record must be there
        raise StageError.at(t, "check", "no quantize step of the built variant recorded what it converted")
    message = ""
    if not gate.ok:
        static = any(s["recipe"].startswith("quantize:static_int8") for s in steps)
        message = (
            gate.formula()
            + "\n  the variant would ship these layers in float while named as quantized: change the recipe "
            + ("(method, or a model whose layers the quantizer handles)" if static else "(modules, backend, method)")
            + ", or accept the float layers by naming them in `skip` or by lowering thresholds.quantized.min_fraction"
        )
    if th.min_fraction == 0:  # nothing was checked: reported, never a pass
        return Verdict(
            passed=True,
            formula="; ".join(s["shown"] for s in steps) + "; not gated (thresholds.quantized.min_fraction is 0)",
            value=min(s["fraction"] for s in steps),
            details={"steps": steps},
            outcome="not_gated",
        )
    return Verdict(
        passed=gate.ok,
        message=message,
        formula=gate.formula(),
        value=min(s["fraction"] for s in steps),
        threshold={"min_fraction": th.min_fraction},
        details={"steps": steps},
    )
