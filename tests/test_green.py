"""Never green by accident: a gate that checked nothing fails, and approved snapshots are never lost.

Each test reproduces one case of issue 21 with the message a user sees."""

from __future__ import annotations

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
