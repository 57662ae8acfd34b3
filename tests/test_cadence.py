"""Run tiers: specs and variants declared `cadence: nightly` (or weekly) run only when the run's
tier includes them, and are skipped with the reason otherwise, never passed."""

from __future__ import annotations

import json

from conftest import make_spec

NIGHTLY_VARIANT = "  baseline: {}\n  heavy:\n    cadence: nightly\n    quantize: {method: dynamic_int8}"


def test_a_nightly_variant_is_skipped_with_its_reason_in_the_commit_tier(project):
    project.write(make_spec(variants=NIGHTLY_VARIANT))
    res = project.run("-rs", "-k", "load or size")
    res.stdout.fnmatch_lines(
        [
            "SKIPPED * cadence nightly (the variant's): not run in the commit tier; run with "
            "--deploycheck-cadence nightly",
        ]
    )
    res.assert_outcomes(passed=2, skipped=2)
    report = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    heavy = [r for r in report["records"] if r["variant"] == "heavy"]
    assert sorted(r["check"] for r in heavy) == ["load", "size"]
    assert {r["status"] for r in heavy} == {"skipped"}
    (row,) = [r for r in report["rows"] if r["variant"] == "heavy"]
    assert (row["verdict"], row["reason"]) == (
        "skipped",
        "cadence nightly (the variant's): not run in the commit tier; run with --deploycheck-cadence nightly",
    )
    md = (project.path / "reports" / "deploycheck.md").read_text()
    assert "1 passed, 0 failed, 0 unsupported, 1 skipped (cadence)" in md
    assert "| heavy | ⏭️ |" in md


def test_the_nightly_tier_runs_it_and_weekly_includes_nightly(project, monkeypatch):
    project.write(make_spec(variants=NIGHTLY_VARIANT))
    project.run("-k", "load").assert_outcomes(passed=1, skipped=1)
    project.run("-k", "load", "--deploycheck-cadence", "nightly").assert_outcomes(passed=2)
    monkeypatch.setenv("DEPLOYCHECK_CADENCE", "weekly")
    project.run("-k", "load").assert_outcomes(passed=2)


def test_a_weekly_spec_skips_every_variant_but_a_variant_may_run_more_often(project):
    spec = make_spec(variants="  baseline:\n    cadence: commit\n  heavy:\n    quantize: {method: dynamic_int8}")
    project.write(spec.replace("name: tiny\n", "name: tiny\ncadence: weekly\n"))
    res = project.run("-rs", "-k", "load", "--deploycheck-cadence", "nightly")
    res.stdout.fnmatch_lines(
        ["SKIPPED * cadence weekly (the spec's): not run in the nightly tier; run with --deploycheck-cadence weekly"]
    )
    res.assert_outcomes(passed=1, skipped=1)


def test_a_bad_cadence_is_a_spec_error_and_a_bad_env_a_usage_error(project, monkeypatch):
    project.write(make_spec(variants="  baseline: {}\n  q:\n    cadence: hourly\n    quantize: {method: dynamic_int8}"))
    res = project.run("--collect-only")
    assert (
        "tiny.yaml:13: variants.q.cadence: 'hourly' is not one of ['commit', 'nightly', 'weekly']" in res.stdout.str()
    )
    project.write(make_spec())
    monkeypatch.setenv("DEPLOYCHECK_CADENCE", "daily")
    res = project.run("--collect-only")
    assert "ERROR: DEPLOYCHECK_CADENCE='daily' is not one of ['commit', 'nightly', 'weekly']" in res.stderr.str()
    assert res.ret == 4
