"""Output snapshots through syrupy, compared with the spec's tolerances.

A syrupy extension in its four roles:
- serializer: a probe set's outputs, top-k labels, summary statistics and the metric as JSON
  numbers (rounded to 7 significant digits, far inside any useful tolerance), one probe per line,
  so a release diff reads well and the bytes are stable on one machine;
- storage: syrupy's single-file layout, ``__snapshots__/<spec file>/<spec>.<variant>.<format>.snapshot.json``
  next to the spec: one file per item, so pytest-xdist workers never write the same file;
- comparator: atol/rtol on values, a label agreement rate and a metric drift limit; a snapshot
  that matches within tolerance is not rewritten by ``--snapshot-update`` (no churn);
- reporter: the pytest-regressions style drift message, built from the last comparison.

syrupy only tracks ``pytest.Function`` items; :func:`enable_for_items` teaches its session
about deploycheck's snapshot items so unused-snapshot reports and ``--snapshot-update`` cleanup
cover them, with and without xdist.
"""

from __future__ import annotations

import json
import math
from typing import Any

from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

FORMAT_VERSION = 1


def _round(x: float) -> float:
    if x is None or not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def snapshot_data(*, spec, vname: str, fmt: str, outputs, metric_name: str, metric: float, top_k: int) -> dict:
    """What is frozen for one variant and format: plain numbers, never repr strings."""
    o = outputs.float()
    flat = o.reshape(len(o), -1)
    data: dict[str, Any] = {"deploycheck_snapshot": FORMAT_VERSION, "spec": spec.name, "variant": vname, "format": fmt,
                            "probes": int(len(o)), "shape": list(o.shape[1:]),
                            "metric": {"name": metric_name, "value": _round(metric)},
                            "stats": {"mean": _round(flat.mean().item()), "std": _round(flat.std().item()) if flat.numel() > 1 else 0.0,
                                      "min": _round(flat.min().item()), "max": _round(flat.max().item())}}
    if o.ndim == 2 and o.shape[1] > 1:
        k = min(top_k, o.shape[1])
        data["labels"] = o.topk(k, dim=1).indices.tolist()
    data["outputs"] = [[_round(v) for v in row] for row in flat.tolist()]
    return data


def dumps(data: dict) -> str:
    """Stable, review-friendly JSON: one probe per line."""
    head = {k: v for k, v in data.items() if k not in ("labels", "outputs")}
    lines = ["{"]
    for k in sorted(head):
        lines.append(f"  {json.dumps(k)}: {json.dumps(head[k], sort_keys=True)},")
    for key in ("labels", "outputs"):
        if key in data:
            rows = ",\n".join(f"    {json.dumps(r)}" for r in data[key])
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ],")
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


def compare(old: dict, new: dict, *, settings) -> dict:
    """Tolerant comparison; returns {'ok': bool, 'problems': [...], and statistics for the message}."""
    import torch
    from .checks import compare_arrays
    problems: list[str] = []
    out: dict[str, Any] = {"problems": problems}
    if old.get("deploycheck_snapshot") != FORMAT_VERSION:
        problems.append("the stored snapshot has another format version")
    if old.get("shape") != new.get("shape") or len(old.get("outputs", [])) != len(new.get("outputs", [])):
        problems.append(f"output shape changed: {len(old.get('outputs', []))} probes × {old.get('shape')} -> "
                        f"{len(new.get('outputs', []))} probes × {new.get('shape')}")
        out["ok"] = False
        return out
    a = torch.tensor(new["outputs"], dtype=torch.float64)
    e = torch.tensor(old["outputs"], dtype=torch.float64)
    st = compare_arrays(a, e, atol=settings.atol, rtol=settings.rtol)
    out["values"] = st
    if st["mismatched"]:
        problems.append("values")
    if "labels" in old and "labels" in new:
        top_old = [r[0] for r in old["labels"]]
        top_new = [r[0] for r in new["labels"]]
        changed = [i for i, (x, y) in enumerate(zip(top_old, top_new)) if x != y]
        agreement = 1 - len(changed) / max(len(top_old), 1)
        out["labels"] = {"changed": changed, "agreement": agreement, "old": top_old, "new": top_new}
        if agreement < settings.min_label_agreement:
            problems.append("labels")
    mo, mn = old.get("metric", {}).get("value"), new.get("metric", {}).get("value")
    out["metric"] = {"name": new.get("metric", {}).get("name"), "old": mo, "new": mn}
    if mo is not None and mn is not None and abs(mn - mo) > settings.max_metric_drift:
        problems.append("metric")
    out["ok"] = not problems
    return out


def render_drift(cmp: dict, *, settings, where: str) -> str:
    from .checks import fmt_num, render_mismatch
    lines = [f"outputs drifted from the approved snapshot ({where}): {', '.join(cmp['problems'])} moved beyond tolerance",
             "  accept the new behaviour after review with: pytest --snapshot-update"]
    if "values" in cmp and cmp["values"]["mismatched"]:
        lines.append(render_mismatch(cmp["values"], what="  values", left="new", right="approved",
                                     atol=settings.atol, rtol=settings.rtol))
    if "labels" in cmp:
        lb = cmp["labels"]
        lines.append(f"  labels: agreement {lb['agreement']:.1%} (min {settings.min_label_agreement:.1%}); "
                     f"{len(lb['changed'])} probe(s) changed their top label"
                     + "".join(f"\n    probe {i}: {lb['old'][i]} -> {lb['new'][i]}" for i in lb["changed"][:5]))
    m = cmp.get("metric") or {}
    if m.get("old") is not None:
        lines.append(f"  metric {m['name']}: approved {fmt_num(m['old'])} -> now {fmt_num(m['new'])} "
                     f"(drift {m['new'] - m['old']:+.3g}, max_metric_drift {fmt_num(settings.max_metric_drift)})")
    if cmp["problems"] and cmp["problems"][0].startswith(("output shape", "the stored")):
        lines.append("  " + cmp["problems"][0])
    return "\n".join(lines)


class DeploycheckSnapshotExtension(SingleFileSnapshotExtension):
    """syrupy extension with a tolerance-aware comparator; ``settings`` is set per assertion."""

    file_extension = "json"
    _write_mode = WriteMode.TEXT
    settings: Any = None
    last: dict | None = None

    def serialize(self, data, *, exclude=None, include=None, matcher=None) -> str:
        return dumps(data) if isinstance(data, dict) else str(data)

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        try:
            old, new = json.loads(snapshot_data), json.loads(serialized_data)
        except (TypeError, ValueError):
            self.last = {"ok": False, "problems": ["the stored snapshot is not valid JSON"]}
            return False
        if self.settings is None:
            return old == new
        self.last = compare(old, new, settings=self.settings)
        return self.last["ok"]


def enable_for_items() -> None:
    """Let syrupy's session track deploycheck's snapshot items besides pytest.Function.

    Items are recognised by an attribute, not by class identity, so the patch stays right when
    deploycheck is imported again in one process (pytester's in-process runs do that)."""
    import pytest
    from syrupy.session import SnapshotSession
    if getattr(SnapshotSession.filter_valid_items, "_deploycheck", False):
        return

    def filter_valid_items(items):
        return (i for i in items if isinstance(i, pytest.Function) or getattr(i, "syrupy_compatible", False))

    filter_valid_items._deploycheck = True
    SnapshotSession.filter_valid_items = staticmethod(filter_valid_items)
