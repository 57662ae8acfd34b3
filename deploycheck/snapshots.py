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

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
from syrupy.location import PyTestLocation

from .numeric import LEVELS, compare_arrays, fmt_num, render_mismatch
from .outputs import pick
from .spec import SpecError, parse_file
from .spec.loader import may_be_spec

FORMAT_VERSION = 2


def _round(x: float) -> float:
    if x is None or not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def snapshot_data(
    *,
    spec,
    vname: str,
    fmt: str,
    outputs,
    metric_name: str,
    metric: float,
    top_k: int,
    classifier: bool,
    machine: dict,
    isa_class: str,
    metric_output: str | None = None,
) -> dict:
    """What is frozen for one variant and format on this machine's ISA class: plain numbers only.

    ``outputs`` is one tensor or the named outputs; a model with one output is stored as it always
    was, one with several stores every output by name (``shape`` and ``outputs`` become mappings),
    statistics and labels come from the output the metric reads.
    ``labels`` (top-k classes per probe) are stored only for classifiers: the arg-max dimension
    of an embedding or a regression output is not a label."""
    named = outputs if isinstance(outputs, dict) else {"0": outputs}
    o = pick(named, metric_output).float()
    flat = o.reshape(len(o), -1)
    entry: dict[str, Any] = {
        "machine": machine,
        "metric": {"name": metric_name, "value": _round(metric)},
        "stats": {
            "mean": _round(flat.mean().item()),
            "std": _round(flat.std().item()) if flat.numel() > 1 else 0.0,
            "min": _round(flat.min().item()),
            "max": _round(flat.max().item()),
        },
    }
    if classifier and o.ndim == 2 and o.shape[1] > 1:
        k = min(top_k, o.shape[1])
        entry["labels"] = o.topk(k, dim=1).indices.tolist()
    if len(named) == 1:
        entry["outputs"] = _rows(o)
        shape: Any = list(o.shape[1:])
    else:
        entry["outputs"] = {n: _rows(v.float()) for n, v in named.items()}
        shape = {n: list(v.shape[1:]) for n, v in named.items()}
    return {
        "deploycheck_snapshot": FORMAT_VERSION,
        "spec": spec.name,
        "variant": vname,
        "format": fmt,
        "probes": int(len(o)),
        "shape": shape,
        "entries": {isa_class: entry},
    }


def _rows(o) -> list:
    return [[_round(v) for v in row] for row in o.reshape(len(o), -1).tolist()]


def merged(stored: dict | None, new: dict) -> dict:
    """The document to assert: every approved entry of other classes kept, this class's entry new.

    ``--snapshot-update`` writes it, so approving this machine never drops another machine's entry."""
    if not stored:
        return new
    if (
        stored.get("deploycheck_snapshot") != FORMAT_VERSION
        or stored.get("shape") != new["shape"]
        or stored.get("probes") != new["probes"]
    ):
        return new  # the outputs' shape changed: other machines' entries describe another model
    entries = {k: v for k, v in (stored.get("entries") or {}).items() if k not in new["entries"]}
    entries.update(new["entries"])
    return {**new, "entries": dict(sorted(entries.items()))}


def dumps(data: dict) -> str:
    """Stable, review-friendly JSON: one entry per ISA class, one probe per line."""
    head = {k: v for k, v in data.items() if k != "entries"}
    lines = ["{"]
    for k in sorted(head):
        lines.append(f"  {json.dumps(k)}: {json.dumps(head[k], sort_keys=True)},")
    lines.append('  "entries": {')
    blocks = []
    for cls in sorted(data.get("entries") or {}):
        e = data["entries"][cls]
        sub = [f"    {json.dumps(cls)}: {{"]
        for k in sorted(x for x in e if x not in ("labels", "outputs")):
            sub.append(f"      {json.dumps(k)}: {json.dumps(e[k], sort_keys=True)},")
        for key in ("labels", "outputs"):
            if isinstance(e.get(key), dict):  # several outputs: one block per output, one probe per line
                parts = []
                for name, rows_of in e[key].items():
                    rows = ",\n".join(f"          {json.dumps(r)}" for r in rows_of)
                    parts.append(f"        {json.dumps(name)}: [\n{rows}\n        ]")
                sub.append(f"      {json.dumps(key)}: {{\n" + ",\n".join(parts) + "\n      },")
            elif key in e:
                rows = ",\n".join(f"        {json.dumps(r)}" for r in e[key])
                sub.append(f"      {json.dumps(key)}: [\n{rows}\n      ],")
        sub[-1] = sub[-1].rstrip(",")
        sub.append("    }")
        blocks.append("\n".join(sub))
    lines.append(",\n".join(blocks))
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Rule:
    """The tolerances one comparison used, and why."""

    name: str  # "same-class" or "cross-machine"
    atol: float
    rtol: float
    min_label_agreement: float
    max_metric_drift: float
    note: str = ""


def rule_for(*, settings, same_class: bool, precision: str | None, approved: dict) -> Rule:
    """Same ISA class: the spec's snapshot tolerances. Another class: the declared cross-machine
    rule, whose atol for reduced-precision variants (int8, fp16, bf16) is also ``quant_steps``
    steps of that precision over the approved output range: their kernels round differently per
    ISA, by whole steps."""
    if same_class:
        return Rule("same-class", settings.atol, settings.rtol, settings.min_label_agreement, settings.max_metric_drift)
    cm = settings.cross_machine
    atol, note = max(cm.atol, settings.atol), ""
    if precision in LEVELS:
        st = approved.get("stats") or {}
        span = (st.get("max") or 0.0) - (st.get("min") or 0.0)
        levels = LEVELS[precision]
        step = span / levels
        if cm.quant_steps * step > atol:
            atol = cm.quant_steps * step
            note = (
                f" ({precision}: {fmt_steps(cm.quant_steps)} quantization steps of {step:.3g} = output range "
                f"{span:.4g} / {levels:g})"
            )
    return Rule(
        "cross-machine",
        atol,
        max(cm.rtol, settings.rtol),
        min(cm.min_label_agreement, settings.min_label_agreement),
        max(cm.max_metric_drift, settings.max_metric_drift),
        note,
    )


def fmt_steps(x: float) -> str:
    return f"{x:g}"


def pick_reference(entries: dict, current: str) -> tuple[str, dict] | None:
    """The approved entry to compare with: this class's own, else a real (not emulated) machine's."""
    if current in entries:
        return current, entries[current]
    if not entries:
        return None
    ranked = sorted(entries, key=lambda c: ("emulated" in c, c))
    return ranked[0], entries[ranked[0]]


@dataclass
class Comparison:
    """One tolerant comparison of this class's entry with the approved one (see :func:`compare`):
    ``ok``, the ``problems`` that failed it (words: "values", "labels", "metric", or a sentence
    when the files could not be compared at all), and the statistics the drift message shows."""

    ok: bool = False
    problems: list[str] = field(default_factory=list)
    current: str = ""  # this machine's ISA class
    reference: str | None = None  # the ISA class of the approved entry it was judged against
    missing_class: bool = False  # this ISA class has no approved entry yet
    rule: Rule | None = None
    values: dict[str, Any] | None = None  # the worst output's compare_arrays statistics
    values_by_output: dict[str, dict[str, Any]] | None = None  # every output's, with more than one
    labels: dict[str, Any] | None = None  # changed, agreement, old, new
    metric: dict[str, Any] | None = None  # name, old, new


def compare(old: dict, new: dict, *, settings, current: str, precision: str | None) -> Comparison:
    """Tolerant comparison of this class's entry with the approved one it is judged against."""
    import torch

    out = Comparison(current=current)
    problems = out.problems
    if old.get("deploycheck_snapshot") != FORMAT_VERSION:
        problems.append("the stored snapshot has another format version")
        return out
    mine = new["entries"][current]
    ref = pick_reference(old.get("entries") or {}, current)
    if ref is None:
        problems.append("the stored snapshot has no approved entry")
        return out
    ref_class, approved = ref
    out.reference = ref_class
    out.missing_class = ref_class != current
    mine_o, old_o = _by_output(mine.get("outputs", [])), _by_output(approved.get("outputs", []))
    n_old, n_new = (len(next(iter(x.values()), [])) for x in (old_o, mine_o))
    if old.get("shape") != new.get("shape") or n_old != n_new or list(old_o) != list(mine_o):
        problems.append(
            f"output shape changed: {n_old} probes × {old.get('shape')} -> {n_new} probes × {new.get('shape')}"
        )
        return out
    rule = rule_for(settings=settings, same_class=ref_class == current, precision=precision, approved=approved)
    out.rule = rule
    per = {}
    for name in mine_o:
        a = torch.tensor(mine_o[name], dtype=torch.float64)
        e = torch.tensor(old_o[name], dtype=torch.float64)
        per[name] = compare_arrays(a, e, atol=rule.atol, rtol=rule.rtol)
    worst = max(per, key=lambda n: (per[n]["mismatched"] > 0, per[n]["max_abs"]))
    out.values = per[worst]
    if len(per) > 1:
        out.values_by_output = per
    if any(st["mismatched"] for st in per.values()):
        problems.append("values")
    if "labels" in approved and "labels" in mine:
        top_old = [r[0] for r in approved["labels"]]
        top_new = [r[0] for r in mine["labels"]]
        changed = [i for i, (x, y) in enumerate(itertools.zip_longest(top_old, top_new)) if x != y]
        agreement = 1 - len(changed) / max(len(top_old), 1)
        out.labels = {"changed": changed, "agreement": agreement, "old": top_old, "new": top_new}
        if agreement < rule.min_label_agreement:
            problems.append("labels")
    mo, mn = approved.get("metric", {}).get("value"), mine.get("metric", {}).get("value")
    out.metric = {"name": mine.get("metric", {}).get("name"), "old": mo, "new": mn}
    if mo is not None and mn is not None and not (abs(mn - mo) <= rule.max_metric_drift):
        problems.append("metric")
    out.ok = not problems
    return out


def _by_output(stored: Any) -> dict:
    """A snapshot entry's ``outputs`` by output name (one unnamed output as it was always stored)."""
    return stored if isinstance(stored, dict) else {"0": stored}


def describe_rule(cmp: Comparison) -> str:
    """Which approved entry was used and under which rule: never silently weaker."""
    rule = cmp.rule
    if rule is None:
        return ""
    if rule.name == "same-class":
        return f"approved on {cmp.reference}, compared on the same class"
    return (
        f"approved on {cmp.reference}, compared on {cmp.current} by the cross-machine rule: "
        f"atol {fmt_num(rule.atol)}{rule.note}, rtol {fmt_num(rule.rtol)}, labels >= {rule.min_label_agreement:.0%}, "
        f"metric drift <= {fmt_num(rule.max_metric_drift)}; approve this class with `pytest --snapshot-update`"
    )


def render_drift(cmp: Comparison, *, where: str) -> str:
    rule = cmp.rule
    lines = [f"outputs drifted from the approved snapshot ({where}): {', '.join(cmp.problems)} moved beyond tolerance"]
    if cmp.reference:
        lines.append("  " + describe_rule(cmp))
    lines.append("  accept the new behaviour after review with: pytest --snapshot-update")
    by = cmp.values_by_output or ({"": cmp.values} if cmp.values is not None else {})
    for name, st in by.items():
        if st["mismatched"] and rule is not None:
            lines.append(
                render_mismatch(
                    st,
                    what=f"  values of output {name!r}" if name else "  values",
                    left="new",
                    right="approved",
                    atol=rule.atol,
                    rtol=rule.rtol,
                )
            )
    if rule is not None and cmp.labels is not None:
        lb = cmp.labels
        lines.append(
            f"  labels: agreement {lb['agreement']:.1%} (min {rule.min_label_agreement:.1%}); "
            f"{len(lb['changed'])} probe(s) changed their top label"
            + "".join(f"\n    probe {i}: {lb['old'][i]} -> {lb['new'][i]}" for i in lb["changed"][:5])
        )
    m = cmp.metric or {}
    if rule is not None and m.get("old") is not None and m.get("new") is not None:
        lines.append(
            f"  metric {m['name']}: approved {fmt_num(m['old'])} -> now {fmt_num(m['new'])} "
            f"(drift {m['new'] - m['old']:+.3g}, max_metric_drift {fmt_num(rule.max_metric_drift)})"
        )
    if cmp.problems and cmp.problems[0].startswith(("output shape", "the stored")):
        lines.append("  " + cmp.problems[0])
    return "\n".join(lines)


class DeploycheckSnapshotExtension(SingleFileSnapshotExtension):
    """syrupy extension with a tolerance-aware comparator; ``settings`` is set per assertion."""

    file_extension = "json"
    _write_mode = WriteMode.TEXT
    settings: Any = None  # the spec's SnapshotSettings, set per assertion
    current: str = ""  # this machine's ISA class
    precision: str | None = None  # int8 / fp16 / bf16 variants: cross-machine atol in quantization steps
    update: bool = False  # --snapshot-update is on
    last: Comparison | None = None

    def serialize(self, data, *, exclude=None, include=None, matcher=None) -> str:
        return dumps(data) if isinstance(data, dict) else str(data)

    def matches(self, *, serialized_data, snapshot_data) -> bool:
        try:
            old, new = json.loads(snapshot_data), json.loads(serialized_data)
        except (TypeError, ValueError):
            self.last = Comparison(problems=["the stored snapshot is not valid JSON"])
            return False
        if self.settings is None:
            return old == new
        self.last = compare(old, new, settings=self.settings, current=self.current, precision=self.precision)
        if self.update and self.last.missing_class:
            return False  # --snapshot-update records this class's entry next to the others
        return self.last.ok


@dataclass
class Outcome:
    """What syrupy decided for one snapshot item."""

    ok: bool
    created: bool
    updated: bool
    missing: bool  # no approved snapshot on disk
    error: BaseException | None  # the stored file could not be read or compared
    comparison: Comparison | None = None  # :func:`compare`'s result, when it ran
    path: str = ""  # the snapshot file, relative to the rootdir


class UnreadableSnapshot(ValueError):
    """An approved snapshot file that does not parse: an error, never rewritten by ``--snapshot-update``
    (it may hold other machines' approved entries, or both sides of a merge)."""


CONFLICT = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)


def parse_stored(text: str) -> dict:
    """An approved snapshot document, or UnreadableSnapshot saying why (merge-conflict markers, bad JSON)."""
    m = CONFLICT.search(text)
    if m:
        line = text[: m.start()].count("\n") + 1
        raise UnreadableSnapshot(f"it holds merge-conflict markers (line {line}: {m.group(1)})")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UnreadableSnapshot(f"it is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UnreadableSnapshot(f"it holds a JSON {type(data).__name__}, not a deploycheck snapshot")
    return data


def assert_matches(item, data: dict, *, settings, current: str, precision: str | None) -> Outcome:
    """Compare ``data`` with the item's approved snapshot through syrupy (which also writes it on
    ``--snapshot-update`` and reports unused snapshots). The only place that talks to syrupy's API."""
    opt = item.config.option
    snap = SnapshotAssertion(
        update_snapshots=opt.update_snapshots,
        update_new_snapshots_only=getattr(opt, "update_new_snapshots_only", False),
        extension_class=DeploycheckSnapshotExtension,
        test_location=PyTestLocation(item),
        session=item.config._syrupy,
    )
    location = snap.extension.get_location(test_location=snap.test_location, index=0)
    rel = os.path.relpath(location, str(item.config.rootpath))
    try:
        with open(location, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        stored = None
    except (OSError, ValueError) as e:  # never overwrite a file that could not be read
        return Outcome(False, False, False, False, UnreadableSnapshot(f"cannot be read: {e}"), None, rel)
    else:
        try:
            stored = parse_stored(text)
        except UnreadableSnapshot as e:
            return Outcome(False, False, False, False, e, None, rel)
    ext = snap.extension
    assert isinstance(ext, DeploycheckSnapshotExtension)
    ext.settings, ext.current, ext.precision, ext.update = settings, current, precision, bool(opt.update_snapshots)
    ok = snap == merged(stored, data)
    result = snap.executions[0]
    return Outcome(ok, result.created, result.updated, result.recalled_data is None, result.exception, ext.last, rel)


def snapshot_file(item) -> str:
    """Where syrupy keeps the snapshot of a snapshot item (absolute), found without asserting."""
    return DeploycheckSnapshotExtension().get_location(test_location=PyTestLocation(item), index=0)


def new_snapshot_files(items) -> list[str]:
    """The snapshot files the snapshot items among ``items`` would compare with that do not exist
    yet (a new spec, variant or format): each such item fails until the snapshot is approved."""
    out = []
    for item in items:
        if getattr(item, "syrupy_compatible", False) and not item.get_closest_marker("skip"):
            path = snapshot_file(item)
            if not os.path.exists(path):
                out.append(os.path.relpath(path, str(item.config.rootpath)))
    return out


def new_snapshots_note(items) -> str | None:
    """The note printed once, before the first test runs, when some snapshots are new: their items
    fail (as syrupy's do), and this says why once, instead of burying real failures under them."""
    opt = items[0].config.option if items else None
    if opt is None or opt.update_snapshots:
        return None
    new = new_snapshot_files(items)
    if not new:
        return None
    n = len(new)
    return (
        f"deploycheck: {n} snapshot{'s are' if n != 1 else ' is'} new (no approved file yet, e.g. {new[0]}): "
        f"{'their items fail' if n != 1 else 'its item fails'} until approved, as syrupy's do; record "
        f"{'them' if n != 1 else 'it'} with `pytest --snapshot-update`, review and commit"
    )


def make_locatable(item) -> None:
    """syrupy locates a snapshot by its test function (``obj.__module__``, ``obj.__name__``) and
    path: give a non-function item a stand-in."""

    def snapshot():
        pass

    snapshot.__module__ = item.path.stem
    item.obj = snapshot
    item.syrupy_compatible = True


def enable_for_items(*, declared: Callable[[Any], set[str]]) -> None:
    """Let syrupy's session track deploycheck's snapshot items besides pytest.Function.

    Items are recognised by an attribute, not by class identity, so the patch stays right when
    deploycheck is imported again in one process (pytester's in-process runs do that). The
    session class is looked up now, not at import: an in-process run may hold a fresh syrupy."""
    from syrupy.session import SnapshotSession

    if getattr(SnapshotSession.filter_valid_items, "_deploycheck", False):
        return

    def filter_valid_items(items):
        return (i for i in items if isinstance(i, pytest.Function) or getattr(i, "syrupy_compatible", False))

    filter_valid_items._deploycheck = True  # type: ignore[attr-defined]  # the mark that it is patched
    SnapshotSession.filter_valid_items = staticmethod(filter_valid_items)  # type: ignore[method-assign]
    _keep_declared_snapshots(declared)


def _keep_declared_snapshots(declared: Callable[[Any], set[str]]) -> None:
    """syrupy calls a snapshot unused, and ``--snapshot-update`` deletes it, when the item that owns
    it made no assertion in this session: after ``-x``, a failed build, ``-k``, ``--lf`` or an xdist
    worker that died, approved files were lost. A deploycheck snapshot is unused only when its spec
    file parses and no longer declares it (the variant, the format or the spec's snapshots are gone);
    a spec that does not parse keeps all its files. Works on the xdist controller too: it reads the
    specs, not the items."""
    from syrupy.report import SnapshotReport

    original = SnapshotReport.__dict__["unused"]
    if getattr(original, "_deploycheck", False):
        return

    def unused(self):
        from syrupy.data import SnapshotCollections

        out = SnapshotCollections()
        for collection in original.func(self):
            if not still_declared(collection.location, declared):
                out.add(collection)
        return out

    unused.__name__ = "unused"
    prop = functools.cached_property(unused)
    prop.__set_name__(SnapshotReport, "unused")
    prop._deploycheck = True  # type: ignore[attr-defined]
    SnapshotReport.unused = prop  # type: ignore[method-assign,assignment]


def still_declared(location: str, declared: Callable[[Any], set[str]]) -> bool:
    """Whether the snapshot file at ``location`` belongs to a spec that declares it, or to a spec
    that cannot be read (whose declarations are unknown): either way it must be kept."""
    folder = os.path.dirname(location)
    if os.path.basename(os.path.dirname(folder)) != "__snapshots__" or not location.endswith(".snapshot.json"):
        return False  # not a deploycheck snapshot: syrupy decides
    base = os.path.dirname(os.path.dirname(folder))
    spec_path = next(
        (
            p
            for p in (os.path.join(base, os.path.basename(folder) + ext) for ext in (".yaml", ".yml"))
            if os.path.exists(p)
        ),
        None,
    )
    if spec_path is None or not may_be_spec(spec_path):
        return False  # the spec is gone: its snapshots are stale
    try:
        spec = parse_file(spec_path)
    except SpecError:
        return True
    return os.path.basename(location) in declared(spec)
