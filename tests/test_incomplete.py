"""A report knows whether its session finished: Ctrl-C, SIGTERM or a killed session leave reports
marked incomplete, with every unit that did not finish `not run` (never a pass), and
`deploycheck merge --fail-on-failure` fails on them. One session owns a report folder at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli, make_spec

TWO_VARIANTS = "  baseline: {}\n  wider:\n    custom: {callable: 'tinymodels:repeat'}"

#: a conftest that presses Ctrl-C once the first check has passed
CTRL_C_AFTER_FIRST = """
def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        raise KeyboardInterrupt
"""

#: a recipe that says it has started, then hangs (the session is stopped from outside meanwhile)
HANGS = """
import os
import time

import pytest


def hang(model, ctx):
    open(os.environ["HANG_MARK"], "w").close()
    time.sleep(600)
    return model
"""


def _md(project) -> list[str]:
    return (project.path / "reports" / "deploycheck.md").read_text().splitlines()


def test_ctrl_c_after_the_first_check_gives_an_incomplete_report_and_merge_fails(project, tmp_path):
    project.write(make_spec(variants=TWO_VARIANTS))
    project.tester.makeconftest(CTRL_C_AFTER_FIRST)
    res = project.run_subprocess("-k", "load or metric")
    assert res.ret == 2, res.stdout.str()
    res.stdout.fnmatch_lines(
        [
            "*deploycheck summary*",
            "deploycheck: session INCOMPLETE: interrupted (Ctrl-C); 3 checks not run (never counted as passed)",
        ]
    )
    md = _md(project)
    assert md[2] == (
        "**INCOMPLETE**: interrupted (Ctrl-C). 3 checks not run; nothing not run counts as passed, "
        "and this report gates nothing."
    )
    assert md[4].startswith("0 passed, 0 failed, 0 unsupported, 2 not run — ")
    assert "- tiny: incomplete (0 passed, 0 failed, 0 unsupported, 2 not run)" in md
    i = md.index("**tiny**")
    assert md[i + 2 : i + 6] == [
        "| variant | torchscript |",
        "| --- | :-: |",
        "| baseline | ⏹️ |",  # its load passed, its metric did not run: not ✅
        "| wider | ⏹️ |",
    ]
    assert "✅" not in "\n".join(md[i:])
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    assert doc["complete"] is False and doc["incomplete"] == "interrupted (Ctrl-C)"
    got = sorted((r["variant"], r["check"], r["status"]) for r in doc["records"])
    assert got == [
        ("baseline", "load", "passed"),
        ("baseline", "metric", "not run"),
        ("wider", "load", "not run"),
        ("wider", "metric", "not run"),
    ]
    html = (project.path / "reports" / "deploycheck.html").read_text()
    assert "<p class='incomplete' id='session'>INCOMPLETE: interrupted (Ctrl-C). 3 checks not run;" in html

    report = str(project.path / "reports" / "deploycheck.json")
    gate = cli("merge", report, "-o", str(tmp_path / "ALL.json"), "--fail-on-failure")
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert (
        f"deploycheck merge: {report} is INCOMPLETE: interrupted (Ctrl-C); its checks that did not run are not passes"
        in gate.stderr
    )
    merged = (tmp_path / "ALL.md").read_text().splitlines()
    assert merged[2].startswith(f"**INCOMPLETE**: incomplete shards: {report}: interrupted (Ctrl-C). 3 checks not run")
    assert cli("merge", report, "-o", str(tmp_path / "ALL.json")).returncode == 0  # no gate asked for


def test_merge_fails_on_a_shard_written_before_completion_was_recorded(tmp_path):
    """Reports from before this field: exit status 2 (interrupted) is an incomplete shard."""
    from deploycheck.cli import main

    rec = {"spec": "a", "file": "a.yaml", "variant": "baseline", "format": "onnx", "check": "load", "status": "passed"}
    doc = {"schema_version": 1, "exitstatus": 2, "rows": [], "records": [rec]}
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert main(["merge", str(tmp_path / "old.json"), "-o", str(tmp_path / "ALL.json"), "--fail-on-failure"]) == 1
    assert json.loads((tmp_path / "ALL.json").read_text())["complete"] is False


def test_a_complete_shard_that_ran_what_another_did_not_run_wins_in_merge(tmp_path):
    from deploycheck.report.compare import merge

    rec = {"spec": "a", "file": "a.yaml", "variant": "baseline", "format": "onnx", "check": "load"}
    ran = {"schema_version": 1, "complete": True, "rows": [], "records": [{**rec, "status": "passed"}]}
    cut = {
        "schema_version": 1,
        "complete": False,
        "incomplete": "x",
        "rows": [],
        "records": [{**rec, "status": "not run"}],
    }
    m = merge([ran, cut], ["ran.json", "cut.json"])
    assert [r["status"] for r in m["records"]] == ["passed"]
    assert m["complete"] is False and m["incomplete"] == "incomplete shards: cut.json: x"


def _start_hanging_session(project, tmp_path) -> tuple[subprocess.Popen, str]:
    """A real session whose second variant hangs in its build; returns once it hangs."""
    project.tester.makepyfile(hangs=HANGS)
    project.write(make_spec(variants="  baseline: {}\n  stuck:\n    custom: {callable: 'hangs:hang'}"))
    mark = str(tmp_path / "hanging")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
    env["HANG_MARK"] = mark
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-k",
            "load",
            f"--deploycheck-run-dir={tmp_path / 'run'}",
            "--deploycheck-cache=off",
        ],
        cwd=project.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    end = time.monotonic() + 180
    while not os.path.exists(mark) and inner.poll() is None and time.monotonic() < end:
        time.sleep(0.1)
    assert os.path.exists(mark), inner.communicate(timeout=30)[0].decode() if inner.poll() is not None else "no hang"
    return inner, mark


def _finish(inner: subprocess.Popen, sig: int) -> str:
    try:
        inner.send_signal(sig)
        out, _ = inner.communicate(timeout=60)
    finally:
        if inner.poll() is None:
            os.killpg(inner.pid, signal.SIGKILL)
            inner.wait()
    return out.decode()


def test_sigterm_writes_reports_marked_incomplete_and_a_second_session_is_refused_the_folder(project, tmp_path):
    inner, _ = _start_hanging_session(project, tmp_path)
    try:
        # while it runs: its reports already say it has not finished, and the folder is its own
        md = _md(project)
        assert md[2].startswith(f"**INCOMPLETE**: the session has not finished (pid {inner.pid}, started "), md[2]
        assert "if it is no longer running, it was killed or crashed before it could write its reports" in md[2]
        second = project.run("-k", "load")
        assert second.ret == 4
        second.stderr.fnmatch_lines(
            [
                f"ERROR: deploycheck: the report folder {project.path / 'reports'} is in use by another session "
                f"(pid {inner.pid}); wait for it to end, or give this session its own folder with "
                "--deploycheck-report-dir DIR (or --deploycheck-no-report)"
            ]
        )
    finally:
        text = _finish(inner, signal.SIGTERM)
    assert inner.returncode == 2, text
    assert (
        "deploycheck: session INCOMPLETE: terminated by SIGTERM (a CI timeout or kill); 1 check not run "
        "(never counted as passed)" in text
    ), text
    md = _md(project)
    assert md[2] == (
        "**INCOMPLETE**: terminated by SIGTERM (a CI timeout or kill). 1 check not run; nothing not run counts "
        "as passed, and this report gates nothing."
    )
    assert "- tiny: incomplete (1 passed, 0 failed, 0 unsupported, 1 not run)" in md
    assert "| stuck | ⏹️ |" in md and "| baseline | ✅ |" in md
    assert not (project.path / "reports" / "deploycheck.partial.jsonl").exists()


def test_a_killed_session_leaves_reports_that_say_incomplete_and_frees_the_folder(project, tmp_path):
    inner, _ = _start_hanging_session(project, tmp_path)
    _finish(inner, signal.SIGKILL)
    md = _md(project)
    assert md[2].startswith(f"**INCOMPLETE**: the session has not finished (pid {inner.pid}, started "), md[2]
    assert "- tiny: incomplete (0 passed, 0 failed, 0 unsupported, 2 not run)" in md
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    assert doc["complete"] is False
    gate = cli(
        "merge", str(project.path / "reports" / "deploycheck.json"), "-o", str(tmp_path / "A.json"), "--fail-on-failure"
    )
    assert gate.returncode == 1
    # what finished before the kill is in the journal; the next session takes the folder at once
    journal = (project.path / "reports" / "deploycheck.partial.jsonl").read_text().splitlines()
    assert [(r["variant"], r["check"], r["status"]) for r in map(json.loads, journal)] == [
        ("baseline", "load", "passed")
    ]
    project.write(make_spec())
    res = project.run("-k", "load")
    res.assert_outcomes(passed=1)
    assert _md(project)[2] == "Session: complete (every collected check ran)."


def test_a_run_stopped_by_x_is_incomplete_and_its_unrun_rows_are_not_passes(project):
    project.write(make_spec(variants="  baseline: {}\n  broken:\n    custom: {callable: 'tinymodels:crashes'}"))
    res = project.run("-x", "-k", "load or metric")
    assert res.ret == 1
    res.stdout.fnmatch_lines(
        [
            "deploycheck: session INCOMPLETE: stopped early (stopping after 1 failures); 1 check not run "
            "(never counted as passed)"
        ]
    )
    md = _md(project)
    assert md[2].startswith("**INCOMPLETE**: stopped early (stopping after 1 failures). 1 check not run;")
    assert "| baseline | ✅ |" in md and "| broken | ❌ |" in md  # a failure stays a failure


def test_a_report_set_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A failure while one file of the set is made (here the HTML) leaves the previous set as it was."""
    from deploycheck.report import write
    from deploycheck.report.write import write_documents

    doc = {"schema_version": 1, "complete": True, "rows": [], "records": [], "created": "first"}
    write_documents(doc, str(tmp_path))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write, "render", broken)
    with pytest.raises(OSError):
        write_documents({**doc, "created": "second"}, str(tmp_path))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # no mix, no temp files


# --- shards by variant ----------------------------------------------------------------------------


def test_shards_are_planned_largest_unit_first_onto_the_least_loaded_shard():
    from deploycheck.plugin import assign_shards, parse_shard

    assert assign_shards({"a": 10, "b": 7, "c": 5, "d": 3}, 2) == {"a": 1, "b": 2, "c": 2, "d": 1}
    assert assign_shards({"x": 1, "y": 1, "z": 1}, 4) == {"x": 1, "y": 2, "z": 3}  # shard 4 gets nothing
    assert parse_shard(" 2/4 ") == (2, 4)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(pytest.UsageError, match=r"expected I/N with 1 <= I <= N, got"):
            parse_shard(bad)


FOUR_VARIANTS = (
    "  baseline: {}\n  wider:\n    custom: {callable: 'tinymodels:repeat'}\n"
    "  p1:\n    prune: {method: l1_unstructured, amount: 0.2}\n  p2:\n    prune: {method: l1_unstructured, amount: 0.3}"
)


def test_two_shards_split_the_variants_and_merge_names_a_shard_that_did_not_report(project, tmp_path):
    from deploycheck.cli import main

    project.write(make_spec(variants=FOUR_VARIANTS))
    seen = []
    for i in (1, 2):
        res = project.run(
            "-k", "load or metric", f"--deploycheck-shard={i}/2", f"--deploycheck-report-dir={tmp_path}/s{i}"
        )
        assert res.ret == 0, res.stdout.str()
        doc = json.loads((tmp_path / f"s{i}" / "deploycheck.json").read_text())
        assert doc["shard"]["index"] == i and doc["shard"]["count"] == 2
        seen.append({r["variant"] for r in doc["records"]})
    # a variant's items stay together, each in one shard, and the shards cover every variant
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {"baseline", "wider", "p1", "p2"}
    assert (
        main(
            [
                "merge",
                str(tmp_path / "s1/deploycheck.json"),
                str(tmp_path / "s2/deploycheck.json"),
                "-o",
                str(tmp_path / "all.json"),
                "--fail-on-failure",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "all.json").read_text())["complete"] is True
    # shard 2 never reported: the merge is incomplete, names it and its units, and fails the gate
    assert (
        main(["merge", str(tmp_path / "s1/deploycheck.json"), "-o", str(tmp_path / "one.json"), "--fail-on-failure"])
        == 1
    )
    merged = json.loads((tmp_path / "one.json").read_text())
    missing = sorted(seen[1])
    assert merged["complete"] is False
    assert (
        merged["incomplete"]
        == "incomplete shards: shard 2/2 did not report (its units: "
        + ", ".join(f"tiny.yaml::tiny::{v}" for v in missing)
        + ")"
    )
    res = project.run("--deploycheck-shard=3/2")
    assert res.ret == 4 and "expected I/N with 1 <= I <= N, got '3/2'" in res.stderr.str()
