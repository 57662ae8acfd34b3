"""Files are data: sidecars, caches, pickles and YAML from elsewhere never choose code to run, and
never take more memory than they are worth (issue 22)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
import subprocess
import sys

import pytest
from conftest import make_spec, tinymodels_of


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


class _Touch:
    """A pickle payload: unpickling it creates ``path`` (a stand-in for any command)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# --- sidecars name data, never code ----------------------------------------------------------------


def test_a_sidecar_never_chooses_the_factory_or_modules_to_import(project):
    from safetensors.torch import save_file

    model = tinymodels_of(project).Tiny()
    dist = project.path / "dist"
    dist.mkdir()
    pwned = project.path / "PWNED"
    (project.path / "pwnmod.py").write_text(f"open({str(project.path / 'IMPORTED')!r}, 'w').close()\n")
    for name, evil in (
        ("factory", {"factory": "os:system", "kwargs": {"command": f"touch {pwned}"}}),
        ("requires", {"requires": ["pwnmod"]}),
    ):
        path = dist / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        # the file's true size and sha256: only the code-choosing keys are the attacker's
        (dist / f"{name}.safetensors.manifest.json").write_text(
            json.dumps({"format": "safetensors", "size": path.stat().st_size, "sha256": _sha(path), **evil})
        )
    project.write(
        make_spec(
            formats="[safetensors]",
            variants=(
                "  baseline: {}\n"
                "  evil-factory:\n    artifact: {path: dist/factory.safetensors}\n"
                "  evil-requires:\n    artifact: {path: dist/requires.safetensors}"
            ),
        )
    )
    res = project.run("-k", "load and not baseline")
    res.assert_outcomes(failed=2)
    assert not pwned.exists() and not (project.path / "IMPORTED").exists()
    res.stdout.fnmatch_lines(
        [
            "*tiny::evil-factory::safetensors*manifest-mismatch: factory.safetensors.manifest.json names factory "
            "'os:system' with kwargs {\"command\": *}, but the spec rebuilds this model with 'tinymodels:Tiny' and "
            "kwargs {}: a manifest never chooses the code to run*"
        ]
    )
    res.stdout.fnmatch_lines(
        [
            "*tiny::evil-requires::safetensors*manifest-refused: requires.safetensors.manifest.json asks to import "
            "'pwnmod' before loading; deploycheck imports only the runtime libraries torchao for an artifact*"
        ]
    )


def test_inspect_never_runs_a_sidecars_factory(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from deploycheck.cli import main

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    pwned = tmp_path / "PWNED"
    (tmp_path / "w.safetensors.manifest.json").write_text(
        json.dumps(
            {
                "format": "safetensors",
                "size": path.stat().st_size,
                "sha256": _sha(path),
                "factory": "os:system",
                "kwargs": {"command": f"touch {pwned}"},
            }
        )
    )
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "note:     the manifest names factory 'os:system': not used (only a spec chooses code to run)" in out
    assert (
        "status:   ok (bytes checked; not loaded: a safetensors state dict is rebuilt by a spec's model.factory" in out
    )
    assert not pwned.exists()


# --- pickles only on opt-in ------------------------------------------------------------------------


def test_inspect_refuses_a_pickle_unless_allowed(tmp_path, capsys):
    from deploycheck.cli import main

    pwned = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Touch(str(pwned)), protocol=2))
    assert main(["inspect", str(evil)]) == 1
    out = capsys.readouterr().out
    assert "status:   NOT LOADED" in out
    assert (
        f"reason:   pickle: {evil}: loading a pickle runs code from the file; pass --allow-pickle to load it "
        "if you trust where it came from"
    ) in out
    assert not pwned.exists()
    main(["inspect", str(evil), "--allow-pickle"])  # the opt-in does what it says
    assert pwned.exists()


# --- caches: verified before use, never unpickled --------------------------------------------------


def test_a_damaged_cache_entry_is_removed_and_rebuilt_and_a_planted_pickle_never_runs(project, tmp_path):
    project.write(make_spec())
    cache = tmp_path / "cache"
    args = ("-k", "outputs or load", f"--deploycheck-cache-dir={cache}")  # the last of two such options counts
    project.run(*args).assert_outcomes(passed=2)
    (built,) = glob.glob(f"{cache}/built/*/*")
    # two result entries: the full result, and its evaluation kept apart from the timing
    results = glob.glob(f"{cache}/result/*/*")
    assert len(results) == 2
    # a flipped bit in the built entry's outputs, a truncated result
    data = bytearray(open(f"{built}/outputs.pt", "rb").read())
    data[len(data) // 2] ^= 0x10
    open(f"{built}/outputs.pt", "wb").write(bytes(data))
    for result in results:
        size = os.path.getsize(f"{result}/outputs.pt")
        with open(f"{result}/outputs.pt", "r+b") as fh:
            fh.truncate(size // 2)
    res = project.run(*args)
    res.assert_outcomes(passed=2)
    res.stdout.fnmatch_lines(
        [
            f"*CacheWarning: deploycheck cache: entry built/{os.path.basename(built)[:16]} failed its "
            "checksum (outputs.pt); removed and rebuilt"
        ]
    )
    for result in results:
        res.stdout.fnmatch_lines(
            [
                f"*CacheWarning: deploycheck cache: entry result/{os.path.basename(result)[:16]} failed "
                "its checksum (outputs.pt); removed and rebuilt"
            ]
        )
    assert "reused 0 built variants, 1 artifacts, 0 fresh-process results" in res.stdout.str()
    # rebuilt entries are whole again: a third run reuses them silently
    res = project.run(*args)
    assert "CacheWarning" not in res.stdout.str()
    assert "reused 1 built variants, 1 artifacts, 1 fresh-process results" in res.stdout.str()
    # a pickle planted by someone who also rewrote the checksums: verified, yet never unpickled
    pwned = tmp_path / "PWNED"
    import torch

    torch.save(_Touch(str(pwned)), f"{built}/model.pt")
    sums = json.load(open(f"{built}/checksums.json"))
    sums["model.pt"] = _sha(f"{built}/model.pt")
    json.dump(sums, open(f"{built}/checksums.json", "w"))
    res = project.run(*args)
    res.assert_outcomes(passed=2)
    assert not pwned.exists()
    res.stdout.fnmatch_lines(
        [
            f"*deploycheck cache: entry built/{os.path.basename(built)[:16]} holds a model this "
            "process does not unpickle (it names 'posix.system', which is not a torch, torchao or "
            "spec module class); removed and rebuilt"
        ]
    )


def test_cached_models_load_weights_only_with_the_specs_classes(tmp_path):
    import torch

    from deploycheck.cache import load_model

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "mymodels.py").write_text(
        "import torch\nclass M(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(2, 2)\n"
    )
    try:
        import mymodels

        torch.save(mymodels.M(), tmp_path / "m.pt")
        assert type(load_model(str(tmp_path / "m.pt"), trusted_modules=["mymodels"])).__name__ == "M"
        with pytest.raises(
            ValueError, match="it names 'mymodels.M', which is not a torch, torchao or spec module class"
        ):
            load_model(str(tmp_path / "m.pt"))  # a class the spec does not name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mymodels", None)


# --- bounded inputs ------------------------------------------------------------------------------

BOMB = 'deploycheck: 1\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

BOMB_MESSAGE = (
    "bomb.yaml:7: YAML error: the aliases here expand to more than 100000 values; a spec never needs "
    "this (an alias bomb?); write the values out or use fewer anchors"
)


def test_a_yaml_alias_bomb_is_a_spec_error_at_collection(project):
    assert len(BOMB) < 700  # the 629-byte shape of the issue: nine levels of nine aliases
    project.write(BOMB, name="bomb")
    res = project.run()
    assert res.ret == pytest.ExitCode.INTERRUPTED  # a collection error
    res.stdout.fnmatch_lines([f"*{BOMB_MESSAGE}*"])


def test_a_yaml_alias_bomb_fails_validate(tmp_path, capsys):
    from deploycheck.cli import main

    (tmp_path / "bomb.yaml").write_text(BOMB)
    assert main(["validate", str(tmp_path / "bomb.yaml")]) != 0
    assert f"{tmp_path}{os.sep}{BOMB_MESSAGE}" in capsys.readouterr().out


def test_a_few_aliases_still_work():
    from deploycheck.spec.loader import load

    doc = load("a: &t {atol: 0.1}\nb: *t\nc: [*t, *t]\n", "x.yaml")
    assert doc["b"] == {"atol": 0.1} and doc["c"] == [{"atol": 0.1}, {"atol": 0.1}]


def test_worker_output_is_capped_and_the_rest_counted():
    from deploycheck.isolation import KEEP, OutputTail

    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfor _ in range(50): sys.stdout.buffer.write(b'x' * 10**6)\nsys.stdout.buffer.write(b'END')",
        ],
        stdout=subprocess.PIPE,
    )
    tail = OutputTail(p.stdout)
    p.wait()
    text = tail.text(n=100)
    assert text.startswith(f"[… {(50_000_003 - KEEP) / 1e6:.1f} MB more output not kept; ")
    assert text.endswith("x" * 97 + "END")
    assert sum(len(c) for c in tail._chunks) <= KEEP + (1 << 16)  # memory stays bounded


# --- markdown reports carry user strings as text -------------------------------------------------


@pytest.mark.parametrize("evil", ["<!-- hidden", "<script>alert(1)</script>", "`code` and ```fence", "a | b | c"])
def test_markdown_escapes_every_user_string(evil):
    from deploycheck.report import markdown, summary_rows

    recs = [
        {
            "spec": f"s{evil}",
            "file": "s.yaml",
            "variant": f"v{evil}",
            "format": f"f{evil}",
            "check": check,
            "status": status,
            "recipe": f"r{evil}",
            "message": f"err {evil}",
            "formula": None,
            "details": {},
        }
        for check, status in (("load", "error"), ("size", "passed"))
    ]
    text = markdown(
        summary_rows(recs),
        {
            "machine": {"processor": f"cpu {evil}"},
            "git": {"commit": evil},
            "created": evil,
            "libraries": {"torch": evil},
        },
    )
    for raw in ("<!--", "<script>", "```", "`code`"):
        assert raw not in text
    assert not any(" | b | " in ln for ln in text.splitlines())  # a pipe never adds a table column
    esc = evil.replace("\\", "\\\\").replace("`", "\\`").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    assert f"err {esc}" in text
    assert f"**s{esc}::v{esc}::f{esc}**" in text


def test_a_build_whose_model_a_cache_may_not_hold_keeps_its_outputs_and_rebuilds_the_model_on_demand(project, tmp_path):
    import shutil

    # dynamic int8 holds packed weights (torch.ScriptObject), which weights_only loading refuses
    project.write(
        make_spec(
            variants="  baseline: {}\n  q:\n    quantize: {method: dynamic_int8}",
            thresholds="  metric: {max_drop: 0.2}",
        )
    )
    cache = tmp_path / "cache"
    args = ("-k", "q and (load or metric)", f"--deploycheck-cache-dir={cache}")
    project.run(*args).assert_outcomes(passed=2)
    held = sorted(os.path.exists(os.path.join(d, "model.pt")) for d in glob.glob(f"{cache}/built/*/*"))
    assert held == [False, True]  # the baseline's model is stored, the quantized one's is not
    shutil.rmtree(cache / "artifact")  # the saves need the models again
    shutil.rmtree(cache / "result")
    res = project.run(*args)
    res.assert_outcomes(passed=2)
    assert "reused 2 built variants, 0 artifacts, 0 fresh-process results" in res.stdout.str()
    assert "CacheWarning" not in res.stdout.str()
