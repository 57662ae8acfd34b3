"""Reports: per-check records -> rows (one per spec, variant, format) -> terminal, Markdown, JSON.

The JSON file is the machine-readable record of a run (schema_version 1): every check's value,
threshold, formula and verdict, plus machine info, library versions, the git commit and the
spec files' hashes. Files are written atomically.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..machine import summary as machine_summary
from .records import Record, Row, as_records

SCHEMA_VERSION = 1
STATUS_ORDER = {
    "error": 0,
    "failed": 1,
    "not run": 2,
    "inconclusive": 3,
    "unsupported": 4,
    "not gated": 5,
    "skipped": 6,
    "passed": 7,
}
#: a check left out of this run on purpose: its spec or variant belongs to a rarer cadence tier
SKIPPED = "skipped"
#: a check the session was going to run but did not finish (interrupted, terminated, a worker died)
NOT_RUN = "not run"


def higher_is_better(row: Row) -> bool | None:
    """The metric's direction as the check recorded it; None where none was recorded (never
    guessed from the metric's name)."""
    value = row.get("higher_is_better")
    return None if value is None else bool(value)


def _first(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def summary_rows(records) -> list[Row]:
    """One row per (spec, variant, format); variant-level checks fold into every row of their variant.
    ``records`` are :class:`Record` objects or their JSON form."""
    groups: dict[tuple, list[Record]] = {}
    for r in sorted(as_records(records), key=Record.sort_key):
        groups.setdefault((r.spec, r.variant, r.format), []).append(r)
    variant_level = {(s, v): recs for (s, v, f), recs in groups.items() if f is None}
    rows: list[Row] = []
    for (s, v, f), recs in groups.items():
        if f is None:
            continue
        allrecs = recs + variant_level.get((s, v), [])
        by = {r.check: r for r in recs}
        info = next((r.variant_info for r in allrecs if r.variant_info), {})
        det = lambda c, by=by: by[c].details if c in by else {}  # noqa: E731
        statuses = [r.status for r in allrecs]
        missing = [r for r in allrecs if r.missing_snapshot]
        real_fail = [r for r in allrecs if r.status in ("error", "failed") and not r.missing_snapshot]
        not_run = [r for r in allrecs if r.status == NOT_RUN]
        if real_fail:
            verdict = "FAIL"
        elif not_run:
            verdict = NOT_RUN  # never a pass: some of its checks did not run
        elif missing:
            verdict = "new"  # passes every check; only its snapshot awaits approval
        elif statuses and all(st == SKIPPED for st in statuses):
            verdict = SKIPPED  # left out of this tier: never a pass
        elif "unsupported" in statuses:
            verdict = "unsupported"
        elif "inconclusive" in statuses:
            verdict = "inconclusive"  # every check passed but one that noise left undecided
        else:
            verdict = "pass"
        reasons, failing = [], []
        for r in allrecs:
            if r.missing_snapshot:
                reasons.append("snapshot: new, not yet approved (pytest --snapshot-update)")
            elif r.status in ("failed", "inconclusive", "not gated"):
                reasons.append(f"{r.check}: {_first(r.formula or r.message) or r.status}")
                if r.status == "failed":
                    failing.append(reasons[-1])
            elif r.status == "error":
                # one stage failure fails every check that needs it: name it once
                reason = _first(r.message) or "error"
                if reason not in reasons:
                    reasons.append(reason)
                    failing.append(reason)
        if not_run:
            reasons.append(f"{NOT_RUN}: {', '.join(r.check for r in not_run)} (the session did not finish)")
        if verdict == "unsupported":
            reasons = [_first(next(r.message for r in allrecs if r.status == "unsupported"))]
        if verdict == SKIPPED:
            reasons = [_first(allrecs[0].message)]
        load = by["load"].status if "load" in by else None
        direction = next(
            (r.higher_is_better for r in allrecs if r.higher_is_better is not None),
            det("metric").get("higher_is_better"),
        )
        rows.append(
            {
                "spec": s,
                "variant": v,
                "format": f,
                "recipe": recs[0].recipe,
                "metric_name": det("metric").get("metric") or next((r.metric for r in allrecs if r.metric), None),
                "metric": det("metric").get("value"),
                "higher_is_better": direction,
                "metric_delta": det("metric").get("delta"),
                "metric_delta_ci": _delta_ci(det("metric")),
                "max_abs_diff": det("outputs").get("max_abs"),
                "p50_ms": det("latency").get("p50_ms"),
                "p95_ms": det("latency").get("p95_ms"),
                "p99_ms": det("latency").get("p99_ms"),
                "throughput_per_s": det("latency").get("throughput_per_s"),
                "throughput": det("latency").get("throughput"),
                "latency_ratio": det("latency").get("ratio"),
                "latency_ratio_ci": det("latency").get("ratio_ci"),
                "peak_rss_mb": det("load").get("peak_rss_mb"),
                "latency_samples_ms": det("latency").get("samples_ms"),
                "size_mb": det("size").get("size_mb"),
                "size_ratio": det("size").get("size_ratio"),
                "perplexity": det("perplexity").get("perplexity"),
                "next_token_top1": det("next_token").get("top1"),
                "mean_kl": det("next_token").get("mean_kl"),
                "exact_match": (det("generation").get("the baseline") or {}).get("exact_match"),
                "params": info.get("params"),
                "state_ratio": info.get("state_ratio"),
                "sparsity": info.get("sparsity"),
                "build_s": info.get("build_s"),
                "build_wall_s": det("load").get("build_wall_s"),
                "export_s": det("load").get("export_wall_s"),
                "fresh_s": det("load").get("process_s"),
                "session_peak_mb": det("load").get("session_peak_mb"),
                "load": {
                    "passed": "ok (cached)" if det("load").get("cached") else "ok",
                    "error": "FAILED",
                    "unsupported": "unsupported",
                }.get(load or "", load or "-"),
                "verdict": verdict,
                "reason": "; ".join(reasons),
                "failing": "; ".join(failing),
                "new_snapshots": len(missing),
                "not_run": len(not_run),
                "divergence": next(
                    (
                        r.details.get("divergence")
                        for r in allrecs
                        if r.status == "failed" and r.details.get("divergence")
                    ),
                    None,
                ),
            }
        )
    return rows


def _delta_ci(metric_details: dict) -> list[float] | None:
    """The paired interval of (variant - baseline), from the drop's interval and the metric's direction."""
    ci = metric_details.get("drop_ci")
    if not ci:
        return None
    if metric_details.get("higher_is_better", True):
        return [0.0 - ci["high"] + 0.0, 0.0 - ci["low"] + 0.0]  # + 0.0: no "-0.0000"
    return [ci["low"], ci["high"]]


def new_snapshots(rows: list[Row]) -> int:
    return sum(r.get("new_snapshots") or 0 for r in rows)


def new_snapshots_line(rows: list[Row]) -> str | None:
    """First runs read as first runs: missing snapshots counted apart from real failures."""
    n = new_snapshots(rows)
    if not n:
        return None
    return (
        f"{n} new snapshot{'s' if n != 1 else ''} to review: run `pytest --snapshot-update`, review the files, "
        "commit them (their items fail until then, as syrupy's do)"
    )


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


COLUMNS = [
    ("spec", "spec"),
    ("variant", "variant"),
    ("format", "format"),
    ("recipe", "recipe"),
    ("metric", "metric"),
    ("metric_delta", "Δ vs base"),
    ("max_abs_diff", "max |Δout|"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
    ("latency_ratio", "lat ratio"),
    ("size_mb", "size MB"),
    ("size_ratio", "size ratio"),
    ("state_ratio", "state ratio"),
    ("params", "params"),
    ("build_s", "build s"),
    ("sparsity", "sparsity"),
    ("load", "load"),
    ("verdict", "verdict"),
]


#: causal-LM columns, shown after max |Δout| when a row has them
LM_COLUMNS = [
    ("perplexity", "ppl"),
    ("next_token_top1", "top-1 agree"),
    ("mean_kl", "KL nats"),
    ("exact_match", "gen match"),
]


def columns(rows: list[Row]) -> list[tuple[str, str]]:
    """The table's columns: the LM columns only where some row has a perplexity."""
    if not any(r.get("perplexity") is not None for r in rows):
        return COLUMNS
    i = [k for k, _ in COLUMNS].index("max_abs_diff") + 1
    return COLUMNS[:i] + LM_COLUMNS + COLUMNS[i:]


def row_cells(row: Row, cols: list[tuple[str, str]] | None = None) -> list[str]:
    out = []
    for key, _ in cols or COLUMNS:
        v = row.get(key)
        if key == "metric_delta" and v is not None:
            ci = row.get("metric_delta_ci")
            out.append(f"{v:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))
        elif key == "sparsity" and v is not None:
            out.append(f"{v:.1%}")
        elif key == "latency_ratio" and v is not None:
            ci = row.get("latency_ratio_ci")
            out.append(f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        else:
            out.append(_f(v))
    return out


def terminal_table(rows: list[Row]) -> str:
    cols = columns(rows)
    text = tabulate(
        [row_cells(r, cols) for r in rows], headers=[h for _, h in cols], tablefmt="simple", disable_numparse=True
    )
    fails = [r for r in rows if r["verdict"] == "FAIL"]
    if fails:
        text += "\n\nfailing:\n" + "\n".join(
            f"  {r['spec']}::{r['variant']}::{r['format']}: {r.get('failing') or r['reason']}" for r in fails
        )
    nl = new_snapshots_line(rows)
    if nl:
        text += "\n\n" + nl
    return text


def summary_lines(rows: list[Row]) -> list[str]:
    """Per spec: pass/fail counts and the best variants that pass every threshold."""
    out = []
    for spec in sorted({r["spec"] for r in rows}):
        srows = [r for r in rows if r["spec"] == spec]
        ok = [r for r in srows if r["verdict"] == "pass"]
        n_fail = sum(r["verdict"] == "FAIL" for r in srows)
        n_new = sum(r["verdict"] == "new" for r in srows)
        n_not_run = sum(r["verdict"] == NOT_RUN for r in srows)
        state = "FAIL" if n_fail else "incomplete" if n_not_run else "new snapshots" if n_new else "pass"
        line = (
            f"{spec}: {state} ({len(ok)} passed, {n_fail} failed, "
            f"{sum(r['verdict'] == 'unsupported' for r in srows)} unsupported"
            + (f", {n_new} awaiting snapshot approval" if n_new else "")
            + (f", {n_not_run} not run" if n_not_run else "")
            + ")"
        )
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


def is_complete(doc: dict) -> bool:
    """Whether a report's session finished. Reports written before ``complete`` was recorded
    say it through their exit status: 2 (interrupted) and 3 (internal error) did not finish."""
    if "complete" in doc:
        return bool(doc["complete"])
    return doc.get("exitstatus") not in (2, 3)


def session_line(meta: dict, rows: list[Row]) -> str:
    """The first thing a report says: whether its session finished, and if not, why and what
    did not run (so a partial run is never read as a pass)."""
    if is_complete(meta):
        if meta.get("shards"):
            return f"Complete: the sessions of all {len(meta['shards'])} shards finished."
        return "Session: complete (every collected check ran)."
    n = sum(r.get("not_run") or 0 for r in rows)
    why = meta.get("incomplete") or f"the session ended with exit status {meta.get('exitstatus')}"
    return (
        f"**INCOMPLETE**: {why}. {n} check{'s' * (n != 1)} not run; "
        "nothing not run counts as passed, and this report gates nothing."
    )


def machine_line(machine: dict) -> str:
    """The run's machine on one line; older reports (before the fingerprint) show what they have."""
    if machine.get("isa_level"):
        return machine_summary(machine)
    return "machine: " + (machine.get("processor") or machine.get("machine") or "unknown")


MARK = {
    "pass": "✅",
    "FAIL": "❌",
    "new": "🆕",
    "unsupported": "➖",
    "inconclusive": "❔",
    NOT_RUN: "⏹️",
    SKIPPED: "⏭️",
}
#: GitHub refuses a comment body over 65,536 characters; stay well under it
COMMENT_LIMIT = 60_000


def verdict_matrix(rows: list[Row], spec: str) -> str:
    """Variants x formats, one mark per cell: the whole spec at a glance."""
    srows = [r for r in rows if r["spec"] == spec]
    fmts = sorted({r["format"] for r in srows})
    variants = list(dict.fromkeys(r["variant"] for r in srows))
    cell = {(r["variant"], r["format"]): MARK.get(r["verdict"], r["verdict"]) for r in srows}
    head = "| variant | " + " | ".join(md(f) for f in fmts) + " |"
    sep = "| --- | " + " | ".join(":-:" for _ in fmts) + " |"
    body = [f"| {md(v)} | " + " | ".join(md(cell.get((v, f), " ")) for f in fmts) + " |" for v in variants]
    return "\n".join([head, sep, *body])


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|~"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def md(text: Any) -> str:
    """A user string (a name, a reason, a path, an error text) as literal Markdown text on one line:
    HTML (``<!--``, ``<script>``) becomes entities, and backticks, pipes, emphasis and link brackets
    are escaped, so nothing a spec or a model prints can hide or restyle the rest of a PR comment."""
    return " ".join(str(text).split()).translate(_MD_SPECIAL)


def _clip(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


COST_COLUMNS = [
    ("build_wall_s", "build s"),
    ("export_s", "export s"),
    ("fresh_s", "fresh process s"),
    ("peak_rss_mb", "fresh process peak MB"),
    ("session_peak_mb", "session peak MB"),
]


def _mb(x: Any) -> str:
    return "-" if x is None else f"{x:,.0f}"


def cost_table(rows: list[Row]) -> list[str]:
    """Where this session's time and memory went, per artifact: its build, its export and its fresh
    process (seconds; 0 or '-' where the cache held them), the fresh process's peak resident memory,
    and the pytest process's peak after the artifact's build and export. Lines of the Markdown report."""
    have = [r for r in rows if any(r.get(k) is not None for k, _ in COST_COLUMNS)]
    if not have:
        return []
    table = tabulate(
        [
            [md(r["spec"]), md(r["variant"]), md(r["format"])]
            + [_f(r.get(k), 3) if k.endswith("_s") else _mb(r.get(k)) for k, _ in COST_COLUMNS]
            for r in have
        ],
        headers=["spec", "variant", "format"] + [h for _, h in COST_COLUMNS],
        tablefmt="github",
        disable_numparse=True,
    )
    return [f"<details><summary>Time and memory: {len(have)} artifacts</summary>", "", table, "", "</details>", ""]


def markdown(rows: list[Row], meta: dict, *, limit: int = COMMENT_LIMIT, full_report: str = "deploycheck.html") -> str:
    """A summary that fits a pull-request comment at any number of specs.

    Per spec a verdict matrix, then only the failing rows with their reasons; the full tables
    follow in collapsed <details> blocks while the text stays under ``limit``; past it they are
    left to the HTML and JSON reports, and past that the failing rows are cut with a pointer."""
    n_fail = sum(r["verdict"] == "FAIL" for r in rows)
    n_pass = sum(r["verdict"] == "pass" for r in rows)
    n_uns = sum(r["verdict"] == "unsupported" for r in rows)
    n_new = sum(r["verdict"] == "new" for r in rows)
    n_not_run = sum(r["verdict"] == NOT_RUN for r in rows)
    n_skipped = sum(r["verdict"] == SKIPPED for r in rows)
    machine = meta.get("machine") or {}
    specs = sorted({r["spec"] for r in rows})
    head = [
        "# deploycheck report",
        "",
        session_line(meta, rows),
        "",
        f"{n_pass} passed, {n_fail} failed, {n_uns} unsupported"
        + (f", {n_new} awaiting snapshot approval" if n_new else "")
        + (f", {n_not_run} not run" if n_not_run else "")
        + (f", {n_skipped} skipped (cadence)" if n_skipped else "")
        + f" — torch {md((meta.get('libraries') or {}).get('torch', '?'))}, "
        f"commit {md(((meta.get('git') or {}).get('commit') or 'n/a')[:12])}, {md(meta.get('created', ''))}",
        "",
        md(machine_line(machine)),
        "",
    ]
    nl = new_snapshots_line(rows)
    if nl:
        head += [f"> **{nl}**", ""]
    head += [f"- {md(line)}" for line in summary_lines(rows)] + [""]
    head += [
        "## Verdicts",
        "",
        "✅ pass · ❌ fail · 🆕 passes, snapshot awaiting approval · ➖ unsupported · ❔ inconclusive (noise)"
        " · ⏹️ not run (the session did not finish) · ⏭️ skipped (a rarer cadence tier)",
        "",
    ]
    matrices = {spec: verdict_matrix(rows, spec) for spec in specs}
    if sum(len(m) for m in matrices.values()) > limit // 2:  # very many specs: matrices for the failing ones only
        bad = {r["spec"] for r in rows if r["verdict"] in ("FAIL", "new", NOT_RUN)}
        matrices = {spec: m for spec, m in matrices.items() if spec in bad}
        head += [f"{len(specs) - len(matrices)} specs pass in every variant and format (matrices omitted)", ""]
    for spec, m in matrices.items():
        head += [f"**{md(spec)}**", "", m, ""]
    fails = [r for r in rows if r["verdict"] == "FAIL"]
    fail_lines = (
        ["## Failures", ""]
        + [
            f"- **{md(r['spec'])}::{md(r['variant'])}::{md(r['format'])}**: {md(_clip(r['reason'] or 'failed'))}"
            for r in fails
        ]
        + [""]
        if fails
        else []
    )
    details = ["## Full tables", ""]
    for spec in specs:
        srows = [r for r in rows if r["spec"] == spec]
        details += [
            f"<details><summary>{md(spec)}: {len(srows)} rows</summary>",
            "",
            tabulate(
                [
                    [md(c) for c in row_cells(r, columns(srows))[1:]] + [md(_clip(r["reason"] or "", 200))]
                    for r in srows
                ],
                headers=[h for _, h in columns(srows)[1:]] + ["reason"],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
            "</details>",
            "",
        ]
    details += cost_table(rows)
    pointer = f"Full tables: `{full_report}` and `deploycheck.json` in the uploaded reports."
    text = "\n".join(head + fail_lines + details)
    if len(text) <= limit:
        return text + "\n"
    text = "\n".join(head + fail_lines + [pointer, ""])
    if len(text) <= limit:
        return text + "\n"
    # even the failing rows are too many: keep what fits, and say how many more there are
    kept, budget = [], limit - len("\n".join(head)) - 400
    for ln in fail_lines[2:-1]:
        if budget - len(ln) - 1 < 0:
            break
        kept.append(ln)
        budget -= len(ln) + 1
    more = len(fails) - len(kept)
    body = ["## Failures", ""] + kept + ["", f"… and {more} more failing rows. {pointer}", ""]
    return "\n".join(head + body) + "\n"
