"""Bring your own: files made elsewhere, a variant's own model, and recipe plug-ins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import TINY_MODELS, make_spec, tinymodels_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def made_elsewhere(tmp_path_factory):
    """A TorchScript and an ONNX file of the tiny model, made once with plain torch (as elsewhere);
    each test gets its own copy (``make_files``)."""
    import contextlib
    import io
    import types

    import torch

    folder = tmp_path_factory.mktemp("made-elsewhere")
    (folder / "tinymodels.py").write_text(TINY_MODELS)
    model = tinymodels_of(types.SimpleNamespace(path=folder)).Tiny().eval()
    dist = folder / "dist"
    dist.mkdir()
    x = torch.rand(2, 4)
    torch.jit.trace(model, x).save(str(dist / "tiny.ts"))
    with contextlib.redirect_stdout(io.StringIO()):
        prog = torch.onnx.export(
            model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False
        )
    prog.save(str(dist / "tiny.onnx"))
    return dist


def make_files(project, made) -> None:
    """The files made elsewhere, shipped into this test's project as ``dist/``."""
    import shutil

    shutil.copytree(made, project.path / "dist", dirs_exist_ok=True)


ARTIFACTS = """  baseline: {}
  ts-file:
    artifact: {path: dist/tiny.ts}
  onnx-file:
    artifact: {path: dist/tiny.onnx, format: onnx}"""


def rows(project) -> dict:
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    return {(r["variant"], r["format"]): r for r in doc["rows"]}


def test_files_made_elsewhere_get_every_check_against_the_baseline(project, made_elsewhere):
    make_files(project, made_elsewhere)
    project.write(
        make_spec(
            variants=ARTIFACTS,
            formats="[torchscript, onnx]",
            thresholds="  metric: {max_drop: 0.0}\n  latency: {max_ratio: 3.0}\n  size: {max_ratio: 2.0}",
        )
    )
    res = project.run()
    res.assert_outcomes(passed=16, skipped=4)  # baseline 2 formats x 5 checks, each file's 5; 4 latency/size not gated
    r = rows(project)
    assert set(r) == {
        ("baseline", "torchscript"),
        ("baseline", "onnx"),
        ("ts-file", "torchscript"),
        ("onnx-file", "onnx"),
    }
    assert r[("ts-file", "torchscript")]["recipe"] == "artifact:dist/tiny.ts"  # format sniffed from the bytes
    assert r[("onnx-file", "onnx")]["latency_ratio"] is not None and r[("onnx-file", "onnx")]["size_ratio"] is not None
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    out = next(x for x in doc["records"] if x["variant"] == "ts-file" and x["check"] == "outputs")
    assert out["details"]["max_abs"] < 1e-5  # the very same model: the file matches the baseline


def test_a_truncated_or_changed_file_fails_load_with_its_class(project, made_elsewhere):
    make_files(project, made_elsewhere)
    dist = project.path / "dist"
    data = (dist / "tiny.ts").read_bytes()
    (dist / "cut.ts").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (dist / "flipped.ts").write_bytes(bytes(flipped))
    import hashlib

    good = hashlib.sha256(data).hexdigest()
    variants = (
        f"  baseline: {{}}\n  cut:\n    artifact: {{path: dist/cut.ts, format: torchscript}}\n"
        f"  flipped:\n    artifact: {{path: dist/flipped.ts, format: torchscript, sha256: {good}}}\n"
        f"  mislabelled:\n    artifact: {{path: dist/tiny.onnx, format: torchscript}}\n"
        f"  gone:\n    artifact: {{path: dist/nothing.onnx}}"
    )
    project.write(make_spec(variants=variants))
    res = project.run("-k", "load")
    res.assert_outcomes(passed=1, failed=4)
    res.stdout.fnmatch_lines(
        [
            "[[]load[]] tiny::cut::torchscript (declared at tiny.yaml:13): truncated: the zip archive has no readable directory*",
            "[[]load[]] tiny::flipped::torchscript (declared at tiny.yaml:15): corrupted: checksum mismatch (* bytes, different content)*",
            "[[]load[]] tiny::mislabelled::torchscript (declared at tiny.yaml:17): wrong-format: the file is an ONNX file, but it is "
            "declared as a TorchScript file*",
            "[[]load[]] tiny::gone::onnx (declared at tiny.yaml:19): missing: the file does not exist: was it shipped?*",
        ]
    )


def test_artifact_variants_reject_formats_and_recipes(project):
    from deploycheck.errors import SpecError
    from deploycheck.spec import parse

    text = make_spec(
        variants="  f:\n    artifact: {path: x.onnx}\n    formats: [onnx]\n    quantize: {method: fp16}\n"
        "  g:\n    artifact: {path: model.bin}"
    )
    with pytest.raises(SpecError) as ei:
        parse(text, filename=str(project.path / "s.yaml"))
    assert str(ei.value).splitlines() == [
        f"{project.path / 's.yaml'}:13: variants.f.formats: an artifact variant is gated as the one file it is; 'formats' "
        "does not apply (its format is artifact.format, or sniffed)",
        f"{project.path / 's.yaml'}:14: variants.f.quantize: an artifact variant is not built: recipes do not apply "
        "(make a variant with model: and the recipe instead)",
    ]
    with pytest.raises(SpecError) as ei:
        parse(make_spec(variants="  g:\n    artifact: {path: model.bin}"), filename=str(project.path / "s.yaml"))
    assert "variants.g.artifact.format: cannot tell the format of 'model.bin' from its bytes or its name" in str(
        ei.value
    )


def test_a_variant_with_its_own_checkpoint_is_built_serialized_and_quantized(project):
    import numpy as np
    import torch

    other = tinymodels_of(project).Tiny()
    with torch.no_grad():
        other.out.weight.mul_(-1.0)  # "trained elsewhere": different weights, same architecture
    torch.save(other.state_dict(), project.path / "other.pt")
    np.savez(project.path / "unlabelled.npz", x=np.random.default_rng(0).normal(size=(40, 4)).astype("float32"))
    variants = (
        "  baseline: {}\n  qat:\n    model: {weights: other.pt}\n"
        "  qat-int8:\n    model: {weights: other.pt}\n    quantize: {method: dynamic_int8}\n"
        "  student:\n    model: {factory: 'tinymodels:Student'}"
    )
    project.write(
        make_spec(
            variants=variants, thresholds="  metric: {max_drop: 2.0}\n  outputs: {atol: 0.05}", extra="metric: cosine"
        ).replace("source: sklearn:iris", "source: npz:unlabelled.npz")
    )
    res = project.run("-k", "not latency")
    # 4 checks x 4 variants (size not gated), and batch invariance and quantized of the int8 one
    res.assert_outcomes(passed=14, skipped=4)
    r = rows(project)
    assert r[("qat-int8", "torchscript")]["recipe"] == "model:factory -> quantize:dynamic_int8"
    assert r[("student", "torchscript")]["recipe"] == "model:Student"
    assert r[("baseline", "torchscript")]["metric"] == pytest.approx(1.0)
    assert r[("qat", "torchscript")]["metric"] < 0.9  # cosine to the baseline: its own weights, not the baseline's
    assert r[("student", "torchscript")]["params"] == 15


def test_a_recipe_plugin_from_an_installed_package(project, tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            os.path.join(ROOT, "tests", "plugins", "deploycheck-plugin-example"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    project.write(
        make_spec(
            variants="  baseline: {}\n  scaled:\n    scale_outputs: {factor: 2.0}",
            thresholds="  metric: {max_drop: 0.0}",
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deploycheck-no-report",
            f"--deploycheck-cache-dir={tmp_path / 'cache'}",
            f"--deploycheck-run-dir={tmp_path / 'run'}",
        ],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "6 passed, 4 skipped" in out.stdout, out.stdout[-3000:]  # latency and size: not gated
    project.write(make_spec(variants="  baseline: {}\n  scaled:\n    scale_outputs: {factor: -1}"))
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co"],
        cwd=project.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "tiny.yaml:13: variants.scaled.scale_outputs.factor: must be > 0, got -1" in out.stdout, out.stdout[-3000:]
    schema = subprocess.run(
        [sys.executable, "-m", "deploycheck.cli", "schema"], env=env, capture_output=True, text=True, timeout=300
    )
    assert '"scale_outputs"' in schema.stdout and "the multiplier, > 0" in schema.stdout


def test_inspect_reports_a_name_that_promises_another_format(project, made_elsewhere, capsys):
    from deploycheck.cli import main

    make_files(project, made_elsewhere)
    wrong = project.path / "dist" / "model.pt2"
    wrong.write_bytes((project.path / "dist" / "tiny.onnx").read_bytes())
    assert main(["inspect", str(wrong), "--no-load"]) == 1
    out = capsys.readouterr().out
    assert (
        "reason:   wrong-format: " + str(wrong) + ": the file is an ONNX file, but its name (model.pt2) says a "
        "torch.export .pt2 or an AOTInductor package file: rename it, or pass --format onnx"
    ) in out
    assert main(["inspect", str(wrong), "--no-load", "--format", "onnx"]) == 0
    assert "note:     the file is an ONNX file, but its name (model.pt2) says" in capsys.readouterr().out


def test_the_bring_your_own_example_runs(tmp_path):
    import shutil

    ex = tmp_path / "examples" / "bring_your_own"
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    shutil.copytree(os.path.join(ROOT, "specs", "models"), tmp_path / "specs" / "models")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    shutil.rmtree(ex / "dist", ignore_errors=True)
    made = subprocess.run([sys.executable, str(ex / "make_artifacts.py")], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "examples/bring_your_own/gate.yaml",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deploycheck-cache=off",
            "--deploycheck-no-report",  # what is asserted is the outcome; reports are tested elsewhere
            f"--deploycheck-run-dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    # the baselines' latency and size are the references of the ratios, and onnx-file sets no latency gate
    assert "15 passed, 5 skipped" in res.stdout


def test_a_state_dict_file_made_elsewhere_loads_into_the_specs_architecture(project):
    from safetensors.torch import save_file

    model = tinymodels_of(project).Tiny()
    (project.path / "dist").mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(project.path / "dist" / "weights.safetensors")
    )
    project.write(
        make_spec(
            variants="  baseline: {}\n  release:\n    artifact: {path: dist/weights.safetensors}",
            formats="[safetensors]",
        )
    )
    res = project.run("-k", "release and not latency")
    res.assert_outcomes(passed=4)
    assert rows(project)[("release", "safetensors")]["max_abs_diff"] == 0.0


def test_a_release_candidate_against_the_last_release_with_no_model_code(project, made_elsewhere):
    make_files(project, made_elsewhere)
    # the last release's TorchScript file is the baseline; the candidate is an ONNX file; no factory at all
    spec = make_spec(
        variants="  baseline:\n    artifact: {path: dist/tiny.ts}\n  candidate:\n    artifact: {path: dist/tiny.onnx}",
        thresholds="  metric: {max_drop: 0.0}\n  outputs: {atol: 1.0e-4}",
    ).replace("  factory: tinymodels:Tiny\n", "")
    project.write(spec)
    res = project.run("-k", "not latency")
    res.assert_outcomes(passed=6, skipped=2)  # size: not gated
    r = rows(project)
    assert r[("candidate", "onnx")]["recipe"] == "artifact:dist/tiny.onnx"
    assert r[("candidate", "onnx")]["max_abs_diff"] < 1e-5  # vs the baseline file's outputs
    spec = spec.replace(
        "  candidate:\n    artifact: {path: dist/tiny.onnx}", "  candidate:\n    quantize: {method: fp16}"
    )
    project.write(spec)
    res = project.run("--co")
    res.stdout.fnmatch_lines(
        [
            "*tiny.yaml:12: variants.candidate: needs a model to build from: model.factory (the "
            "baseline is an artifact and the spec has no factory)*"
        ]
    )
