"""The snapshot check: the reloaded outputs against the approved syrupy snapshot for this
machine class (:mod:`deploycheck.snapshots` does the storing and comparing)."""

from __future__ import annotations

from .. import machine, snapshots
from ..metrics import resolve
from ..recipes.quantize import saturation_hint
from ..target import Target
from .base import CHECKS, Verdict, check
from .quality import where_it_departs

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
    out = snapshots.assert_matches(item, data, settings=st, current=current, precision=t.variant.precision)
    cmp, rel = out.comparison, out.path
    details = {
        "snapshot": rel,
        "created": out.created,
        "updated": out.updated,
        "probes": data["probes"],
        "isa_class": current,
        "approved_on": cmp.reference if cmp else None,
        "rule": cmp.rule.name if cmp and cmp.rule else None,
    }
    if out.ok:
        state = "created" if out.created else "updated" if out.updated else "matches"
        how = (snapshots.describe_rule(cmp) if cmp else "") if state == "matches" else f"entry for {current}"
        return Verdict(passed=True, formula=f"snapshot {state}: {rel} ({how})", value=state, details=details)
    if out.missing:
        # short: a first run has one such item per variant and format; how to approve them is said
        # once, before the first test runs and in the summary (plugin, report)
        msg = f"new snapshot, not approved yet: {rel} (pytest --snapshot-update records it)"
        return Verdict(passed=False, message=msg, formula="snapshot missing", value="missing", details=details)
    if isinstance(out.error, snapshots.UnreadableSnapshot):
        msg = (
            f"approved snapshot {rel} does not parse: {out.error}; it is left as it is, even with "
            "--snapshot-update: resolve it by hand (keep every machine's entry), or delete it and record it anew"
        )
        return Verdict(passed=False, message=msg, formula="snapshot unreadable", value="error", details=details)
    if out.error is not None:
        msg = f"snapshot {rel} could not be compared: {type(out.error).__name__}: {out.error}"
        return Verdict(passed=False, message=msg, formula="snapshot unreadable", value="error", details=details)
    cmp = cmp or snapshots.Comparison(problems=["unknown"])
    where, det = where_it_departs(runner, t) if cmp.values and cmp.values.get("mismatched") else ("", {})
    msg = snapshots.render_drift(cmp, where=rel) + saturation_hint(t.variant.steps) + where
    details.update(det)
    rule = cmp.rule
    return Verdict(
        passed=False,
        message=msg,
        formula=f"snapshot drift: {', '.join(cmp.problems)}",
        value="drift",
        threshold={"atol": rule.atol, "rtol": rule.rtol} if rule else None,
        details=details,
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
