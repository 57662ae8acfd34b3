"""Release-review reports: Markdown summary, self-contained HTML (rendered by headless Chromium), JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import make_spec

VARIANTS = "  baseline: {}\n  half:\n    quantize: {method: fp16}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.9}"


@pytest.fixture
def report_dir(project):
    project.write(make_spec(variants=VARIANTS, formats="[torchscript, export]",
                            thresholds="  outputs: {atol: 0.05, rtol: 0.01}"))
    project.run()
    return project.path / "reports"


def test_markdown_has_a_summary_then_one_table_per_spec(report_dir):
    md = (report_dir / "deploycheck.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# deploycheck report"
    summary = [ln for ln in lines if ln.startswith("- tiny: ")]
    assert len(summary) == 1
    assert summary[0].startswith("- tiny: pass (6 passed, 0 failed, 0 unsupported); smallest passing: ")
    assert " MB); fastest passing: " in summary[0] and summary[0].endswith(" ms)")
    assert "## tiny" in lines
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0].startswith("| variant   | format      | recipe")
    assert len(table) == 1 + 6  # header and one row per variant and format (tabulate github: no separator prefix "| ")


def test_json_records_carry_value_threshold_formula_and_machine(report_dir):
    doc = json.loads((report_dir / "deploycheck.json").read_text())
    assert {"schema_version", "created", "exitstatus", "machine", "libraries", "git", "spec_files", "rows",
            "records"} <= set(doc)
    rec = next(r for r in doc["records"] if r["check"] == "latency" and r["variant"] == "half")
    assert rec["status"] == "passed" and rec["formula"].startswith("p50 ")
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


def test_html_renders_in_headless_chromium_without_console_errors(report_dir, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    url = (report_dir / "deploycheck.html").as_uri()
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    p = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "<h2>tiny</h2>" in p.stdout and "<svg" in p.stdout
    console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    p = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists() and os.path.getsize(shot) > 20_000
