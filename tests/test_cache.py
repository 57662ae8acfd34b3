"""The cross-session cache: a re-run reuses everything; a changed input rebuilds what depends on it."""

from __future__ import annotations

import json

from conftest import make_spec

TH = "  size: {max_mb: 1}"  # no metric gate: pruning a random net moves its accuracy
VARIANTS = "  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.5}"


def rows(project):
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    return {(r["variant"], r["format"]): r for r in doc["rows"]}


def test_second_run_reuses_everything(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    res = project.run(cache)
    res.assert_outcomes(passed=10)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 0 built variants, 0 artifacts, 0 fresh-process results (*)"])
    assert rows(project)[("pruned", "torchscript")]["load"] == "ok"
    res = project.run(cache)
    res.assert_outcomes(passed=10)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 2 built variants, 2 artifacts, 2 fresh-process results (*)"])
    assert rows(project)[("pruned", "torchscript")]["load"] == "ok (cached)"


def test_changed_recipe_invalidates_only_that_variant(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    project.run(cache).assert_outcomes(passed=10)
    project.write(make_spec(variants=VARIANTS.replace("0.5", "0.6"), thresholds=TH))
    res = project.run(cache)
    res.assert_outcomes(passed=10)
    # the baseline is reused; the pruned variant is rebuilt, re-saved and re-run
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 1 fresh-process results (*)"])


def test_changed_model_code_invalidates_everything(project, tmp_path, pytester):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec(variants=VARIANTS, thresholds=TH))
    project.run(cache).assert_outcomes(passed=10)
    src = (pytester.path / "tinymodels.py").read_text()
    (pytester.path / "tinymodels.py").write_text(src + "\n# an edit\n")
    res = project.run(cache)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 0 built variants, 0 artifacts, 0 fresh-process results (*)"])


def test_build_level_remeasures_and_off_disables(project, tmp_path):
    cache = f"--deploycheck-cache-dir={tmp_path / 'cache'}"
    project.write(make_spec())
    project.run(cache).assert_outcomes(passed=5)
    res = project.run(cache, "--deploycheck-cache=build")
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 1 artifacts, 0 fresh-process results (*)"])
    res = project.run(cache, "--deploycheck-cache=off")
    res.assert_outcomes(passed=5)
    assert "deploycheck cache:" not in res.stdout.str()


def test_a_damaged_cache_entry_is_rebuilt_not_used(project, tmp_path):
    cache_dir = tmp_path / "cache"
    project.write(make_spec())
    project.run(f"--deploycheck-cache-dir={cache_dir}").assert_outcomes(passed=5)
    for f in (cache_dir / "artifact").rglob("artifact"):
        f.write_bytes(f.read_bytes()[:100])
    res = project.run(f"--deploycheck-cache-dir={cache_dir}")
    res.assert_outcomes(passed=5)
    res.stdout.fnmatch_lines(["deploycheck cache: reused 1 built variants, 0 artifacts, 0 fresh-process results (*)"])
