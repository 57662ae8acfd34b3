"""``deploycheck compare`` (release review: what changed between two runs) and ``merge`` (shards)."""

from __future__ import annotations

import json
import os
import sys

from . import NOT_RUN, higher_is_better, is_complete, summary_rows
from .write import write_documents


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as e:
        raise SystemExit(f"deploycheck: cannot read report {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != 1 or "rows" not in doc:
        raise SystemExit(f"deploycheck: {path} is not a deploycheck JSON report (schema_version 1)")
    return doc


def _rel(new, old):
    if new is None or old in (None, 0):
        return None
    return new / old


def compare(old: dict, new: dict, *, metric_tol: float, latency_tol: float, size_tol: float) -> list[dict]:
    """One entry per (spec, variant, format) of either run; regressions carry their reasons."""
    key = lambda r: (r["spec"], r["variant"], r["format"])  # noqa: E731
    o = {key(r): r for r in old["rows"]}
    n = {key(r): r for r in new["rows"]}
    out = []
    for k in sorted(set(o) | set(n)):
        a, b = o.get(k), n.get(k)
        reasons = []
        entry = {
            "spec": k[0],
            "variant": k[1],
            "format": k[2],
            "old_verdict": a and a["verdict"],
            "new_verdict": b and b["verdict"],
        }
        if a is None:
            entry["change"] = "added"
        elif b is None:
            entry["change"] = "removed"
            reasons.append("no longer checked")
        else:
            entry["change"] = "changed"
            if a["verdict"] == "pass" and b["verdict"] != "pass":
                reasons.append(
                    f"verdict {a['verdict']} -> {b['verdict']}" + (f" ({b['reason']})" if b.get("reason") else "")
                )
            if a.get("metric") is not None and b.get("metric") is not None:
                d = b["metric"] - a["metric"]
                entry["metric_delta"] = d
                higher = higher_is_better(b)
                worse = abs(d) if higher is None else -d if higher else d  # no direction: any move counts
                if worse > metric_tol:
                    reasons.append(
                        f"{b.get('metric_name') or 'metric'} {a['metric']:.4g} -> {b['metric']:.4g} "
                        f"({d:+.4g}, beyond ±{metric_tol:g})"
                    )
            lr = _rel(b.get("p50_ms"), a.get("p50_ms"))
            entry["latency_ratio"] = lr
            if lr is not None and lr > 1 + latency_tol:
                reasons.append(
                    f"p50 {a['p50_ms']:.4g} -> {b['p50_ms']:.4g} ms (×{lr:.2f}, beyond ×{1 + latency_tol:.2f})"
                )
            sr = _rel(b.get("size_mb"), a.get("size_mb"))
            entry["size_ratio"] = sr
            if sr is not None and sr > 1 + size_tol:
                reasons.append(f"size {a['size_mb']:.4g} -> {b['size_mb']:.4g} MB (×{sr:.3f})")
        if (
            entry["change"] == "changed"
            and not reasons
            and a is not None
            and b is not None
            and a["verdict"] == b["verdict"]
            and not any(entry.get(k) not in (None, 0, 1) for k in ("metric_delta", "latency_ratio", "size_ratio"))
        ):
            entry["change"] = "unchanged"  # e.g. unsupported -> unsupported: nothing to review
        entry["regression"] = bool(reasons)
        entry["reasons"] = reasons
        out.append(entry)
    out.sort(key=lambda e: (not e["regression"], e["change"] != "changed", e["spec"], e["variant"], e["format"]))
    return out


def cmd_compare(args) -> int:
    from tabulate import tabulate

    old, new = _load(args.old), _load(args.new)
    entries = compare(old, new, metric_tol=args.metric_tol, latency_tol=args.latency_tol, size_tol=args.size_tol)
    same = [e for e in entries if e["change"] == "unchanged"]
    entries = [e for e in entries if e["change"] != "unchanged"]
    f = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    rows = [
        [
            "REGRESSION" if e["regression"] else e["change"],
            e["spec"],
            e["variant"],
            e["format"],
            f"{e['old_verdict'] or '-'} -> {e['new_verdict'] or '-'}",
            f(e.get("metric_delta"), "+.4f"),
            f(e.get("latency_ratio"), ".2f"),
            f(e.get("size_ratio"), ".3f"),
            "; ".join(e["reasons"]),
        ]
        for e in entries
    ]
    print(
        f"comparing {args.old} ({old.get('git', {}).get('commit', '?')[:10]}, {old.get('created')}) -> "
        f"{args.new} ({new.get('git', {}).get('commit', '?')[:10]}, {new.get('created')})"
    )
    print(
        tabulate(
            rows,
            headers=["", "spec", "variant", "format", "verdict", "Δ metric", "p50 ×", "size ×", "why"],
            tablefmt="simple",
            disable_numparse=True,
        )
    )
    if same:
        print(
            f"{len(same)} unchanged row{'s' * (len(same) != 1)} not listed "
            f"({', '.join(sorted({e['new_verdict'] for e in same}))})"
        )
    n = sum(e["regression"] for e in entries)
    print(f"{n} regression{'s' * (n != 1)}")
    return 1 if n else 0


def missing_shards(docs: list[dict]) -> list[str]:
    """Shards of a ``--deploycheck-shard`` plan that no report came from, each with its units:
    a shard that died before writing anything must not let the merge read as complete."""
    plans = [d["shard"] for d in docs if isinstance(d.get("shard"), dict)]
    if not plans:
        return []
    counts = {p.get("count") for p in plans}
    if len(counts) > 1:
        return [f"the reports come from different shard plans (N = {sorted(counts)})"]
    (count,) = counts
    seen = {p.get("index") for p in plans}
    units: dict = next((p["units"] for p in plans if p.get("units")), {})  # an xdist controller's plan has none
    out = []
    for k in range(1, int(count) + 1):
        if k not in seen:
            mine = sorted(u for u, s in units.items() if s == k)
            listed = (
                f" (its units: {', '.join(mine[:8])}" + (f" and {len(mine) - 8} more" if len(mine) > 8 else "") + ")"
            )
            out.append(f"shard {k}/{count} did not report" + (listed if mine else ""))
    return out


def merge(docs: list[dict], names: list[str] | None = None) -> dict:
    """One report of several shards'. A check one shard ran beats another shard's ``not run`` of
    it; the merged report is complete only when every shard's session was."""
    records: dict[tuple, dict] = {}
    for d in docs:
        for r in d.get("records", []):
            k = (r["spec"], r["variant"], r["format"], r["check"])
            if r.get("status") == NOT_RUN and k in records:
                continue
            records[k] = r
    recs = [records[k] for k in sorted(records, key=lambda k: tuple("" if x is None else x for x in k))]
    first = docs[0]
    names = names or [f"shard {i + 1}" for i in range(len(docs))]
    unfinished = [
        f"{n}: {d.get('incomplete') or 'did not finish'}"
        for n, d in zip(names, docs, strict=True)
        if not is_complete(d)
    ]
    unfinished += missing_shards(docs)
    return {
        **{k: first[k] for k in ("schema_version", "libraries", "git") if k in first},
        "created": max(d.get("created", "") for d in docs),
        "exitstatus": max(d.get("exitstatus", 0) for d in docs),
        "complete": not unfinished,
        "incomplete": ("incomplete shards: " + "; ".join(unfinished)) if unfinished else None,
        "machine": first.get("machine"),
        "shards": [
            {
                "report": n,
                "machine": d.get("machine"),
                "created": d.get("created"),
                "exitstatus": d.get("exitstatus"),
                "complete": is_complete(d),
                "incomplete": d.get("incomplete"),
            }
            for n, d in zip(names, docs, strict=True)
        ],
        "spec_files": {k: v for d in docs for k, v in d.get("spec_files", {}).items()},
        "rows": summary_rows(recs),
        "records": recs,
    }


def cmd_merge(args) -> int:
    docs = [_load(p) for p in args.reports]
    merged = merge(docs, list(args.reports))
    out_dir = os.path.dirname(os.path.abspath(args.output))
    stem = os.path.basename(args.output).removesuffix(".json")
    paths = write_documents(merged, out_dir, stem=stem)
    print(
        f"merged {len(docs)} reports ({len(merged['records'])} records, {len(merged['rows'])} rows) into "
        + ", ".join(os.path.relpath(p) for p in paths)
    )
    for line in missing_shards(docs):
        print(f"deploycheck merge: {line}; its checks did not run and are not passes", file=sys.stderr)
    for shard in merged["shards"]:
        if not shard["complete"]:
            print(
                f"deploycheck merge: {shard['report']} is INCOMPLETE: {shard['incomplete'] or 'its session did not finish'}"
                "; its checks that did not run are not passes",
                file=sys.stderr,
            )
    bad = any(r["verdict"] in ("FAIL", NOT_RUN) for r in merged["rows"]) or not merged["complete"]
    return 1 if bad and args.fail_on_failure else 0


def add_commands(sub) -> None:
    c = sub.add_parser("compare", help="what changed between two JSON reports, regressions first")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--metric-tol", type=float, default=0.005, help="allowed metric worsening (absolute)")
    c.add_argument("--latency-tol", type=float, default=0.25, help="allowed p50 increase as a fraction (0.25 = 25%%)")
    c.add_argument("--size-tol", type=float, default=0.01, help="allowed size increase as a fraction")
    c.set_defaults(fn=cmd_compare)
    m = sub.add_parser("merge", help="merge JSON reports from shards into one")
    m.add_argument("reports", nargs="+")
    m.add_argument("-o", "--output", required=True, help="ALL.json; ALL.md and ALL.html are written beside it")
    m.add_argument(
        "--fail-on-failure",
        action="store_true",
        help="exit 1 when a merged row failed or did not run, or a shard's session did not finish (a CI gate)",
    )
    m.set_defaults(fn=cmd_merge)
