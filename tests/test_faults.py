"""Faults stay where they happen: a build that hangs, segfaults or ends its process fails its own
items and the session goes on with its report; workers and whatever they start never outlive
their run, a session's end, or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_MODELS, make_spec

FAULTY = '''

import ctypes

PIDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pids.txt")


def _record(tag, pid=None):
    with open(PIDS, "a") as fh:
        fh.write(f"{tag} {pid or os.getpid()}\\n")


def hangs():
    time.sleep(600)
    return Tiny()


def hang_data():
    time.sleep(600)


def local_class():
    """A model whose class lives inside the function: it cannot be pickled back from a build."""
    class Local(Tiny):
        pass
    return Local()


def exits():
    os._exit(3)


def hang_recipe(model, ctx):
    while True:
        time.sleep(0.1)


def segfault_recipe(model, ctx):
    ctypes.string_at(0)


def _sleepers(tag, n=8):
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        _record(tag, pid)


def fork_recipe(model, ctx):
    """A recipe that leaves 8 children behind."""
    _sleepers("build-child")
    return model


class Forks(Tiny):
    forked = False

    def forward(self, x):
        if _in_worker() and not Forks.forked:
            Forks.forked = True
            _sleepers("worker-child")
        return super().forward(x)


class HangsInWorker(Tiny):
    def forward(self, x):
        if _in_worker():
            _record("worker")
            time.sleep(60)
        return super().forward(x)


class DiesWhenSaved(Tiny):
    """Builds and runs, but ends the pytest process itself when the save stage traces it."""

    def forward(self, x):
        if torch.jit.is_tracing():
            os._exit(3)
        return super().forward(x)


def hangs_recorded():
    _record("build")
    time.sleep(60)
    return Tiny()
'''

WITH_CODE = "[{pickle: {allow: true, with_code: true}}]"  # the worker runs the model's own forward


@pytest.fixture
def faulty(project):
    project.tester.makepyfile(tinymodels=TINY_MODELS + FAULTY)
    return project


def _pids(project, tag: str) -> list[int]:
    path = project.path / "pids.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(ln.split()[1]) for ln in lines if ln.split()[0] == tag]


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped by init, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _all_gone(pids: list[int], within_s: float = 10.0) -> list[int]:
    """The pids still running after ``within_s`` (a killed process takes a moment to be reaped)."""
    end = time.monotonic() + within_s
    while True:
        alive = [p for p in pids if _running(p)]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.1)


def test_a_hanging_factory_fails_its_items_with_where_it_hung(faulty):
    faulty.write(make_spec(factory="hangs", extra="isolation: {build_timeout_s: 2}"))
    res = faulty.run("-k", "load or metric")
    res.assert_outcomes(failed=2)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny::baseline (declared at tiny.yaml:3): creating the model with factory 'tinymodels:hangs' "
            "did not finish within 2 s and was killed (isolation.build_timeout_s: 2 at tiny.yaml:18)",
            "--- where it was when the timeout struck (most recent call first) ---",
            "Current thread 0x* (most recent call first):",
            '  File "*tinymodels.py", line * in hangs',
        ]
    )


def test_a_hanging_data_callable_fails_the_spec_with_where_it_hung(faulty):
    faulty.write(
        make_spec(extra="isolation: {build_timeout_s: 2}").replace("sklearn:iris", "python:tinymodels:hang_data")
    )
    res = faulty.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny (declared at tiny.yaml:6): loading data 'python:tinymodels:hang_data' did not finish "
            "within 2 s and was killed (isolation.build_timeout_s: 2 at tiny.yaml:18)",
            "--- where it was when the timeout struck (most recent call first) ---",
            "*",
            '  File "*tinymodels.py", line * in hang_data',
        ]
    )


def test_a_model_that_cannot_be_pickled_is_built_again_in_the_session(faulty):
    faulty.write(make_spec(factory="local_class"))
    res = faulty.run("-k", "load or outputs", "--log-cli-level=INFO")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(
        [
            "*tiny: creating the model with factory 'tinymodels:local_class': the result cannot be "
            "sent back from its build process (AttributeError: Can't pickle local object "
            "'local_class.<locals>.Local'); built again in this process*"
        ]
    )


def test_a_hanging_recipe_fails_its_variant_and_the_baseline_still_passes(faulty):
    faulty.write(
        make_spec(
            variants="  baseline: {}\n  stuck:\n    custom: {callable: 'tinymodels:hang_recipe'}",
            extra="isolation: {build_timeout_s: 2}",
        )
    )
    res = faulty.run("-k", "load")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny::stuck (declared at tiny.yaml:12): building variant 'stuck' did not finish within 2 s "
            "and was killed (isolation.build_timeout_s: 2 at tiny.yaml:20)",
            "--- where it was when the timeout struck (most recent call first) ---",
            "*",
            '  File "*tinymodels.py", line * in hang_recipe',
        ]
    )


def test_a_factory_that_ends_its_process_fails_alone_and_the_report_keeps_the_rest(faulty):
    faulty.write(make_spec(), name="good")
    faulty.write(make_spec(factory="exits").replace("name: tiny", "name: dies"), name="dies")
    res = faulty.run("-k", "load or metric")
    res.assert_outcomes(passed=2, failed=2)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] dies::baseline (declared at dies.yaml:3): the build process exited with code 3 without an "
            "answer while creating the model with factory 'tinymodels:exits': the factory, a data callable or a "
            "recipe ended it",
        ]
    )
    res.stdout.fnmatch_lines(["*deploycheck summary*", "report written: */reports/deploycheck.json"])
    doc = json.loads((faulty.path / "reports" / "deploycheck.json").read_text())
    got = sorted((r["spec"], r["check"], r["status"]) for r in doc["records"])
    assert got == [
        ("dies", "load", "error"),
        ("dies", "metric", "error"),
        ("tiny", "load", "passed"),
        ("tiny", "metric", "passed"),
    ]


def test_a_session_that_dies_leaves_the_records_of_finished_items(faulty):
    faulty.write(make_spec(), name="a_good")
    faulty.write(make_spec(factory="DiesWhenSaved").replace("name: tiny", "name: dies"), name="b_dies")
    res = faulty.run_subprocess("-k", "load or metric")
    assert res.ret == 3
    # the reports written at its start stand: incomplete, nothing counted as passed
    doc = json.loads((faulty.path / "reports" / "deploycheck.json").read_text())
    assert doc["complete"] is False and {r["status"] for r in doc["records"]} == {"not run"}
    lines = (faulty.path / "reports" / "deploycheck.partial.jsonl").read_text().splitlines()
    assert sorted((r["spec"], r["check"], r["status"]) for r in map(json.loads, lines)) == [
        ("tiny", "load", "passed"),
        ("tiny", "metric", "passed"),
    ]
    # the next session that completes writes its reports and removes the journal
    (faulty.path / "b_dies.yaml").unlink()
    faulty.run("-k", "load").assert_outcomes(passed=1)
    assert not (faulty.path / "reports" / "deploycheck.partial.jsonl").exists()
    assert json.loads((faulty.path / "reports" / "deploycheck.json").read_text())["records"][0]["spec"] == "tiny"


def test_a_segfaulting_recipe_fails_its_variant_with_the_crash_stack(faulty):
    faulty.write(make_spec(variants="  baseline: {}\n  crashy:\n    custom: {callable: 'tinymodels:segfault_recipe'}"))
    res = faulty.run("-k", "load")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tiny::crashy (declared at tiny.yaml:12): the build process died with SIGSEGV (segmentation "
            "fault) while building variant 'crashy': the factory, a data callable or a recipe ended it",
            "--- where it died (most recent call first) ---",
            "Fatal Python error: Segmentation fault",
            "*",
            "Current thread 0x* (most recent call first):",
            '  File "*ctypes*", line * in string_at',
            '  File "*tinymodels.py", line * in segfault_recipe',
        ]
    )


def test_children_a_build_or_a_worker_starts_do_not_outlive_them(faulty):
    faulty.write(
        make_spec(
            factory="Forks",
            formats=WITH_CODE,
            variants="  baseline: {}\n  forky:\n    custom: {callable: 'tinymodels:fork_recipe'}",
        )
    )
    res = faulty.run("-k", "load")
    res.assert_outcomes(passed=2)
    build_children, worker_children = _pids(faulty, "build-child"), _pids(faulty, "worker-child")
    assert len(build_children) == 8 and len(worker_children) == 16  # 8 per worker: baseline and forky
    assert _all_gone(build_children + worker_children) == []


@pytest.mark.parametrize("where", ["worker", "build"])
def test_ctrl_c_leaves_no_worker_or_build_running(faulty, tmp_path, where):
    if where == "worker":
        faulty.write(make_spec(factory="HangsInWorker", formats=WITH_CODE))
    else:
        faulty.write(make_spec(factory="hangs_recorded"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}
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
        cwd=faulty.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # a shell without job control starts background commands with SIGINT ignored, and Python
        # keeps an ignored SIGINT ignored: the inner session would never see this Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        end = time.monotonic() + 120
        while not _pids(faulty, where) and inner.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        (pid,) = _pids(faulty, where)
        assert _running(pid)
        inner.send_signal(signal.SIGINT)
        out, _ = inner.communicate(timeout=60)
    finally:
        if inner.poll() is None:
            os.killpg(inner.pid, signal.SIGKILL)
            inner.wait()
    text = out.decode()
    assert inner.returncode == 2, text
    assert "KeyboardInterrupt" in text, text
    assert _all_gone([pid]) == [], text


def test_an_unforeseen_error_is_located_like_any_stage_error(tmp_path):
    """A bug (not a StageError) inside a memoised stage still names its spec by name, with its
    variant, format and spec line: ``[save] tiny::baseline::torchscript``, not ``tiny.yaml::…``."""
    from deploycheck.errors import StageError
    from deploycheck.runner import Runner
    from deploycheck.spec import parse
    from deploycheck.target import Target

    spec = parse(make_spec(), filename=str(tmp_path / "tiny.yaml"))
    runner = Runner(run_dir=str(tmp_path / "run"))
    t = Target(spec, spec.variant("baseline"), spec.variant("baseline").formats[0])

    def boom():
        raise ZeroDivisionError("a bug")

    try:
        with pytest.raises(StageError) as ei:
            runner._memo("artifact", t, boom)
        assert ei.value.headline() == (
            f"[save] tiny::baseline::torchscript (declared at {t.where}): unexpected error: ZeroDivisionError: a bug"
        )
        with pytest.raises(StageError) as ei:
            runner._memo("data", spec, boom)
        assert ei.value.headline() == "[build] tiny: unexpected error: ZeroDivisionError: a bug"
        with pytest.raises(StageError) as again:  # memoised: the same error, not a second run
            runner._memo("data", spec, lambda: 1)
        assert again.value is ei.value
    finally:
        runner.close()


def test_a_failed_build_is_shown_once_and_every_item_of_its_variant_still_fails(faulty):
    """24 items of a variant in three formats used to repeat the same build error; the first item
    shows it in full, the others fail with one line pointing at it (never skipped, never passed)."""
    faulty.write(
        make_spec(
            formats="[torchscript, export, onnx]",
            variants="  baseline: {}\n  bad:\n    custom: {callable: 'tinymodels:crashes'}",
        )
    )
    res = faulty.run()
    assert res.ret == 1
    outcomes = res.parseoutcomes()
    full = (
        "[build] tiny::bad (declared at tiny.yaml:12): recipe step 1 (custom:crashes) failed: "
        "ValueError: the recipe tripped over its own feet"
    )
    first = "tiny.yaml::tiny::bad::torchscript::load"
    short = f"[build] tiny::bad (declared at tiny.yaml:12): build of variant 'bad' failed; see {first}"
    lines = res.stdout.lines
    bad = [ln for ln in lines if ln.startswith("FAILED tiny.yaml::tiny::bad::")]
    assert len(bad) == outcomes["failed"] == 15  # every item of the bad variant fails, and only those
    assert sum(ln.startswith(full) for ln in lines) == 1
    assert lines.count(short) == outcomes["failed"] - 1
    assert lines[lines.index(full) - 1].strip("_ ") == "tiny::bad::torchscript::load"
    assert outcomes.get("passed") == 15 and "skipped" not in outcomes
