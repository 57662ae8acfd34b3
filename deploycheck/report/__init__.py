"""Reports: per-check records -> rows (one per spec, variant, format) -> terminal, Markdown, JSON.

The JSON file is the machine-readable record of a run (schema_version 1): every check's value,
threshold, formula and verdict, plus machine info, library versions, the git commit and the
spec files' hashes. Files are written atomically.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from typing import Any

from ..machine import fingerprint
from ..machine import summary as machine_summary

SCHEMA_VERSION = 1
STATUS_ORDER = {"error": 0, "failed": 1, "unsupported": 2, "passed": 3}


def _key(rec: dict) -> tuple:
    return (rec["spec"], rec["variant"] != "baseline", rec["variant"], rec["format"] or "")


def _first(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (spec, variant, format); variant-level checks fold into every row of their variant."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["spec"], r["variant"], r["format"]), []).append(r)
    variant_level = {(s, v): recs for (s, v, f), recs in groups.items() if f is None}
    rows = []
    for (s, v, f), recs in sorted(groups.items(), key=lambda kv: _key(kv[1][0])):
        if f is None:
            continue
        allrecs = recs + variant_level.get((s, v), [])
        by = {r["check"]: r for r in recs}
        info = next((r.get("variant_info") for r in allrecs if r.get("variant_info")), {}) or {}
        det = lambda c: (by.get(c) or {}).get("details") or {}  # noqa: E731
        statuses = [r["status"] for r in allrecs]
        if "error" in statuses or "failed" in statuses:
            verdict = "FAIL"
        elif "unsupported" in statuses:
            verdict = "unsupported"
        else:
            verdict = "pass"
        reasons = []
        for r in allrecs:
            if r["status"] == "failed":
                reasons.append(f"{r['check']}: {_first(r.get('formula') or r.get('message')) or 'failed'}")
            elif r["status"] == "error":
                # one stage failure fails every check that needs it: name it once
                reason = _first(r.get("message")) or "error"
                if reason not in reasons:
                    reasons.append(reason)
        if verdict == "unsupported":
            reasons = [_first(next(r.get("message") for r in allrecs if r["status"] == "unsupported"))]
        load = by.get("load", {}).get("status")
        rows.append({
            "spec": s, "variant": v, "format": f, "recipe": recs[0].get("recipe"),
            "metric_name": det("metric").get("metric"), "metric": det("metric").get("value"),
            "metric_delta": det("metric").get("delta"), "max_abs_diff": det("outputs").get("max_abs"),
            "p50_ms": det("latency").get("p50_ms"), "p95_ms": det("latency").get("p95_ms"),
            "p99_ms": det("latency").get("p99_ms"), "throughput_per_s": det("latency").get("throughput_per_s"),
            "throughput": det("latency").get("throughput"),
            "latency_ratio": det("latency").get("ratio"), "latency_ratio_ci": det("latency").get("ratio_ci"),
            "peak_rss_mb": det("load").get("peak_rss_mb"), "latency_samples_ms": det("latency").get("samples_ms"),
            "size_mb": det("size").get("size_mb"), "size_ratio": det("size").get("size_ratio"),
            "params": info.get("params"), "state_ratio": info.get("state_ratio"), "sparsity": info.get("sparsity"), "build_s": info.get("build_s"),
            "load": {"passed": "ok (cached)" if det("load").get("cached") else "ok", "error": "FAILED",
                     "unsupported": "unsupported"}.get(load, load or "-"),
            "verdict": verdict, "reason": "; ".join(reasons),
        })
    return rows


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


COLUMNS = [("spec", "spec"), ("variant", "variant"), ("format", "format"), ("recipe", "recipe"),
           ("metric", "metric"), ("metric_delta", "Δ vs base"), ("max_abs_diff", "max |Δout|"),
           ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("latency_ratio", "lat ratio"), ("size_mb", "size MB"),
           ("size_ratio", "size ratio"), ("state_ratio", "state ratio"), ("params", "params"), ("build_s", "build s"), ("sparsity", "sparsity"), ("load", "load"),
           ("verdict", "verdict")]


def _cells(row: dict) -> list[str]:
    out = []
    for key, _ in COLUMNS:
        v = row.get(key)
        if key == "metric_delta" and v is not None:
            out.append(f"{v:+.4f}")
        elif key == "sparsity" and v is not None:
            out.append(f"{v:.1%}")
        elif key == "latency_ratio" and v is not None:
            ci = row.get("latency_ratio_ci")
            out.append(f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        else:
            out.append(_f(v))
    return out


def terminal_table(rows: list[dict]) -> str:
    from tabulate import tabulate
    text = tabulate([_cells(r) for r in rows], headers=[h for _, h in COLUMNS], tablefmt="simple", disable_numparse=True)
    fails = [r for r in rows if r["verdict"] == "FAIL"]
    if fails:
        text += "\n\nfailing:\n" + "\n".join(f"  {r['spec']}::{r['variant']}::{r['format']}: {r['reason']}" for r in fails)
    return text


def summary_lines(rows: list[dict]) -> list[str]:
    """Per spec: pass/fail counts and the best variants that pass every threshold."""
    out = []
    for spec in sorted({r["spec"] for r in rows}):
        srows = [r for r in rows if r["spec"] == spec]
        ok = [r for r in srows if r["verdict"] == "pass"]
        n_fail = sum(r["verdict"] == "FAIL" for r in srows)
        line = f"{spec}: {'FAIL' if n_fail else 'pass'} ({len(ok)} passed, {n_fail} failed, " \
               f"{sum(r['verdict'] == 'unsupported' for r in srows)} unsupported)"
        sized = [r for r in ok if r.get("size_mb") is not None]
        timed = [r for r in ok if r.get("p50_ms") is not None]
        if sized:
            b = min(sized, key=lambda r: (r["size_mb"], r["variant"], r["format"]))
            line += f"; smallest passing: {b['variant']} / {b['format']} ({b['size_mb']:.4g} MB)"
        if timed:
            b = min(timed, key=lambda r: (r["p50_ms"], r["variant"], r["format"]))
            line += f"; fastest passing: {b['variant']} / {b['format']} (p50 {b['p50_ms']:.4g} ms)"
        out.append(line)
    return out


def machine_line(machine: dict) -> str:
    """The run's machine on one line; older reports (before the fingerprint) show what they have."""
    if machine.get("isa_level"):
        return machine_summary(machine)
    return "machine: " + (machine.get("processor") or machine.get("machine") or "unknown")


def markdown(rows: list[dict], meta: dict) -> str:
    from tabulate import tabulate
    n_fail = sum(r["verdict"] == "FAIL" for r in rows)
    n_pass = sum(r["verdict"] == "pass" for r in rows)
    n_uns = sum(r["verdict"] == "unsupported" for r in rows)
    machine = meta.get("machine") or {}
    out = ["# deploycheck report", "",
           f"{n_pass} passed, {n_fail} failed, {n_uns} unsupported — torch {(meta.get('libraries') or {}).get('torch', '?')}, "
           f"commit {((meta.get('git') or {}).get('commit') or 'n/a')[:12]}, {meta.get('created', '')}", "",
           machine_line(machine), ""]
    out += [f"- {line}" for line in summary_lines(rows)] + [""]
    for spec in sorted({r["spec"] for r in rows}):
        srows = [r for r in rows if r["spec"] == spec]
        out += [f"## {spec}", "",
                tabulate([_cells(r)[1:] + [r["reason"] or ""] for r in srows],
                         headers=[h for _, h in COLUMNS[1:]] + ["reason"], tablefmt="github", disable_numparse=True), ""]
    return "\n".join(out) + "\n"


def _git(rootdir: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=rootdir, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=rootdir, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def metadata(records: list[dict], rootdir: str, exitstatus: int) -> dict:
    from ..formats.integrity import library_versions
    files = sorted({r["file"] for r in records})
    hashes = {}
    for f in files:
        p = f if os.path.isabs(f) else os.path.join(rootdir, f)
        try:
            with open(p, "rb") as fh:
                hashes[f] = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            hashes[f] = None
    return {"schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "exitstatus": exitstatus,
            "machine": fingerprint(),
            "libraries": library_versions(), "git": _git(rootdir), "spec_files": hashes}


def atomic_write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_reports(records: list[dict], out_dir: str, *, rootdir: str, exitstatus: int) -> list[str]:
    meta = metadata(records, rootdir, exitstatus)
    doc = {**meta, "rows": summary_rows(records), "records": sorted(records, key=lambda r: (_key(r), r["check"]))}
    return write_documents(doc, out_dir)


def write_documents(doc: dict, out_dir: str, *, stem: str = "deploycheck") -> list[str]:
    """Write the JSON record and the Markdown and HTML renderings of one report document."""
    from .html import render
    rows = doc["rows"]
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "html", "json")}
    atomic_write(paths["json"], json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    atomic_write(paths["md"], markdown(rows, doc))
    atomic_write(paths["html"], render(rows, doc, summary_lines(rows)))
    return [paths["md"], paths["html"], paths["json"]]
