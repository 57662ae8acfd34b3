"""The snapshot cycle through syrupy, as a user runs it: update, pass, wobble, drift, update."""

from __future__ import annotations

import os
import re

from conftest import make_spec

SNAP = "__snapshots__/tiny/tiny.baseline.torchscript.snapshot.json"


def spec(shift: str, extra: str = "") -> str:
    return (
        make_spec(factory="Shifted", snapshot="true")
        .replace("  inputs:", f"  kwargs: {{shift: {shift}}}\n  inputs:")
        .replace("snapshot: {enabled: true}", "snapshot: {enabled: true, probes: 6" + extra + "}")
    )


def test_full_snapshot_cycle(project):
    project.write(spec("0.0"))
    res = project.run("-k", "snapshot")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines([f"new snapshot, not approved yet: {SNAP} (pytest --snapshot-update records it)"])

    res = project.run("-k", "snapshot", "--snapshot-update")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["1 snapshot generated."])
    path = project.path / SNAP
    first = path.read_bytes()
    assert (
        b'"outputs": [\n        [' in first and b'"entries": {\n    "x86_64/' in first
    )  # one probe per line, per ISA class

    project.run("-k", "snapshot").assert_outcomes(passed=1)
    project.run("-k", "snapshot", "--snapshot-update").assert_outcomes(passed=1)
    assert path.read_bytes() == first  # byte-stable: nothing rewritten when nothing moved

    project.write(spec("1.0e-6"))  # float noise, as from another CPU  # another CPU's float noise
    project.run("-k", "snapshot").assert_outcomes(passed=1)

    project.write(spec("0.5"))  # a real change
    res = project.run("-k", "snapshot")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            f"outputs drifted from the approved snapshot ({SNAP}): values moved beyond tolerance",
            "  accept the new behaviour after review with: pytest --snapshot-update",
            "  values (atol 0.0001, rtol 0.001): |new - approved| <= atol + rtol * |approved| failed",
            "  shape: (6, 3)",
            "  mismatched elements: 18 / 18 (100.00%)",
            "  max abs diff: 0.5   mean abs diff: 0.5",
            "*worst elements:*",
            "  labels: agreement *",
            "  metric accuracy: approved * -> now *",
        ]
    )
    res = project.run("-k", "snapshot", "--snapshot-update")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["1 snapshot updated."])
    assert path.read_bytes() != first
    project.run("-k", "snapshot").assert_outcomes(passed=1)


def test_unused_snapshot_is_reported_and_removed_on_update(project):
    project.write(
        make_spec(
            variants="  baseline: {}\n  half:\n    quantize: {method: fp16}",
            snapshot="true",
            thresholds="  outputs: {atol: 0.1}",
        )
    )
    project.run("-k", "snapshot", "--snapshot-update").assert_outcomes(passed=2)
    stale = project.path / "__snapshots__/tiny/tiny.half.torchscript.snapshot.json"
    assert stale.exists()
    project.write(make_spec(snapshot="true"))  # the variant is gone
    res = project.run("-k", "snapshot")
    res.stdout.fnmatch_lines(["*1 snapshot passed. 1 snapshot unused.*"])
    res = project.run("-k", "snapshot", "--snapshot-update")
    res.stdout.fnmatch_lines(["*1 unused snapshot deleted.*"])
    assert not stale.exists()
    assert (project.path / "__snapshots__/tiny/tiny.baseline.torchscript.snapshot.json").exists()


def test_snapshot_details_option_names_each_snapshot_file(project):
    project.write(make_spec(snapshot="true"))
    res = project.run("-k", "snapshot", "--snapshot-update", "--snapshot-details")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["Generated * (*__snapshots__/tiny/tiny.baseline.torchscript.snapshot.json)"])
    project.write(make_spec(snapshot="true", formats="[export]"))  # the torchscript snapshot is now unused
    res = project.run("-k", "snapshot", "--snapshot-details")
    res.stdout.fnmatch_lines(["Unused * (*__snapshots__/tiny/tiny.baseline.torchscript.snapshot.json)"])


def test_update_under_xdist_loses_nothing(project):
    # three variants in two formats: both workers write snapshot files of the one spec at once
    variants = "  baseline: {}\n" + "".join(
        f"  p{i}:\n    prune: {{method: random_unstructured, amount: 0.{i + 1}, seed: {i}}}\n" for i in range(2)
    )
    project.write(make_spec(variants=variants.rstrip("\n"), snapshot="true", formats="[torchscript, export]"))
    res = project.run_subprocess("-k", "snapshot", "--snapshot-update", "-n", "2")
    res.assert_outcomes(passed=6)
    files = sorted(os.listdir(project.path / "__snapshots__/tiny"))
    assert len(files) == 6
    for f in files:
        text = (project.path / "__snapshots__/tiny" / f).read_text()
        assert text.endswith("]\n    }\n  }\n}\n"), f  # complete, not truncated
    res = project.run_subprocess("-k", "snapshot", "-n", "2", "-v")
    res.assert_outcomes(passed=6)
    # each variant's items ran in one worker (built there once): deploycheck schedules by variant
    workers: dict[str, set[str]] = {}
    for line in res.stdout.lines:
        m = re.match(r"\[(gw\d+)\].* tiny\.yaml::tiny::(\w+)::", line)
        if m:
            workers.setdefault(m.group(2), set()).add(m.group(1))
    assert sorted(workers) == ["baseline", "p0", "p1"] and all(len(w) == 1 for w in workers.values()), workers


def test_xdist_work_units_are_variants():
    from deploycheck.plugin import variant_scope

    assert variant_scope("specs/a.yaml::a::int8::onnx::latency") == "specs/a.yaml::a::int8"
    assert variant_scope("specs/a.yaml::a::int8::dynamic") == "specs/a.yaml::a::int8"
    assert variant_scope("tests/test_x.py::test_one") == "tests/test_x.py::test_one"
    assert variant_scope("tests/test_x.py::test_one@heavy") == "heavy"


def test_a_first_run_says_once_that_snapshots_are_new_and_they_still_fail(project):
    """A new spec's snapshot items fail (syrupy's rule: a gate never passes unchecked), each with
    one short line; the note on how to approve them comes once before the tests and once in the
    summary, which counts them apart from the real failures (here a variant whose build fails)."""
    project.write(
        make_spec(
            snapshot="true",
            formats="[torchscript, export]",
            variants="  baseline: {}\n  bad:\n    custom: {callable: 'tinymodels:crashes'}",
        )
    )
    res = project.run()
    assert res.ret == 1
    res.assert_outcomes(passed=10, failed=14)
    lines = res.stdout.lines
    note = (
        "deploycheck: 4 snapshots are new (no approved file yet, e.g. "
        "__snapshots__/tiny/tiny.baseline.torchscript.snapshot.json): their items fail until approved, as syrupy's do; "
        "record them with `pytest --snapshot-update`, review and commit"
    )
    assert lines.count(note) == 1
    assert lines.index(note) == lines.index("collected 24 items") + 1  # at the top, before any test runs
    short = "new snapshot, not approved yet: __snapshots__/tiny/tiny.baseline.{}.snapshot.json (pytest --snapshot-update records it)"
    assert [ln for ln in lines if ln.startswith("new snapshot")] == [
        short.format("torchscript"),
        short.format("export"),
    ]
    assert sum("--snapshot-update" in ln for ln in lines) == 4  # the note, 2 items, the summary's count
    res.stdout.fnmatch_lines(
        [
            "*deploycheck summary*",
            "2 new snapshots to review: run `pytest --snapshot-update`, review the files, commit them*",
            "deploycheck: 14 items failed: 2 new snapshots awaiting approval, 12 other failures",
        ]
    )
    # approved, the same run passes the baseline's snapshots and says nothing of new ones
    project.run("-k", "baseline", "--snapshot-update").assert_outcomes(passed=12)
    res = project.run("-k", "baseline")
    res.assert_outcomes(passed=12)
    assert not [ln for ln in res.stdout.lines if "new snapshot" in ln or "snapshots are new" in ln]
