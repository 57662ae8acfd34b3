"""Batch invariance (variant level): a sample's outputs must not depend on the other samples in
its batch, as they do where activations are quantized per batch (dynamic int8)."""

from __future__ import annotations

from ..metrics import resolve
from ..numeric import fmt_num
from ..outputs import pick
from ..protocol import concat_inputs, rows, take
from ..target import Target
from .base import Bound, Gate, Verdict, check


def _bi_applies(t: Target) -> bool:
    """Where the spec says so, else where a recipe step makes outputs depend on the batch."""
    on = t.variant.thresholds.batch_invariance.enabled
    return t.variant.batch_sensitive if on is None else on


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
    m = resolve(t.spec)
    if alone.ndim == 2 and alone.shape[1] > 1 and (m.needs_labels or m.vs_baseline):  # classifiers: predictions
        changed = int(((alone.argmax(1) != batched.argmax(1)) | (alone.argmax(1) != rev.argmax(1))).sum())
    gate = Gate()
    gate.bound(Bound.at_most("atol", th.atol), diff, f"max |alone - batched| {fmt_num(diff)}")
    gate.bound(
        Bound(th.max_changed_predictions, True, f"max_changed_predictions {th.max_changed_predictions}"),
        changed,
        f"changed predictions {changed}",
        tail=f" ({n} probes, batches of {n + n_fill})",
    )
    formula = "; ".join(gate.every)  # both numbers, whichever failed
    return Verdict(
        passed=gate.ok,
        message="" if gate.ok else formula,
        formula=formula,
        value=diff,
        threshold={"atol": th.atol, "max_changed_predictions": th.max_changed_predictions},
        details={"max_diff": diff, "changed_predictions": changed, "probes": n},
    )
