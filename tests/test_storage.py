"""Storage problems are named once, early: the report folder at session start, a full cache turns
caching off with one warning, a full run folder fails the items it affects (issue 22)."""

from __future__ import annotations

import errno
import os
import warnings

import pytest
from conftest import make_spec


def test_a_report_dir_that_is_a_file_is_a_usage_error_before_any_test_runs(project):
    project.write(make_spec())
    (project.path / "reports").write_text("not a folder")
    res = project.run()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(
        [
            f"ERROR: deploycheck: cannot write reports to {project.path}/reports: "
            f"{project.path}/reports is a file, not a folder; write them elsewhere with "
            "--deploycheck-report-dir DIR (or ini deploycheck_report_dir), or not at all with "
            "--deploycheck-no-report"
        ]
    )
    assert "passed" not in res.stdout.str()  # named before the first test, not after the last


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_report_dir_is_a_usage_error(project):
    project.write(make_spec())
    out = project.path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        res = project.run(f"--deploycheck-report-dir={out}")
    finally:
        out.chmod(0o700)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"ERROR: deploycheck: cannot write reports to {out}: Permission denied; *"])


def test_a_full_report_disk_is_a_usage_error(project, monkeypatch):
    import tempfile

    project.write(make_spec())
    real = tempfile.NamedTemporaryFile

    def full(*a, **kw):  # the probe file cannot be written: the disk is full
        if kw.get("prefix") == ".deploycheck-probe-":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    res = project.run()
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["ERROR: deploycheck: cannot write reports to */reports: no space left on device; *"])


def _fill_disk(monkeypatch, root):
    """Every copy into the cache folder ``root`` fails as on a full disk."""
    import shutil

    real = shutil.copyfile

    def copyfile(src, dst, *a, **kw):
        if str(dst).startswith(str(root)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_a_full_cache_turns_caching_off_with_one_warning(tmp_path, monkeypatch):
    from deploycheck.cache import Cache, CacheWarning

    out = tmp_path / "outputs.pt"
    out.write_bytes(b"\x00" * 100)
    cache = Cache(str(tmp_path / "cache"))
    _fill_disk(monkeypatch, tmp_path / "cache")
    with pytest.warns(CacheWarning) as got:
        cache.put_result("ab" * 32, {"ok": True}, str(out))
        cache.put_result("cd" * 32, {"ok": True}, str(out))
        cache.put_artifact("ef" * 32, str(out), {"sha256": "x"})
    assert [str(w.message) for w in got] == [
        f"deploycheck cache: no space left on device in {tmp_path / 'cache'}; caching is off for the rest of this "
        "session (free space, or pass --deploycheck-cache-dir / --deploycheck-cache off)"
    ]
    assert not cache.enabled and cache.get_result("ab" * 32, str(tmp_path / "x.pt")) is None
    assert os.listdir(tmp_path / "cache" / "tmp") == []  # no half-written staging folder left behind


def test_a_full_cache_does_not_fail_the_run(project, monkeypatch, tmp_path):
    _fill_disk(monkeypatch, tmp_path / "full")
    project.write(make_spec())
    res = project.run("-k", "load or outputs", f"--deploycheck-cache-dir={tmp_path / 'full'}")
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(
        ["*CacheWarning: deploycheck cache: no space left on device in *; caching is off for the rest of this session*"]
    )


def test_a_cache_folder_that_cannot_be_made_turns_caching_off(tmp_path):
    from deploycheck.cache import Cache, CacheWarning

    (tmp_path / "file").write_text("x")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        cache = Cache(str(tmp_path / "file" / "cache"))
    assert not cache.enabled
    assert [w.category for w in got] == [CacheWarning]
    assert str(got[0].message).startswith(
        f"deploycheck cache: Not a directory in {tmp_path / 'file' / 'cache'}; caching is off"
    )


def test_a_full_run_dir_fails_the_items_that_save_there(project, monkeypatch):
    monkeypatch.setattr("deploycheck.stages.save.free_bytes", lambda folder: 0)  # a full disk under the run folder
    project.write(make_spec())
    res = project.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*[[]save[]] tiny::baseline::torchscript*: no space left on device in *: "
            "free space there, or move the run folder with --deploycheck-run-dir DIR*"
        ]
    )


def test_a_writer_that_reports_no_space_is_named_so():
    from deploycheck.errors import no_space

    assert no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert no_space(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"))
    assert not no_space(RuntimeError("unsupported operator"))
