"""Never green by accident: a gate that checked nothing fails, and approved snapshots are never lost.

Each test reproduces one case of issue 21 with the message a user sees."""

from __future__ import annotations

import json
import os

from deploycheck.cli import main

from conftest import make_spec

LATIN1 = make_spec().replace("name: tiny\n", "name: tiny\n# owner: Ren\xe9\n").encode("latin-1")


# --- nothing in a spec folder is skipped silently ---------------------------------------------

def test_undecodable_spec_is_a_collection_error(project):
    (project.path / "gate.yaml").write_bytes(LATIN1)
    (project.path / "other.yaml").write_bytes(b"# caf\xe9\nkey: 1\n")  # not a spec: ignored as before
    res = project.run("--collect-only")
    res.stdout.fnmatch_lines(["*ERROR collecting gate.yaml*",
                              "gate.yaml:3: the file is not UTF-8: byte 0xe9 at column 13 cannot be decoded; "
                              "save the spec as UTF-8"])
    assert "other.yaml" not in res.stdout.str()
    assert res.ret == 2


def test_undecodable_and_unreadable_specs_fail_validate(tmp_path, capsys):
    (tmp_path / "gate.yaml").write_bytes(LATIN1)
    (tmp_path / "good.yaml").write_text(make_spec().replace("name: tiny", "name: good"))
    locked = tmp_path / "locked.yaml"
    locked.write_text(make_spec().replace("name: tiny", "name: locked"))
    locked.chmod(0)
    try:
        unreadable = not os.access(locked, os.R_OK)  # root reads anything
        assert main(["validate", str(tmp_path)]) == 1
    finally:
        locked.chmod(0o644)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{tmp_path}/gate.yaml:3: the file is not UTF-8: byte 0xe9 at column 13 cannot be decoded; "
                      "save the spec as UTF-8")
    assert out[1] == f"{tmp_path}/good.yaml: ok (good: 1 variant, formats torchscript)"
    if unreadable:
        assert out[2] == f"{tmp_path}/locked.yaml:1: cannot read the spec file: Permission denied"
        assert out[3] == "1 valid, 2 invalid"


def test_two_specs_with_one_name_are_an_error(project, tmp_path, capsys):
    for d in ("a", "b"):
        (project.path / d).mkdir()
        (project.path / d / "model.yaml").write_text(make_spec().replace("name: tiny\n", "")
                                                     .replace("factory: tinymodels", "python_path: ['..']\n  factory: tinymodels"))
    res = project.run("--collect-only", "-q")
    res.stdout.fnmatch_lines(["*ERROR collecting b/model.yaml*",
                              "b/model.yaml:1: name: name 'model' (no 'name:' given, so the file's stem) is also the "
                              "name of a/model.yaml: two specs with one name would share report rows, run folders and "
                              "a baseline; give each spec its own 'name:'"])
    assert res.ret == 2
    capsys.readouterr()
    assert main(["validate", str(project.path / "a"), str(project.path / "b")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"{project.path}/b/model.yaml:1: name: name 'model' (no 'name:' given, so the file's stem) "
                             f"is also the name of {project.path}/a/model.yaml: ")
    assert out[2] == "1 valid, 1 invalid"


# --- the metric fits the data -----------------------------------------------------------------

REGRESSOR = """
import torch
from torch import nn


class Reg(nn.Module):
    def __init__(self, out: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(10, out)

    def forward(self, x):
        return self.fc(x)
"""


def diabetes_spec(metric: str, out: int = 1) -> str:
    return (make_spec(factory="Reg", thresholds="  metric: {max_drop: 0.01}")
            .replace("tinymodels:Reg", "regress:Reg").replace("shape: [1, 4]", "shape: [1, 10]")
            .replace("  inputs:", f"  kwargs: {{out: {out}}}\n  inputs:")
            .replace("sklearn:iris", "sklearn:diabetes") + f"metric: {metric}\n")


def test_accuracy_on_a_regression_target_is_an_error(project):
    project.tester.makepyfile(regress=REGRESSOR)
    project.write(diabetes_spec("accuracy", out=3))
    res = project.run("-k", "metric")
    res.stdout.fnmatch_lines(["*metric 'accuracy' failed on the in-memory outputs: ValueError: accuracy needs class "
                              "labels 0..2 (one per output column), but the targets run from 25 to 346: if they are "
                              "values to predict, use metric mse, mae or r2"])
    assert res.ret == 1 and "passed" not in res.stdout.lines[-1]


def test_r2_metric_scores_a_regression(project):
    project.tester.makepyfile(regress=REGRESSOR)
    project.write(diabetes_spec("r2"))
    res = project.run("-k", "metric")
    res.assert_outcomes(passed=1)
    rows = [r for r in json.loads((project.path / "reports/deploycheck.json").read_text())["records"]
            if r["check"] == "metric"]
    assert rows[0]["metric"] == "r2" and rows[0]["higher_is_better"] is True and rows[0]["value"] < 1


def test_accuracy_on_fractional_targets_is_an_error():
    import pytest
    import torch

    from deploycheck.metrics import METRICS
    with pytest.raises(ValueError, match=r"^accuracy needs integer class labels, but the targets are not whole numbers "
                                         r"\(e.g. 0.5\): they look like values to predict; use metric mse, mae or r2$"):
        METRICS.get("accuracy")(torch.zeros(3, 2), torch.tensor([0.0, 0.5, 1.0]))
    assert METRICS.get("accuracy")(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0])) == 1.0


def test_r2_is_scikit_learns_r2_score():
    import torch
    from sklearn.metrics import r2_score

    from deploycheck.metrics import METRICS
    g = torch.Generator().manual_seed(0)
    o, t = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    assert abs(METRICS.get("r2")(o, t) - r2_score(t.numpy(), o.numpy())) < 1e-6
    assert METRICS.get("r2")(t, t) == 1.0
    assert METRICS.get("r2").higher_is_better


def test_init_picks_the_metric_from_the_targets(tmp_path):
    import subprocess
    import sys
    (tmp_path / "regress.py").write_text(REGRESSOR)
    for data, metric in (("sklearn:diabetes", "r2"), ("sklearn:digits", "accuracy")):
        out = tmp_path / f"{metric}.yaml"
        p = subprocess.run([sys.executable, "-m", "deploycheck.cli", "init", "--factory", "regress:Reg", "--shape", "1,10",
                            "--data", data, "-o", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert f"\nmetric: {metric}\n" in out.read_text()
