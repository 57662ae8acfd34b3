"""Release-review reports: Markdown summary, self-contained HTML (rendered by headless Chromium), JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from conftest import make_spec, shared_run

VARIANTS = "  baseline: {}\n  half:\n    quantize: {method: fp16}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.9}"


@pytest.fixture(scope="module")
def report_dir(request, tmp_path_factory):
    """One session's reports, read by several tests (one run instead of one per test), with plots."""
    root, res = shared_run(
        request,
        tmp_path_factory,
        make_spec(variants=VARIANTS, formats="[torchscript, export]", thresholds="  outputs: {atol: 0.05, rtol: 0.01}"),
        plots=True,
    )
    assert res.ret == 0, res.stdout.str()[-3000:]
    return root / "reports"


def test_markdown_has_a_summary_a_verdict_matrix_and_collapsed_tables(report_dir):
    md = (report_dir / "deploycheck.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# deploycheck report"
    assert lines[2] == "Session: complete (every collected check ran)."
    summary = [ln for ln in lines if ln.startswith("- tiny: ")]
    assert len(summary) == 1
    assert summary[0].startswith("- tiny: pass (6 passed, 0 failed, 0 unsupported); smallest passing: ")
    assert " MB); fastest passing: " in summary[0] and summary[0].endswith(" ms)")
    i = lines.index("**tiny**")
    assert lines[i + 2 : i + 7] == [
        "| variant | export | torchscript |",
        "| --- | :-: | :-: |",
        "| baseline | ✅ | ✅ |",
        "| half | ✅ | ✅ |",
        "| pruned | ✅ | ✅ |",
    ]
    assert "## Failures" not in lines  # only failing rows are listed, and there are none
    assert "<details><summary>tiny: 6 rows</summary>" in lines
    table = [ln for ln in lines if ln.startswith("| variant   | format")]
    assert len(table) == 1


def _records(n_specs: int, variants: int = 8, formats=("export", "torchscript", "onnx", "safetensors"), tag: str = ""):
    recs = []
    for s in range(n_specs):
        for v in range(variants):
            for f in formats:
                for check in ("load", "outputs", "metric", "latency", "size", "snapshot"):
                    failed = check == "metric" and v % 3 == 1
                    recs.append(
                        {
                            "spec": f"model-{tag}{s:03d}",
                            "file": f"specs/m{tag}{s}.yaml",
                            "variant": "baseline" if v == 0 else f"variant-{v}",
                            "format": f,
                            "check": check,
                            "status": "failed" if failed else "passed",
                            "recipe": "quantize:dynamic_int8",
                            "value": 0.9,
                            "formula": ("accuracy 0.9512 < baseline 0.9722 - max_drop 0.01 = 0.9622 " * 3)
                            if failed
                            else "ok",
                            "message": "",
                            "details": {"metric": "accuracy", "value": 0.95, "delta": -0.02, "higher_is_better": True},
                        }
                    )
    return recs


def test_markdown_summary_fits_a_pull_request_comment_at_50_specs():
    from deploycheck.report import COMMENT_LIMIT, markdown, summary_rows

    rows = summary_rows(_records(50))
    md = markdown(rows, {"machine": {}})
    assert len(md) <= COMMENT_LIMIT < 65_536
    assert md.count("❌") >= 50 and "## Failures" in md
    assert "Full tables: `deploycheck.html` and `deploycheck.json` in the uploaded reports." in md
    small = markdown(summary_rows(_records(1)), {"machine": {}})
    assert "<details><summary>model-000: 32 rows</summary>" in small  # full tables while they fit


def test_merge_of_20_shard_reports_gives_a_comment_sized_summary(tmp_path):
    from deploycheck.cli import main
    from deploycheck.report import summary_rows
    from deploycheck.report.write import metadata, write_documents

    paths = []
    for i in range(20):
        recs = _records(3, tag=f"s{i}-")
        out = tmp_path / f"shard{i}"
        write_documents({**metadata(recs, str(tmp_path), 1), "rows": summary_rows(recs), "records": recs}, str(out))
        paths.append(str(out / "deploycheck.json"))
    assert main(["merge", *paths, "-o", str(tmp_path / "ALL.json")]) == 0
    md = (tmp_path / "ALL.md").read_text()
    assert len(md) < 65_536
    assert "ALL.html" in md and md.count("model-s19-002") >= 1


def test_first_run_counts_new_snapshots_apart_from_failures(project):
    project.write(
        make_spec(
            variants=VARIANTS,
            formats="[torchscript]",
            snapshot="true",
            thresholds="  outputs: {atol: 0.05, rtol: 0.01}",
        )
    )
    res = project.run()
    res.assert_outcomes(failed=3, passed=6, skipped=9)  # the snapshot items still fail, as syrupy's do
    res.stdout.fnmatch_lines(
        ["3 new snapshots to review: run `pytest --snapshot-update`, review the files, commit them*"]
    )
    assert "failing:" not in res.stdout.str()
    md = (project.path / "reports" / "deploycheck.md").read_text()
    assert "0 passed, 0 failed, 0 unsupported, 3 awaiting snapshot approval" in md
    assert "> **3 new snapshots to review: run `pytest --snapshot-update`" in md
    assert "| baseline | 🆕 |" in md
    page = (project.path / "reports" / "deploycheck.html").read_text()
    assert "3 new snapshots to review" in page and "<td class='new'>new</td>" in page


def test_json_records_carry_value_threshold_formula_and_machine(report_dir):
    doc = json.loads((report_dir / "deploycheck.json").read_text())
    assert {
        "schema_version",
        "created",
        "exitstatus",
        "machine",
        "libraries",
        "git",
        "spec_files",
        "rows",
        "records",
    } <= set(doc)
    rec = next(r for r in doc["records"] if r["check"] == "latency" and r["variant"] == "half")
    # no latency threshold in this spec: measured and recorded, "not gated", never "passed"
    assert rec["status"] == "not gated" and rec["formula"].startswith("p50 ")
    assert "no threshold set (thresholds.latency: max_ratio, min_speedup, p50_ms, p95_ms or p99_ms)" in rec["formula"]
    assert len(rec["details"]["samples_ms"]) == rec["details"]["rounds"]
    assert rec["details"]["ratio"] > 0 and len(rec["details"]["ratio_ci"]) == 2


def test_html_is_self_contained_with_plots(report_dir):
    page = (report_dir / "deploycheck.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3  # metric vs latency with its Pareto front, sizes, latency distributions
    assert "Pareto front" in page
    import re

    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing fetched from the network
    assert "<script" not in page


def test_plots_draw_rows_of_every_shape_the_sessions_make():
    """The inner sessions of the other test files write their HTML without plots (tests/conftest.py);
    the shapes of row they make are drawn here: failing and passing rows, a lower-is-better and a
    direction-less metric, a NaN metric, rows without latency, metric or size, many formats."""
    from deploycheck.report.html import plots, render

    def row(spec, variant, fmt, **kw):
        base = {"spec": spec, "variant": variant, "format": fmt, "verdict": "pass", "metric_name": "accuracy"}
        base.update(p50_ms=0.05, metric=0.9, size_mb=0.01, latency_samples_ms=[0.05, 0.06, 0.04], higher_is_better=True)
        return {**base, **kw}

    fmts = ["torchscript", "export", "onnx", "safetensors", "hdf5", "aoti", "pickle", "state_dict", "x"]
    rows = [
        row("a", "baseline", "torchscript"),
        row("a", "bad", "torchscript", verdict="FAIL", metric=float("nan")),
        row("a", "slow", "export", p50_ms=None, latency_samples_ms=None),
        row("a", "broken", "onnx", verdict="FAIL", metric=None, size_mb=None, p50_ms=None, latency_samples_ms=[]),
        row("mse", "baseline", "torchscript", metric_name="mse", metric=0.2, higher_is_better=False),
        row("mse", "int8", "torchscript", metric_name="mse", metric=0.3, higher_is_better=False, verdict="FAIL"),
        row("custom", "baseline", "torchscript", metric_name="lossfns:xent", higher_is_better=None),
        *(row("many", f"v{i}", f, metric=0.9 - i / 100, p50_ms=0.01 * (i + 1)) for i, f in enumerate(fmts * 3)),
        row("nothing", "baseline", "torchscript", metric=None, p50_ms=None, size_mb=None, latency_samples_ms=None),
    ]
    figs = plots(rows)
    assert {k: len(v) for k, v in figs.items()} == {"a": 3, "mse": 3, "custom": 3, "many": 3, "nothing": 0}
    assert all(f.startswith("<svg") for v in figs.values() for f in v)
    assert "Pareto front" in figs["mse"][0] and "Pareto front" in figs["a"][0]
    page = render(rows, {"machine": {}}, [])
    assert page.count("<svg") == 12


def test_html_renders_in_headless_chromium_without_console_errors(report_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    url = (report_dir / "deploycheck.html").as_uri()
    shot = tmp_path / "report.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    p = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "<h2>tiny</h2>" in p.stdout and "<svg" in p.stdout
    console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    # at 1400 px the page body must not scroll sideways: tables scroll inside their own box
    probe = tmp_path / "probe.html"
    probe.write_text(
        (report_dir / "deploycheck.html")
        .read_text()
        .replace(
            "</body>",
            "<script>document.body.setAttribute('data-overflow', String("
            "document.documentElement.scrollWidth - document.documentElement.clientWidth))</script></body>",
        )
    )
    p = subprocess.run(
        [chromium, *flags, "--window-size=1400,1000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-overflow="0"' in p.stdout, p.stdout[:300]
    p = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1400,2400", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and os.path.getsize(shot) > 20_000
    if os.environ.get("DEPLOYCHECK_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["DEPLOYCHECK_KEEP_SCREENSHOT"])


def test_each_artifact_says_what_its_build_export_and_fresh_process_cost(report_dir):
    """The load item records the session's own seconds for the artifact's stages and the pytest
    process's peak memory after them; the Markdown report gathers them in one table."""
    doc = json.loads((report_dir / "deploycheck.json").read_text())
    load = next(r for r in doc["records"] if (r["variant"], r["format"], r["check"]) == ("half", "torchscript", "load"))
    d = load["details"]
    assert d["build_wall_s"] > 0 and d["export_wall_s"] > 0 and d["process_s"] > 0
    assert d["session_peak_mb"] > 50  # a python process with torch imported holds more than that
    md = (report_dir / "deploycheck.md").read_text().splitlines()
    assert "<details><summary>Time and memory: 6 artifacts</summary>" in md
    header = next(ln for ln in md if ln.startswith("| spec ") and "export s" in ln)
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == [
        "spec",
        "variant",
        "format",
        "build s",
        "export s",
        "fresh process s",
        "fresh process peak MB",
        "session peak MB",
    ]


def test_a_long_stage_says_so_on_the_terminal_while_it_runs(project):
    """A stage past PROGRESS_AFTER_S prints what it is doing, then how long it took (here the
    threshold is 0 s, so every stage of the inner session counts as long)."""
    project.write(make_spec())
    project.path.joinpath("conftest.py").write_text("import deploycheck.runner as r\n\nr.PROGRESS_AFTER_S = 0.0\n")
    res = project.run_subprocess()  # as a user runs it: pytest captures the items' output (fd) meanwhile
    assert res.ret == 0, res.stdout.str()[-3000:]
    res.stdout.fnmatch_lines(
        [
            "deploycheck: tiny/baseline: saving the torchscript artifact (running 0 s so far)",
            "deploycheck: tiny/baseline: saving the torchscript artifact took *.* s (this process's peak memory so far: * MB)",
        ]
    )
    res.stdout.fnmatch_lines(["deploycheck: tiny/baseline: running the torchscript artifact in a fresh process took *"])
