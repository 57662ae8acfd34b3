"""What a user sees from `pytest specs/`: item ids, each check passing and failing with its message,
build and load failures as one located message, and the report files."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_spec, shared_run


def test_item_ids_are_stable_and_selectable(project):
    project.write(
        make_spec(variants="  baseline: {}\n  half:\n    quantize: {method: fp16}", formats="[torchscript, export]")
    )
    res = project.run("--collect-only", "-q")
    ids = [ln for ln in res.stdout.lines if "::" in ln]
    assert ids[:5] == [
        f"tiny.yaml::tiny::baseline::torchscript::{c}" for c in ("load", "outputs", "metric", "latency", "size")
    ]
    assert "tiny.yaml::tiny::half::export::size" in ids
    assert len(ids) == 20
    res = project.run("--collect-only", "-q", "-k", "half and export and metric")
    assert [ln for ln in res.stdout.lines if "::" in ln] == ["tiny.yaml::tiny::half::export::metric"]


def test_all_checks_pass_and_reports_are_written(project):
    project.write(make_spec(thresholds="  metric: {max_drop: 0.01}\n  latency: {p95_ms: 1000}\n  size: {max_mb: 1}"))
    res = project.run()
    res.assert_outcomes(passed=5)
    res.stdout.fnmatch_lines(
        [
            "*deploycheck summary*",
            "tiny*baseline*torchscript*baseline*ok*pass",
            "report written: */reports/deploycheck.md",
        ]
    )
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    assert doc["schema_version"] == 1
    assert doc["libraries"]["torch"].startswith("2.")
    assert set(doc["spec_files"]) == {"tiny.yaml"}
    (row,) = doc["rows"]
    assert (row["spec"], row["variant"], row["format"], row["verdict"], row["load"]) == (
        "tiny",
        "baseline",
        "torchscript",
        "pass",
        "ok",
    )
    assert row["max_abs_diff"] == 0.0 and row["p95_ms"] > 0 and 0 < row["size_mb"] < 1
    assert sorted(r["check"] for r in doc["records"]) == ["latency", "load", "metric", "outputs", "size"]
    md = (project.path / "reports" / "deploycheck.md").read_text()
    assert md.startswith(
        "# deploycheck report\n\nSession: complete (every collected check ran).\n\n1 passed, 0 failed, 0 unsupported"
    )
    assert "| baseline  | torchscript |" in md


@pytest.fixture(scope="module")
def three_failures(request, tmp_path_factory):
    """One session whose baseline misses its metric, latency and size limits while it loads and
    matches its outputs: each gate's message is read by its own test."""
    return shared_run(
        request,
        tmp_path_factory,
        make_spec(thresholds="  metric: {min: 0.99}\n  latency: {p95_ms: 0.0001}\n  size: {max_mb: 0.000001}"),
    )


def failed_alone(res, check: str) -> None:
    """The session's outcome, with ``check`` among the three items that failed."""
    res.assert_outcomes(passed=2, failed=3)
    res.stdout.fnmatch_lines([f"FAILED tiny.yaml::tiny::baseline::torchscript::{check}*"])


def test_metric_failure_prints_its_formula(three_failures):
    _, res = three_failures
    failed_alone(res, "metric")
    out = res.stdout.str()
    assert re.search(
        r"\[check\] metric failed for tiny::baseline::torchscript \(tiny\.yaml:9\)\n"
        r"accuracy 0\.\d+ < min 0\.99",
        out,
    ), out


def test_metric_formulas_in_both_directions():
    from deploycheck.checks.quality import metric_verdict
    from deploycheck.spec.thresholds import MetricThreshold

    v = metric_verdict(
        name="accuracy", value=0.95, baseline=0.98, higher=True, th=MetricThreshold(max_relative_drop=0.02)
    )
    assert (v.passed, v.message) == (False, "accuracy 0.95 < baseline 0.98 × (1 - max_relative_drop 0.02) = 0.9604")
    v = metric_verdict(name="mse", value=0.12, baseline=0.10, higher=False, th=MetricThreshold(max_drop=0.01, max=0.2))
    assert (v.passed, v.message) == (False, "mse 0.12 > baseline 0.1 + max_drop 0.01 = 0.11")
    v = metric_verdict(name="mse", value=0.105, baseline=0.10, higher=False, th=MetricThreshold(max_drop=0.01))
    assert (v.passed, v.formula) == (True, "mse 0.105 <= baseline 0.1 + max_drop 0.01 = 0.11")


def test_changed_data_is_not_served_from_a_stale_run_dir(project):
    """The run dir outlives sessions: a changed preprocessing must reach the fresh process."""
    project.write(make_spec(thresholds="  size: {max_mb: 1}"))
    project.run("--deploycheck-cache=off").assert_outcomes(passed=3, skipped=2)  # metric, latency: not gated
    project.write(
        make_spec(thresholds="  size: {max_mb: 1}").replace("  split:", "  preprocess: [{scale: 3.0}]\n  split:")
    )
    project.run("--deploycheck-cache=off", "-k", "outputs").assert_outcomes(passed=1)


def test_latency_failure_prints_percentile_and_limit(three_failures):
    _, res = three_failures
    failed_alone(res, "latency")
    assert re.search(r"p95 \S+ ms > p95_ms 0\.0001 ms", res.stdout.str())


def test_size_failure(three_failures):
    _, res = three_failures
    failed_alone(res, "size")
    assert re.search(r"size \S+ MB > max_mb 1e-06", res.stdout.str())


def test_outputs_mismatch_is_reported_like_pytest_regressions(project):
    project.write(make_spec(factory="Drifting"))
    res = project.run("-k", "outputs")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]check[]] outputs failed for tiny::baseline::torchscript (tiny.yaml:9)",
            "outputs of the reloaded torchscript artifact differ from the in-memory variant (atol 0.0001, rtol 0.001): "
            "|reloaded - in-memory| <= atol + rtol * |in-memory| failed",
            "  shape: (38, 3)",
            "  mismatched elements: 114 / 114 (100.00%)",
            "  max abs diff: 1 * mean abs diff: 1",
            "*worst elements:",
            "*index*reloaded*in-memory*abs diff",
        ]
    )


def test_output_batch_dimension_is_checked(project):
    project.write(make_spec(factory="FirstRowOnly"))
    res = project.run()
    res.assert_outcomes(failed=5)
    res.stdout.fnmatch_lines(
        [
            "[[]run[]] tiny::baseline (declared at tiny.yaml:11): the in-memory model returned shape "
            "(1, 3) for a batch of 38: outputs must keep the batch dimension first"
        ]
    )


def test_build_failure_is_one_located_message_per_item(project):
    project.write(make_spec(factory="broken"))
    res = project.run()
    res.assert_outcomes(failed=5)
    out = res.stdout.str()
    msg = (
        "[build] tiny::baseline (declared at tiny.yaml:3): cannot create the model from factory "
        "'tinymodels:broken': RuntimeError: factory exploded"
    )
    assert res.stdout.lines.count(msg) == 1  # in full once, on the first item; no traceback
    short = (
        "[build] tiny::baseline (declared at tiny.yaml:3): build of variant 'baseline' failed; "
        "see tiny.yaml::tiny::baseline::torchscript::load"
    )
    assert res.stdout.lines.count(short) == 4  # the others fail, each with one short line
    assert "Traceback" not in out
    res.stdout.fnmatch_lines(["failing:", f"  tiny::baseline::torchscript: {msg}"])


def test_missing_and_mismatched_weights(project, pytester):
    project.write(make_spec().replace("  inputs:", "  weights: nope.safetensors\n  inputs:"))
    res = project.run("-k", "load")
    res.stdout.fnmatch_lines(
        ["[[]build[]] tiny::baseline (declared at tiny.yaml:3): weights file not found: */nope.safetensors"]
    )
    import torch
    from safetensors.torch import save_file

    save_file(
        {"fc.weight": torch.zeros(8, 4), "fc.bias": torch.zeros(8), "extra": torch.zeros(1)},
        str(pytester.path / "w.safetensors"),
    )
    project.write(make_spec().replace("  inputs:", "  weights: w.safetensors\n  inputs:"))
    res = project.run("-k", "load")
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny::baseline (declared at tiny.yaml:3): weights w.safetensors do not match "
            "the architecture of tinymodels:Tiny: missing keys (2): out.weight, out.bias | unexpected "
            "keys (1): extra | shape mismatch (2): fc.weight: file (8, 4) vs model (16, 4); fc.bias: "
            "file (8,) vs model (16,)"
        ]
    )


def test_run_cut_short_by_x_still_writes_the_report(project):
    project.write(make_spec(thresholds="  metric: {min: 0.99}"))
    res = project.run("-x")
    res.assert_outcomes(passed=2, failed=1)
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    assert {r["check"]: r["status"] for r in doc["records"]} == {
        "load": "passed",
        "metric": "failed",
        "outputs": "passed",
        "latency": "not run",
        "size": "not run",
    }
    assert (doc["complete"], doc["rows"][0]["verdict"]) == (False, "FAIL")


def test_report_location_is_an_option(project, tmp_path):
    project.write(make_spec())
    project.run(f"--deploycheck-report-dir={tmp_path / 'out'}").assert_outcomes(passed=5)
    assert (tmp_path / "out" / "deploycheck.md").exists()
    assert not (project.path / "reports").exists()


def test_junitxml_carries_deploycheck_properties(project):
    project.write(make_spec(thresholds="  size: {max_mb: 1}"))
    project.run("--junitxml=junit.xml", "-k", "size").assert_outcomes(passed=1)
    xml = (project.path / "junit.xml").read_text()
    assert '<property name="deploycheck.formula" value="size ' in xml
    assert 'MB &lt;= max_mb 1"' in xml


def test_last_failed_reruns_only_the_failed_item(pytester, project):
    project.write(make_spec(thresholds="  metric: {min: 0.99}"))
    run = lambda *a: pytester.runpytest(f"--deploycheck-run-dir={project.path / 'run'}", *a)  # noqa: E731
    run().assert_outcomes(passed=2, skipped=2, failed=1)
    res = run("--lf")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*"])


def test_compare_two_real_runs_lists_the_degraded_variant_first(project, tmp_path):
    from deploycheck.cli import main

    variants = "  baseline: {}\n  half:\n    quantize: {method: fp16}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.1}"
    project.write(make_spec(variants=variants, thresholds="  outputs: {atol: 0.05}"))
    project.run().assert_outcomes(passed=6, skipped=9)  # metric, latency, size: not gated
    (project.path / "reports" / "deploycheck.json").rename(tmp_path / "old.json")
    project.write(
        make_spec(
            variants=variants.replace("0.1}", "0.95}"), thresholds="  outputs: {atol: 0.05}\n  metric: {max_drop: 0.02}"
        )
    )
    project.run()
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["compare", str(tmp_path / "old.json"), str(project.path / "reports" / "deploycheck.json")])
    lines = [ln for ln in buf.getvalue().splitlines()[3:] if ln.strip()]
    assert code == 1
    assert lines[0].startswith("REGRESSION  tiny    pruned")
    assert "verdict pass -> FAIL" in lines[0]


def test_throughput_mode_measures_each_declared_batch_size(project):
    project.write(make_spec().replace("latency: {warmup: 1,", "latency: {batch_sizes: [1, 16], warmup: 1,"))
    project.run("-k", "latency").assert_outcomes(passed=1)
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    tp = doc["rows"][0]["throughput"]
    assert sorted(tp) == ["1", "16"]
    assert all(v["samples_per_s"] > 0 and v["p50_ms"] > 0 for v in tp.values())


def test_compare_judges_a_custom_lower_is_better_metric_by_its_declared_direction(project, tmp_path):
    """A callable metric named nothing like mse/mae: its direction comes from the spec, through
    the report records, never from its name. A loss that rises is a regression; one that falls is not."""
    from deploycheck.cli import main

    project.tester.makepyfile(
        lossfns="""
        import torch
        def xent(outputs, targets):
            return torch.nn.functional.cross_entropy(outputs.float(), targets.long()).item()
    """
    )
    metric = "metric: {name: callable, callable: 'lossfns:xent', higher_is_better: false}"
    variants = "  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: %s}"
    reports, loss = {}, {}
    for amount in ("0.1", "0.95"):
        project.write(make_spec(variants=variants % amount, thresholds="  outputs: {atol: 10}", extra=metric))
        project.run("-k", "metric")
        doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
        rec = next(r for r in doc["records"] if r["variant"] == "pruned" and r["check"] == "metric")
        assert (rec["metric"], rec["higher_is_better"]) == ("lossfns:xent", False)
        loss[amount] = rec["value"]
        reports[amount] = tmp_path / f"pruned-{amount}.json"
        (project.path / "reports" / "deploycheck.json").rename(reports[amount])
    low, high = sorted(loss, key=loss.get)
    assert loss[high] - loss[low] > 0.01

    def compare(old, new):
        import io
        from contextlib import redirect_stdout

        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(["compare", str(reports[old]), str(reports[new]), "--metric-tol", "0.001"])
        return code, buf.getvalue()

    code, out = compare(low, high)  # the loss rises: worse, though the number went up
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("REGRESSION"))
    assert "pruned" in line and f"lossfns:xent {loss[low]:.4g} -> {loss[high]:.4g}" in line and "beyond ±0.001" in line
    code, out = compare(high, low)  # the loss falls: better, though the number went down
    assert code == 0, out
    assert out.rstrip().endswith("0 regressions")
