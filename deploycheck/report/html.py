"""A self-contained HTML report: the tables plus plots (matplotlib, inlined as SVG), no network."""

from __future__ import annotations

import html
import io
import itertools
from typing import Any

from . import NOT_RUN, columns, higher_is_better, is_complete, machine_line, new_snapshots_line, row_cells, session_line
from .records import Row


def _svg(fig) -> str:
    buf = io.StringIO()
    # no metadata block: no date (stable bytes) and no RDF namespace URLs in the page
    fig.savefig(
        buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is inlined in HTML


def _log_x(ax) -> None:
    """A log x axis labelled in plain numbers (1, 10, 0.1): matplotlib's default labels are
    mathtext (10^1), whose layout took a third of the plots' drawing time."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    class Plain(LogFormatter):  # labels the minor ticks too when the axis spans few decades
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def pareto(points: list[tuple[float, float, Any]], higher_is_better: bool) -> list[Any]:
    """Points not dominated in (latency lower, metric better)."""
    front = []
    for lat, met, key in points:
        dominated = False
        for lat2, met2, key2 in points:
            better_metric = met2 >= met if higher_is_better else met2 <= met
            strictly = (lat2 < lat) or (met2 > met if higher_is_better else met2 < met)
            if key2 != key and lat2 <= lat and better_metric and strictly:
                dominated = True
                break
        if not dominated:
            front.append(key)
    return front


def plots(rows: list[Row]) -> dict[str, list[str]]:
    """Per spec: accuracy vs latency (Pareto front marked), size per variant, latency distributions."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    matplotlib.rcParams["svg.hashsalt"] = "deploycheck"  # stable ids: reports diff cleanly
    # text as SVG text, not glyph outlines: a fifth of the drawing time, smaller and searchable
    matplotlib.rcParams["svg.fonttype"] = "none"
    out: dict[str, list[str]] = {}
    for spec in sorted({r["spec"] for r in rows}):
        rs: list[tuple[Row, float, float]] = [
            (r, p50, m)
            for r in rows
            if r["spec"] == spec and (p50 := r.get("p50_ms")) is not None and (m := r.get("metric")) is not None
        ]
        figs = []
        if rs:
            higher = higher_is_better(rs[0][0])
            pts = [(p50, m, (r["variant"], r["format"])) for r, p50, m in rs]
            front = set(pareto(pts, higher)) if higher is not None else set()  # no direction, no front
            fig, ax = plt.subplots(figsize=(7, 4.2))
            fmts = sorted({r["format"] for r, _, _ in rs})
            markers = dict(zip(fmts, itertools.cycle("osD^vP*X")))  # more formats than markers: reuse them
            # Numbered markers and a legend instead of text labels: a spec's many rows often sit
            # on one metric value, where labels pile onto one line and cannot be read.
            for i, (r, p50, m) in enumerate(rs, 1):
                on = (r["variant"], r["format"]) in front
                ax.scatter(
                    p50,
                    m,
                    marker=markers[r["format"]],
                    s=70 if on else 35,
                    edgecolors="black" if on else "none",
                    color="tab:red" if r["verdict"] == "FAIL" else "tab:blue",
                    alpha=0.9,
                    label=f"{i}: {r['variant']} / {r['format']}",
                )
                ax.annotate(
                    str(i),
                    (p50, m),
                    fontsize=7,
                    xytext=(3, 3 + 7 * (i % 3)),
                    textcoords="offset points",
                )
            fp = sorted((p for p in pts if p[2] in front), key=lambda p: p[0])
            ax.plot([p[0] for p in fp], [p[1] for p in fp], "k--", lw=0.8, label="Pareto front")
            _log_x(ax)
            ax.set_xlabel("p50 latency, ms (log)")
            ax.set_ylabel(rs[0][0].get("metric_name") or "metric")
            ax.set_title(f"{spec}: {rs[0][0].get('metric_name') or 'metric'} vs latency (red: failing)")
            ax.legend(
                loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False, ncol=1 if len(rs) <= 24 else 2
            )
            figs.append(_svg(fig))
        sz = [(r, mb) for r in rows if r["spec"] == spec and (mb := r.get("size_mb")) is not None]
        if sz:
            fig, ax = plt.subplots(figsize=(7, 0.28 * len(sz) + 1.2))
            labels = [f"{r['variant']} / {r['format']}" for r, _ in sz]
            ax.barh(
                labels,
                [mb for _, mb in sz],
                color=["tab:red" if r["verdict"] == "FAIL" else "tab:green" for r, _ in sz],
            )
            ax.invert_yaxis()
            ax.set_xlabel("artifact size, MB")
            ax.set_title(f"{spec}: size per variant and format")
            ax.tick_params(axis="y", labelsize=7)
            figs.append(_svg(fig))
        ls = [(r, ms) for r in rows if r["spec"] == spec and (ms := r.get("latency_samples_ms"))]
        if ls:
            fig, ax = plt.subplots(figsize=(7, 0.28 * len(ls) + 1.2))
            ax.boxplot([ms for _, ms in ls], orientation="horizontal", showfliers=True)
            ax.set_yticks(range(1, len(ls) + 1), [f"{r['variant']} / {r['format']}" for r, _ in ls], fontsize=7)
            ax.invert_yaxis()
            _log_x(ax)
            ax.set_xlabel("latency per call, ms (log; one point per measured round)")
            ax.set_title(f"{spec}: latency distributions")
            figs.append(_svg(fig))
        out[spec] = figs
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:100%}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
.wrap>table:not(.matrix){width:100%}
th,td{border:1px solid #ccc;padding:2px 4px;text-align:right}
th{background:#f3f3f3;font-weight:600} td.l{text-align:left;overflow-wrap:anywhere}
td.reason{text-align:left;white-space:normal;min-width:12em;max-width:30em;overflow-wrap:anywhere}
tr.FAIL td{background:#fde8e8} tr.unsupported td{color:#888} tr.new td{background:#eef5ff}
table.matrix td{text-align:center;font-weight:600}
table.matrix td.pass{background:#e3f6e3;color:#1a6b1a} table.matrix td.FAIL{background:#fbd5d5;color:#8b1010}
table.matrix td.new{background:#dfeaff;color:#1b3f8b} table.matrix td.unsupported{color:#999}
.note{background:#eef5ff;border-left:4px solid #3b6fd6;padding:6px 10px}
.incomplete{background:#fde8e8;border-left:6px solid #b01010;padding:8px 12px;font-weight:600}
.complete{color:#1a6b1a}
table.matrix td.not-run{background:#eee;color:#555} tr.not-run td{background:#f3f3f3}
.plots svg{max-width:100%;height:auto;margin:0.5em 0}
.machine{color:#555;font-size:13px;overflow-wrap:anywhere}
code{background:#f5f5f5;padding:0 3px;overflow-wrap:anywhere}
"""

_MARK = {
    "pass": "pass",
    "FAIL": "FAIL",
    "new": "new",
    "unsupported": "–",
    "inconclusive": "?",
    NOT_RUN: "not run",
    "skipped": "skipped",
}


def _cls(verdict: str) -> str:
    return verdict.replace(" ", "-")


def divergence_table(row: Row) -> str:
    """Where a failing variant departs from its baseline, per module (see deploycheck.diverge)."""
    e = html.escape
    d = row["divergence"] or {}
    how = (
        f" ({e(d.get('subject', 'the variant'))} vs {e(d.get('reference', 'the baseline'))}, "
        f"{e(d.get('source', 'in memory'))})"
    )
    head = (
        f"<details><summary>{e(row['variant'])} / {e(row['format'])}: first departs at "
        f"<code>{e(str(d.get('first')))}</code>{how}</summary><div class='wrap'><table><tr><th>module</th>"
        "<th>max abs diff</th><th>cosine</th><th>share of final error</th></tr>"
    )
    body = "".join(
        f"<tr class='{'FAIL' if r['module'] == d.get('first') else ''}'><td class='l'>{e(r['module'])}</td>"
        f"<td>{r['max_abs']:.4g}</td><td>{r['cosine']:.5f}</td><td>{r['share']:.1%}</td></tr>"
        for r in d["rows"]
    )
    return head + body + "</table></div></details>"


def matrix(rows: list[Row], spec: str) -> str:
    """The verdict matrix (variants x formats), coloured, as on top of the Markdown summary."""
    e = html.escape
    srows = [r for r in rows if r["spec"] == spec]
    fmts = sorted({r["format"] for r in srows})
    variants = list(dict.fromkeys(r["variant"] for r in srows))
    cell = {(r["variant"], r["format"]): r["verdict"] for r in srows}
    out = [
        f"<div class='wrap'><table class='matrix'><tr><th>{e(spec)}</th>"
        + "".join(f"<th>{e(f)}</th>" for f in fmts)
        + "</tr>"
    ]
    for v in variants:
        tds = "".join(
            f"<td class='{e(_cls(cell.get((v, f), '')))}'>{e(_MARK.get(cell.get((v, f), ''), ''))}</td>" for f in fmts
        )
        out.append(f"<tr><td class='l'>{e(v)}</td>{tds}</tr>")
    out.append("</table></div>")
    return "".join(out)


def render(rows: list[Row], meta: dict, summary: list[str], *, draw: bool = True) -> str:
    """The HTML report; ``draw=False`` leaves the plots out (the report a session writes before its
    first result, which has nothing to plot)."""
    figs = plots(rows) if draw else {}
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<title>deploycheck report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>deploycheck report</h1>",
        f"<p class='{'complete' if is_complete(meta) else 'incomplete'}' id='session'>"
        f"{e(session_line(meta, rows).replace('**', ''))}</p>",
        f"<p>{e(meta.get('created', ''))} · torch {e((meta.get('libraries') or {}).get('torch', '?'))} · "
        f"commit <code>{e(((meta.get('git') or {}).get('commit') or 'n/a')[:12])}</code></p>",
        f"<p class='machine'>{e(machine_line(meta.get('machine') or {}))}</p>",
        "<ul>",
    ]
    parts += [f"<li>{e(s)}</li>" for s in summary] + ["</ul>"]
    nl = new_snapshots_line(rows)
    if nl:
        parts.append(f"<p class='note'>{e(nl)}</p>")
    parts.append("<h2>Verdicts</h2>" + "".join(matrix(rows, spec) for spec in sorted({r["spec"] for r in rows})))
    if not draw:
        parts.append("<p><em>Plots are drawn when the session finishes.</em></p>")
    elif not figs:
        parts.append("<p><em>Plots need matplotlib: pip install 'deploycheck[html]'.</em></p>")
    for spec in sorted({r["spec"] for r in rows}):
        srows = [r for r in rows if r["spec"] == spec]
        cols = columns(srows)
        parts.append(
            f"<h2>{e(spec)}</h2><div class='wrap'><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for _, h in cols[1:])
            + "<th>reason</th></tr>"
        )
        for r in srows:
            cells = row_cells(r, cols)[1:] + [r.get("reason") or ""]
            parts.append(
                f"<tr class='{e(_cls(r['verdict']))}'>"
                + "".join(
                    f"<td class='reason'>{e(c)}</td>"
                    if i == len(cells) - 1
                    else f"<td class='l'>{e(c)}</td>"
                    if i in (0, 1, 2)
                    else f"<td>{e(c)}</td>"
                    for i, c in enumerate(cells)
                )
                + "</tr>"
            )
        parts.append("</table></div>")
        for r in srows:
            if (d := r.get("divergence")) and d.get("rows"):
                parts.append(divergence_table(r))
        if figs.get(spec):
            parts.append("<div class='plots'>" + "".join(figs[spec]) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
