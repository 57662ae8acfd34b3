"""Deletion only of what deploycheck made: the cache's eviction and cleanup, and the removal of
earlier sessions' run folders, never follow a symlink, touch only folders that carry deploycheck's
marker, and refuse a configured folder that is a link (naming both paths). Each test points a link
at a folder of a user's files, some of them old, and asserts every file there survives."""

from __future__ import annotations

import os
import time

import pytest
from conftest import make_spec

from deploycheck.cache import Cache, clean, evict
from deploycheck.cache.safe import UnsafeFolder

HOURS_AGO = time.time() - 5 * 3600


def _users_files(root) -> list[str]:
    """A folder of someone else's files, every folder in it old enough for stale-staging cleanup,
    one of them even named and marked like deploycheck's own."""
    root.mkdir()
    for name in ("photos", "built-notes", "1234-5678"):
        (root / name).mkdir()
        (root / name / "keep.txt").write_text("mine")
    (root / "built-notes" / ".deploycheck-staging").touch()
    (root / "built-notes" / "checksums.json").touch()
    for name in ("photos", "built-notes", "1234-5678"):
        os.utime(root / name, (HOURS_AGO, HOURS_AGO))
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _all(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_session_with_a_symlinked_cache_tmp_deletes_nothing_in_its_target(project, tmp_path):
    home = tmp_path / "home"
    before = _users_files(home)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tmp").symlink_to(home)  # e.g. a restored CI cache
    project.write(make_spec())
    res = project.run(f"--deploycheck-cache-dir={cache}", "-k", "load", "-W", "always")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(
        [
            f"*deploycheck: the cache's tmp/ folder {cache / 'tmp'} is a symlink and resolves to {home}, outside "
            "where it was configured; deploycheck deletes only inside folders it owns, so it refuses a linked one: "
            f"set --deploycheck-cache-dir (or DEPLOYCHECK_CACHE_DIR) to {home} itself, or remove the link; "
            "caching is off for this session*"
        ]
    )
    assert _all(home) == before
    with pytest.raises(UnsafeFolder, match=f"cache's tmp/ folder {cache / 'tmp'} is a symlink and resolves to {home}"):
        evict(str(cache), 0)
    assert _all(home) == before


def test_symlinked_entries_and_staging_folders_are_never_followed_and_unmarked_ones_stay(tmp_path):
    home = tmp_path / "home"
    before = _users_files(home)
    cache = tmp_path / "cache"
    for kind, key in (("built", "ab" * 32), ("result", "cd" * 32)):
        (cache / kind / key[:2]).mkdir(parents=True)
        (cache / kind / key[:2] / key).symlink_to(home / "built-notes")  # a linked "entry", marker and all
    (cache / "artifact").mkdir()
    (cache / "artifact" / "ef").symlink_to(home)  # a linked shard
    (cache / "tmp").mkdir()
    (cache / "tmp" / "built-abc123").symlink_to(home / "built-notes")  # a linked "staging folder"
    (cache / "tmp" / "result-zzz").mkdir()  # deploycheck's name, but no marker: not ours
    (cache / "tmp" / "result-zzz" / "keep.txt").write_text("mine")
    own = Cache(str(cache))._staging("built")  # a real staging folder an interrupted writer left
    for p in (cache / "tmp" / "result-zzz", own):
        os.utime(p, (HOURS_AGO, HOURS_AGO))
    assert evict(str(cache), 0) == []  # nothing of ours to evict: the links are not entries
    assert not os.path.exists(own)  # the marked one went
    assert (cache / "tmp" / "result-zzz" / "keep.txt").read_text() == "mine"
    clean(str(cache))
    assert (cache / "tmp" / "result-zzz" / "keep.txt").read_text() == "mine"
    assert _all(home) == before


def test_a_symlinked_cache_root_is_refused_by_the_cache_eviction_and_the_cache_command(tmp_path, capsys):
    from deploycheck.cli import main

    home = tmp_path / "home"
    before = _users_files(home)
    for kind in ("built", "tmp"):  # make it look like a cache, old entries and staging included
        (home / kind / "ab" / ("ab" * 32)).mkdir(parents=True)
        (home / kind / "ab" / ("ab" * 32) / "checksums.json").touch()
    before = _all(home)
    root = tmp_path / "cache"
    root.symlink_to(home)
    warned: list[str] = []
    assert not Cache(str(root), warn=warned.append).enabled
    assert warned == [
        f"deploycheck: the cache folder {root} is a symlink and resolves to {home}, outside where it was configured; "
        "deploycheck deletes only inside folders it owns, so it refuses a linked one: set --deploycheck-cache-dir "
        f"(or DEPLOYCHECK_CACHE_DIR) to {home} itself, or remove the link; caching is off for this session"
    ]
    with pytest.raises(UnsafeFolder):
        evict(str(root), 0)
    assert main(["cache", "clean", "--dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"deploycheck: the cache folder {root} is a symlink and resolves to {home}" in err
    assert _all(home) == before


def test_a_symlinked_run_folder_is_refused_and_unmarked_session_folders_stay(project, tmp_path):
    home = tmp_path / "home"
    before = _users_files(home)  # "1234-5678": a session's name, and pid 1234 is likely gone
    base = tmp_path / "base"
    base.mkdir()
    (base / "run").symlink_to(home)
    project.write(make_spec())
    res = project.run(f"--deploycheck-run-dir={base}", "-k", "load")
    assert res.ret == 4
    res.stderr.fnmatch_lines(
        [
            f"ERROR: deploycheck: the run folder's run/ folder {base / 'run'} is a symlink and resolves to {home}, "
            "outside where it was configured; deploycheck deletes only inside folders it owns, so it refuses a "
            f"linked one: set --deploycheck-run-dir to {home} itself, or remove the link"
        ]
    )
    assert _all(home) == before
