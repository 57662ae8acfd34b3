"""The deploycheck command, with exact outputs and exit codes."""

from __future__ import annotations

import json
import os

import pytest
from conftest import TINY_MODELS, cli, make_spec

from deploycheck.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_validate_reports_every_error_and_exits_1(tmp_path, capsys):
    (tmp_path / "tinymodels.py").write_text(TINY_MODELS)  # validate imports the factory
    (tmp_path / "good.yaml").write_text(make_spec())
    (tmp_path / "bad.yaml").write_text(make_spec(formats="[torchscrpt]"))
    (tmp_path / "workflow.yaml").write_text("on: [push]\n")
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        f"{tmp_path}/bad.yaml:9: formats[0]: unknown format 'torchscrpt'; did you mean 'torchscript'?"
    )
    assert out[1] == f"{tmp_path}/good.yaml: ok (tiny: 1 variant, formats torchscript)"
    assert out[2] == "1 valid, 1 invalid"
    assert main(["validate", str(tmp_path / "good.yaml")]) == 0


def test_validate_the_shipped_specs():
    assert main(["validate", os.path.join(ROOT, "specs")]) == 0


def test_schema_prints_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "deploycheck spec"
    assert schema["properties"]["deploycheck"]["const"] == 1


def test_init_writes_a_valid_spec_without_prompting(tmp_path):
    out = tmp_path / "specs" / "net.yaml"
    (tmp_path / "pkg").mkdir()  # init refuses a factory that does not resolve (python_path: the spec's folder and ..)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "models.py").write_text("import torch\n\n\nclass Net(torch.nn.Module):\n    pass\n")
    p = cli("init", "--factory", "pkg.models:Net", "--shape", "1,3,32,32", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"wrote {out}; run: pytest {out}\n"
    assert "inputs: {shape: [1, 3, 32, 32], dtype: float32}" in out.read_text()
    assert main(["validate", str(out)]) == 0
    p = cli("init", "--factory", "pkg.models:Net", "--shape", "1,4", "-o", str(out))
    assert (p.returncode, p.stderr) == (1, f"{out} exists; not overwriting it (use --force)\n")


def _artifact(tmp_path):
    import torch

    from deploycheck.formats import FORMATS, SaveContext
    from deploycheck.formats.integrity import write_manifest

    path = str(tmp_path / "m.pt2")
    FORMATS.get("export")().save(
        torch.nn.Linear(4, 2).eval(),
        path,
        SaveContext(example=torch.ones(1, 4), options=FORMATS.get("export").Options(), arch={}),
    )
    write_manifest(path, fmt="export", input_shape=[1, 4], input_dtype="float32", extra={})
    return path


def test_inspect_good_and_broken_files(tmp_path, capsys):
    path = _artifact(tmp_path)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"file:     {path}"
    assert out[1] == "format:   a torch.export .pt2"
    assert out[-1] == "status:   ok (loaded in a fresh process)"
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    assert main(["inspect", path]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "status:   BROKEN"
    assert (
        out[-1] == f"reason:   truncated: {path}: the file is incomplete: {len(data) // 3} of {len(data)} bytes "
        "(a copy or upload was cut short); copy it again from the build"
    )
    onnx_named_pt2 = tmp_path / "x.pt2"
    onnx_named_pt2.write_bytes(b"\x08\x0a\x12\x07pytorch" + b"\x00" * 40)
    assert main(["inspect", str(onnx_named_pt2), "--format", "export"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"reason:   wrong-format: {onnx_named_pt2}: the file is an ONNX file, but it is declared as a torch.export .pt2 "
        "file: check which file was shipped"
    )


def test_inspect_lists_every_input_and_output(tmp_path, capsys):
    import torch

    from deploycheck.formats.integrity import write_manifest

    class Two(torch.nn.Module):
        def forward(self, tokens, mask):
            h = tokens.float() * mask
            return {"logits": h.sum(-1, keepdim=True), "hidden": h}

    path = str(tmp_path / "two.pt2")
    example = {"tokens": torch.ones(2, 5, dtype=torch.int64), "mask": torch.ones(2, 5)}
    torch.export.save(torch.export.export(Two(), (), example), path)
    declared = {"tokens": {"shape": [2, 5], "dtype": "int64"}, "mask": {"shape": [2, 5], "dtype": "float32"}}
    write_manifest(path, fmt="export", input_shape=[2, 5], input_dtype="int64", extra={"inputs": declared})
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("inputs:   2")
    assert out[at : at + 3] == ["inputs:   2", "  mask: [2, 5] float32", "  tokens: [2, 5] int64"]
    at = out.index("outputs:  2")
    assert out[at : at + 3] == ["outputs:  2", "  logits: [2, 1]", "  hidden: [2, 5]"]
    assert out[-1] == "status:   ok (loaded in a fresh process)"
    # inputs the program does not take: the outputs are not listed, and it says why
    declared["mask"]["shape"] = [2, 9]
    write_manifest(path, fmt="export", input_shape=[2, 5], input_dtype="int64", extra={"inputs": declared})
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  mask: [2, 9] float32" in out
    assert out[-2].startswith("outputs:  not listed: it did not run on zeros of the declared inputs (")


def test_inspect_says_unknown_for_what_it_cannot_recognise(tmp_path, capsys):
    """Random bytes named .onnx, text named .ts, a link to a system file named .onnx: nothing
    was checked, so the status is 'unknown' and the exit code 1, never 'ok'."""
    noise = tmp_path / "x.onnx"
    noise.write_bytes(bytes([*range(7, 256), *range(7)]) * 16)  # 4 kB with no known header
    text = tmp_path / "model.ts"
    text.write_text("not a model\nat all\n")
    link = tmp_path / "p.onnx"
    link.symlink_to(text)
    assert main(["inspect", str(noise)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "format:   unknown"
    assert out[-3] == "status:   unknown"
    assert out[-2] == (
        f"reason:   unknown-format: {noise}: not a format deploycheck recognises: 4096 bytes of binary data "
        "with no header deploycheck knows, starting 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16; nothing was checked"
    )
    assert out[-1] == (
        "hint:     the name says an ONNX file, but the bytes do not; if it is one, pass --format onnx "
        "to check and load it as one"
    )
    assert main(["inspect", str(text)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "status:   unknown"
    assert out[-2].startswith(
        f"reason:   unknown-format: {text}: not a format deploycheck recognises: 19 bytes of text "
        "(first line 'not a model'), starting 6e 6f 74"
    )
    assert "pass --format torchscript" in out[-1]
    assert main(["inspect", str(link)]) == 1
    out = capsys.readouterr().out
    assert f"link:     -> {text}\n" in out
    assert "status:   unknown\n" in out and "status:   ok" not in out
    # a format nobody knows, from --format (or a manifest), checks nothing either
    assert main(["inspect", str(noise), "--format", "tflite"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "status:   unknown",
        f"reason:   unknown-format: {noise}: declared as 'tflite', which is not a format deploycheck knows "
        "(aoti, export, hdf5, onnx, pickle, safetensors, torchscript); it holds "
        "4096 bytes of binary data with no header deploycheck knows, starting 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 "
        "13 14 15 16; nothing was checked",
    ]
    # declared as ONNX, the bytes are checked and loaded: broken, not unknown
    assert main(["inspect", str(noise), "--format", "onnx"]) == 1
    assert "status:   BROKEN" in capsys.readouterr().out


def _report(rows):
    return {
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "abc"},
        "libraries": {},
        "machine": {},
        "rows": rows,
        "records": [],
    }


def _row(variant, fmt, verdict="pass", metric=0.95, p50=1.0, size=1.0, reason=""):
    return {
        "spec": "s",
        "variant": variant,
        "format": fmt,
        "verdict": verdict,
        "metric": metric,
        "metric_name": "accuracy",
        "p50_ms": p50,
        "size_mb": size,
        "reason": reason,
    }


def test_compare_lists_regressions_first_and_exits_1(tmp_path, capsys):
    old = _report([_row("baseline", "export"), _row("int8", "export"), _row("pruned", "onnx")])
    new = _report(
        [
            _row("baseline", "export"),
            _row("int8", "export", verdict="FAIL", metric=0.90, p50=2.0, reason="metric: accuracy 0.9 < ..."),
            _row("student", "onnx"),
        ]
    )
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    lines = capsys.readouterr().out.splitlines()
    body = [ln for ln in lines[3:] if ln.strip()]
    assert body[0].startswith("REGRESSION  s       int8       export    pass -> FAIL")
    assert "accuracy 0.95 -> 0.9 (-0.05, beyond ±0.005)" in body[0] and "p50 1 -> 2 ms (×2.00, beyond ×1.25)" in body[0]
    assert body[1].startswith("REGRESSION  s       pruned     onnx      pass -> -")
    assert lines[-1] == "2 regressions"
    (tmp_path / "same.json").write_text(json.dumps(old))
    assert main(["compare", str(tmp_path / "old.json"), str(tmp_path / "same.json")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 regressions"


def test_compare_rejects_a_file_that_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as ei:
        main(["compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")])
    assert str(ei.value) == f"deploycheck: {tmp_path / 'x.json'} is not a deploycheck JSON report (schema_version 1)"


def test_merge_joins_shards_and_renders_them(tmp_path, capsys):
    def rec(spec, status):
        return {
            "spec": spec,
            "variant": "baseline",
            "format": "export",
            "check": "size",
            "status": status,
            "file": f"{spec}.yaml",
            "recipe": "baseline",
            "details": {"size_mb": 1.0},
        }

    a = {**_report([]), "records": [rec("a", "passed")], "spec_files": {"a.yaml": "1"}}
    b = {**_report([]), "records": [rec("b", "failed")], "spec_files": {"b.yaml": "2"}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "ALL.json"
    assert main(["merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out), "--fail-on-failure"]) == 1
    merged = json.loads(out.read_text())
    assert [(r["spec"], r["verdict"]) for r in merged["rows"]] == [("a", "pass"), ("b", "FAIL")]
    assert set(merged["spec_files"]) == {"a.yaml", "b.yaml"} and len(merged["shards"]) == 2
    assert (
        (tmp_path / "ALL.md")
        .read_text()
        .startswith(
            "# deploycheck report\n\nComplete: the sessions of all 2 shards finished.\n\n1 passed, 1 failed, 0 unsupported"
        )
    )
    assert (tmp_path / "ALL.html").exists()


def test_example_ci_workflow_is_valid_yaml_using_real_commands():
    import yaml

    wf = yaml.safe_load(open(os.path.join(ROOT, "examples", "ci", "deploycheck.yml")))
    steps = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
    assert any("deploycheck merge shards/shard-*.json -o reports/ALL.json --fail-on-failure" in s for s in steps)
    assert any(s.startswith("pytest ${{ matrix.spec }}") for s in steps)


def test_validate_every_shipped_spec_together_in_a_fresh_process():
    """A newcomer's second command, as the Quick start leaves them: a fresh process (torch not yet
    imported) validating every spec under specs/ and examples/ at once."""
    rels = ("bring_your_own/gate.yaml", "tokens/tokens.yaml", "llm/smollm2.yaml")
    examples = [os.path.join(ROOT, "examples", rel) for rel in rels]
    p = cli("validate", os.path.join(ROOT, "specs"), *examples, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == "7 valid, 0 invalid"


def test_validate_says_when_a_valid_spec_cannot_run_on_this_installation(tmp_path, capsys):
    """A model in a package this installation lacks is not a wrong spec: validate passes it and
    says why pytest will skip it (as collection does)."""
    spec = tmp_path / "lm.yaml"
    text = make_spec().replace("  factory: tinymodels:Tiny\n", "  hf: {path: 'package:no_such_pkg_xyz/model'}\n")
    assert "no_such_pkg_xyz" in text
    spec.write_text(text)
    assert main(["validate", str(spec)]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .endswith(
            "; cannot run on this installation: model.hf.path names package 'no_such_pkg_xyz', which is not installed"
        )
    )


def test_validate_leaves_torch_alone_when_the_venv_sits_under_the_python_path(tmp_path):
    """The shipped specs' python_path reaches the project root, and the Quick start puts .venv
    there: validation forgot torch's extension modules with the user's own and the second spec's
    import of torch crashed the process (exit 139). Here python_path names the folder that holds
    this interpreter's prefix, so torch lives under it wherever the venv is."""
    import sys

    above_venv = os.path.dirname(os.path.realpath(sys.prefix))
    for name in ("first", "second"):
        (tmp_path / f"{name}_models.py").write_text(
            "import torch\nimport torch.nn.functional as F\n\n\nclass Net(torch.nn.Module):\n"
            "    def forward(self, x):\n        return F.relu(x)\n"
        )
        (tmp_path / f"{name}.yaml").write_text(
            make_spec(factory="Net")
            .replace(
                "  factory: tinymodels:Net\n",
                f'  factory: {name}_models:Net\n  python_path: [".", "{above_venv}"]\n',
            )
            .replace("name: tiny", f"name: {name}")
        )
    p = cli("validate", str(tmp_path / "first.yaml"), str(tmp_path / "second.yaml"), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines() == [
        f"{tmp_path}/first.yaml: ok (first: 1 variant, formats torchscript)",
        f"{tmp_path}/second.yaml: ok (second: 1 variant, formats torchscript)",
        "2 valid, 0 invalid",
    ]


def test_name_resolution_forgets_only_the_users_own_source_modules(tmp_path):
    """Known answers: a module under the spec's python_path is forgotten; one under an installed
    folder (a venv inside the project), an extension module and deploycheck itself are kept."""
    from deploycheck.resolve import is_users_own

    root = f"{tmp_path}/"
    venv = f"{tmp_path}/.venv/"
    kw = {"roots": [root], "installed": [venv]}
    assert is_users_own("models", f"{tmp_path}/models.py", **kw)
    assert not is_users_own("torch", f"{tmp_path}/.venv/lib/python3.11/site-packages/torch/__init__.py", **kw)
    assert not is_users_own("ext", f"{tmp_path}/ext.cpython-311-x86_64-linux-gnu.so", **kw)
    assert not is_users_own("deploycheck.cli", f"{tmp_path}/deploycheck/cli.py", **kw)
    assert not is_users_own("json", "/usr/lib/python3.11/json/__init__.py", **kw)
    assert not is_users_own("ns", None, **kw)


def test_init_with_no_metric_in_a_fresh_process():
    """The issue's command from the project root, writing next to the project (so the default
    python_path '..' reaches the project root and, in CI and for newcomers, the venv inside it):
    it ended in 'ImportError: cannot load module more than once per process'."""
    import uuid

    folder = os.path.join(ROOT, "build")  # git-ignored
    out = os.path.join(folder, f"init-{uuid.uuid4().hex[:8]}.yaml")
    os.makedirs(folder, exist_ok=True)
    try:
        p = cli("init", "--factory", "examples.digits:MLP", "--shape", "1,64", "-o", out, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert p.stdout == f"wrote {out}; run: pytest {out}\n"
        assert "  factory: examples.digits:MLP\n" in open(out).read()
    finally:
        if os.path.exists(out):
            os.remove(out)


def test_example_nightly_workflow_runs_the_nightly_tier_with_a_cache_that_holds_the_llm():
    import yaml

    from deploycheck.cache import parse_size

    wf = yaml.safe_load(open(os.path.join(ROOT, "examples", "ci", "nightly-llm.yml")))
    assert "schedule" in wf[True]  # YAML 1.1 reads the key `on` as True
    runs = " ".join(s.get("run", "") for job in wf["jobs"].values() for s in job["steps"])
    assert "pytest examples/llm/smollm2.yaml" in runs and "--deploycheck-cadence nightly" in runs
    size = runs.split("--deploycheck-cache-size=")[1].split()[0]
    assert parse_size(size) >= 10 * 1000**3, size  # the 135M model's cold run writes more than the default 2 GB
