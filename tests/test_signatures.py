"""Model signatures: every output checked by name, the baseline run as declared before any format.

pytester runs with real artifacts; each test asserts what a user sees (exit code, the item's
outcome, the message naming the output or the input)."""

from __future__ import annotations

import json

import pytest

SIG_MODELS = '''
import torch
from torch import nn


class Pair(nn.Module):
    """(logits, emb): emb takes a Python branch on the batch size, which torch.jit.trace freezes
    at the example's batch of 1, so a reloaded TorchScript file doubles no emb while the model does."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        emb = h if x.shape[0] == 1 else h * 2.0
        return self.out(h), emb


class Heads(nn.Module):
    """A dict of outputs; with ``tamper`` the emb head adds 1 while it is traced or exported."""

    def __init__(self, tamper: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 16)
        self.out = nn.Linear(16, 3)
        self.tamper = tamper

    def forward(self, x):
        h = torch.relu(self.fc(x))
        emb = h * 1.0
        if self.tamper and (torch.jit.is_tracing() or torch.compiler.is_exporting()):
            emb = emb + 1.0
        return {"logits": self.out(h), "emb": emb}


class Tokens(nn.Module):
    """Token ids (int64) and an attention mask (bool) -> {logits, pooled}: a masked mean of embeddings."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        pooled = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {"logits": self.out(pooled), "pooled": pooled}


class SeqFixed(Tokens):
    """Divides by the sequence length as a Python float: a TorchScript trace bakes in the traced length."""

    def forward(self, input_ids, attention_mask):
        pooled = self.emb(input_ids).sum(1) / float(input_ids.shape[1])
        return {"logits": self.out(pooled), "pooled": pooled}


def token_data(as_tuple=False, length=16):
    """120 sequences of ``length`` token ids with a mask that hides a tail; labels from the first token."""
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(120, length))
    lens = rng.integers(length // 2, length + 1, size=120)
    mask = (np.arange(length)[None, :] < lens[:, None]).astype(np.int64)
    y = ids[:, 0] % 3
    x = (ids, mask) if as_tuple else {"input_ids": ids, "attention_mask": mask}
    return x, y


def token_tuple():
    return token_data(as_tuple=True)


class Mixed(nn.Module):
    """Named inputs of five dtypes (token ids int64, a mask bool, positions int32, features float16,
    a scale bfloat16) -> nested outputs (logits, {pooled, norm})."""

    def __init__(self, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, dim)
        self.pos = nn.Embedding(32, dim)
        self.feat = nn.Linear(4, dim)
        self.out = nn.Linear(dim, 3)

    def forward(self, input_ids, attention_mask, positions, feats, scale):
        m = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        h = self.emb(input_ids) + self.pos(positions.long())
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0) + self.feat(feats.to(self.feat.weight.dtype))
        pooled = pooled * scale.to(pooled.dtype)
        return self.out(pooled), {"pooled": pooled, "norm": pooled.norm(dim=1, keepdim=True)}


def mixed_data():
    """token_data plus positions (0 .. length-1), four features and a scale; labels from the first token."""
    import numpy as np
    x, y = token_data()
    n, length = x["input_ids"].shape
    x["positions"] = np.tile(np.arange(length), (n, 1))
    x["feats"] = np.random.default_rng(1).normal(size=(n, 4))
    x["scale"] = np.random.default_rng(2).uniform(0.5, 1.5, size=(n, 1))
    return x, y


class Conv(nn.Module):
    """Needs (N, 1, 8, 8) images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
'''

SPEC = """\
deploycheck: 1
name: {name}
model:
  factory: sigmodels:{factory}
  kwargs: {kwargs}
  inputs: {{shape: {shape}}}
data:
  source: {data}
  split: {{test_fraction: 0.25, seed: 0}}
{metric}
formats: {formats}
variants:
  baseline: {{}}
thresholds:
  metric: {{max_drop: 0.01}}
{thresholds}
latency: {{warmup: 1, min_rounds: 5, max_time_s: 0.3, round_ms: 0.2}}
snapshot: {{enabled: {snapshot}}}
"""


def spec(
    *,
    name: str = "sig",
    factory: str = "Pair",
    kwargs: str = "{}",
    shape: str = "[1, 4]",
    data: str = "sklearn:iris",
    formats: str = "[torchscript]",
    metric: str = "",
    thresholds: str = "",
    snapshot: str = "false",
) -> str:
    return SPEC.format(
        name=name,
        factory=factory,
        kwargs=kwargs,
        shape=shape,
        data=data,
        formats=formats,
        metric=metric,
        thresholds=thresholds,
        snapshot=snapshot,
    )


@pytest.fixture
def sig(project):
    project.tester.makepyfile(sigmodels=SIG_MODELS)
    return project


def outcomes(result) -> dict[str, str]:
    """``{item id tail: PASSED | FAILED | SKIPPED | ERROR}`` from a -rA verbose run."""
    out = {}
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if f" {word}" in line and "::" in line and not line.startswith(word):
                out[line.split(" ")[0].split("::", 1)[1]] = word
    return out


def test_second_output_frozen_by_trace_fails_naming_it(sig):
    """The false pass of issue 21: logits match, emb differs; outputs fails on output '1'."""
    sig.write(spec())
    r = sig.run("-v", "-rA")
    got = outcomes(r)
    assert got["sig::baseline::torchscript::outputs"] == "FAILED", got
    assert got["sig::baseline::torchscript::metric"] == "PASSED", got  # the metric reads the logits
    report = json.loads((sig.path / "reports" / "deploycheck.json").read_text())
    assert "metric on output '0' of '0', '1'" in json.dumps(report)
    r.stdout.fnmatch_lines(["*output '1' of the reloaded torchscript artifact differs from the in-memory variant*"])
    assert r.ret == 1


def test_per_output_tolerances(signatures):
    """thresholds.outputs per output: a wide tolerance on '1' lets it pass; a name the model does not
    return is a failure naming it, never ignored. (Both specs run in the signature session below.)"""
    _, out, got = signatures
    assert got["wide::baseline::torchscript::outputs"] == "PASSED", got
    assert got["typo::baseline::torchscript::outputs"] == "FAILED", got
    assert "thresholds.outputs gives tolerances for 'emd', not an output of the model; its outputs are '0', '1'" in out


def test_metric_output_names_the_output_it_reads(sig):
    """metric.output picks the output; a name the model does not return is an error naming its outputs."""
    sig.write(spec(metric="metric: {name: mse, output: nope}", data="sklearn:iris"))
    r = sig.run("-v", "-rA")
    r.stdout.fnmatch_lines(["*metric.output 'nope' is not an output of the model; its outputs are '0', '1'*"])
    assert r.ret == 1


def test_dict_outputs_checked_on_every_key(signatures):
    """A dict of outputs through torchscript, export and onnx, each key compared: an artifact that
    changed only 'emb' fails naming it while the metric (on logits) passes. (The spec runs in the
    signature session below, where the faithful case, a tuple holding a dict, passes.)"""
    _, out, got = signatures
    for fmt in ("torchscript", "export", "onnx"):
        assert got[f"tampered::baseline::{fmt}::load"] == "PASSED", got
        assert got[f"tampered::baseline::{fmt}::metric"] == "PASSED", got
        assert got[f"tampered::baseline::{fmt}::outputs"] == "FAILED", got
        assert f"output 'emb' of the reloaded {fmt} artifact differs from the in-memory variant" in out


def test_baseline_that_cannot_take_the_declared_input_fails_every_item(sig):
    """A CNN declared with shape [1, 64] (it needs [1, 1, 8, 8]): no item passes or is skipped as
    a format limit; each fails with the one message naming model.inputs and data, with both shapes."""
    sig.write(spec(factory="Conv", shape="[1, 64]", data="sklearn:digits", formats="[torchscript, export]"))
    r = sig.run("-v", "-rA")
    got = outcomes(r)
    assert got and set(got.values()) == {"FAILED"}, got
    res = r.parseoutcomes()
    assert res.get("skipped", 0) == 0 and res["failed"] == len(got)
    r.stdout.fnmatch_lines(
        [
            "*the baseline model cannot run on the declared example input (shape (1, 64) float32): RuntimeError: *conv2d*",
            "*model.inputs declares shape [[]1, 64[]] float32; the data (sklearn:digits) gives evaluation batches of "
            "shape (64, 64) float32*",
            "*fix model.inputs to the shape and dtype the model takes, or the data (data.preprocess: reshape, scale, dtype)*",
        ]
    )
    assert r.ret == 1


TOKENS = """\
deploycheck: 1
name: {name}
model:
  factory: sigmodels:{factory}
  inputs:
    input_ids: {{shape: [2, 16], dtype: int64, dynamic: {{1: {{name: seq, min: 4, max: 24}}}}}}
    attention_mask: {{shape: [2, 16], dtype: bool, dynamic: {{1: {{name: seq, min: 4, max: 24}}}}}}
data:
  source: python:sigmodels:{data}
formats: {formats}
variants:
  baseline: {{}}
thresholds:
  outputs: {{atol: 1.0e-4, rtol: 1.0e-3}}
latency: {{warmup: 1, min_rounds: 5, max_time_s: 0.3, round_ms: 0.2}}
snapshot: {{enabled: {snapshot}}}
"""


MIXED = """\
deploycheck: 1
name: mixed
model:
  factory: sigmodels:Mixed
  inputs:
    input_ids: {shape: [2, 16], dtype: int64, dynamic: {1: {name: seq, min: 4, max: 24}}}
    attention_mask: {shape: [2, 16], dtype: bool, dynamic: {1: {name: seq, min: 4, max: 24}}}
    positions: {shape: [2, 16], dtype: int32, dynamic: {1: {name: seq, min: 4, max: 24}}}
    feats: {shape: [2, 4], dtype: float16}
    scale: {shape: [2, 1], dtype: bfloat16}
data:
  source: python:sigmodels:mixed_data
metric: {name: accuracy, output: "0"}
formats: [torchscript, export, onnx, aoti, safetensors, hdf5, {pickle: {allow: true, with_code: true}}]
variants:
  baseline: {}
  half:
    quantize: {method: fp16}
    formats: [torchscript, onnx]
  brain:
    quantize: {method: bf16}
    formats: [onnx, hdf5]
  small:
    steps:
      - distill: {student: sigmodels:Mixed, student_kwargs: {dim: 4}, epochs: 1}
      - quantize: {method: static_int8, calibration_batches: 2}
    formats: [export]
thresholds:
  metric: {max_drop: 1.0}
latency: {warmup: 1, min_rounds: 5, max_time_s: 0.3, round_ms: 0.2}
snapshot: {enabled: true}
"""

ALL_FORMATS = ("torchscript", "export", "onnx", "aoti", "safetensors", "hdf5", "pickle")


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    """One inner session for the signature matrix (docs/checks.md, "Every output is checked"):
    - mixed: named inputs of int64, bool, int32, float16 and bfloat16 with a dynamic ``seq``, a tuple holding
      a dict of outputs, through every format; fp16 and bf16 variants; a student distilled and then
      calibrated for static int8 on the named inputs;
    - fixed: data given as a tuple, a model whose TorchScript trace bakes in the length and an
      export that specialises it (``dynamic_seq: false``): both caught by the dynamic item;
    - wide, typo and tampered: the specs of the per-output tolerance and dict-output tests above."""
    pytest.importorskip("onnxscript")
    from conftest import run_once

    root, proc = run_once(
        tmp_path_factory,
        MIXED,
        "-v",
        "-rA",
        "--snapshot-update",
        name="mixed",
        files={
            "sigmodels.py": SIG_MODELS,
            "fixed.yaml": TOKENS.format(
                name="fixed",
                factory="SeqFixed",
                data="token_tuple",
                formats="[torchscript, {export: {dynamic_seq: false}}]",
                snapshot="false",
            ),
            # specs of the tests above that read their items from this session
            "wide.yaml": spec(name="wide", thresholds="  outputs: {atol: 1.0e-4, 1: {atol: 100}}"),
            "typo.yaml": spec(name="typo", thresholds="  outputs: {atol: 1.0e-4, emd: {atol: 100}}"),
            "tampered.yaml": spec(
                name="tampered", factory="Heads", kwargs="{tamper: true}", formats="[torchscript, export, onnx]"
            ),
        },
    )
    out = proc.stdout + proc.stderr

    class R:
        outlines = out.splitlines()

    return root, out, outcomes(R)


def test_named_inputs_of_every_dtype_and_nested_outputs_through_every_format(signatures):
    """int64 ids, a bool mask, int32 positions, float16 features and a bfloat16 scale by name (ONNX
    gets the bfloat16 one as an OrtValue: numpy has no bfloat16), with a dynamic seq,
    returning a tuple holding a dict: every format loads it, matches it on every output and runs it
    at seq 4, 14 and 24; every output is snapshotted by its path."""
    root, out, got = signatures
    for fmt in ALL_FORMATS:
        for check in ("load", "outputs", "dynamic", "metric"):
            assert got.get(f"mixed::baseline::{fmt}::{check}") == "PASSED", (fmt, check, out[-3000:])
    doc = json.loads((root / "__snapshots__" / "mixed" / "mixed.baseline.aoti.snapshot.json").read_text())
    assert doc["shape"] == {"0": [3], "1.pooled": [8], "1.norm": [1]}
    entry = next(iter(doc["entries"].values()))
    assert list(entry["outputs"]) == ["0", "1.pooled", "1.norm"]


def test_reduced_precision_variants_carry_named_inputs_or_say_why_not(signatures):
    """fp16 and bf16 wrap the model in ``Cast`` (forward(*args, **kwargs)); with named inputs each
    traced format exports it by the inputs' names. Where a format cannot hold bf16 it says why:
    HDF5 at save (skipped as unsupported), onnxruntime at load (a failure, never a pass)."""
    _, out, got = signatures
    for fmt in ("torchscript", "onnx"):
        for check in ("load", "outputs", "dynamic"):
            assert got.get(f"mixed::half::{fmt}::{check}") == "PASSED", (fmt, check, out[-3000:])
    assert got.get("mixed::brain::onnx::load") == "FAILED"
    assert got.get("mixed::brain::hdf5::load") == "SKIPPED"
    assert "no kernel for bfloat16 on onnxruntime's CPU provider (the graph computes in bfloat16)" in out
    assert "HDF5 (numpy) has no bfloat16 type" in out


def test_recipes_that_feed_data_take_named_inputs(signatures):
    """Distillation trains and static int8 calibrates on dict batches (one chain); the result
    exports with the named inputs and a dynamic seq, and passes its checks."""
    root, out, got = signatures
    for check in ("load", "outputs", "dynamic"):
        assert got.get(f"mixed::small::export::{check}") == "PASSED", (check, out[-3000:])
    report = json.dumps(json.loads((root / "reports" / "deploycheck.json").read_text()))
    assert "static int8 (pt2e, x86 quantizer, 8-bit activations, 8-bit weights), calibrated on " in report
    assert "student sigmodels:Mixed with " in report


def test_a_specialised_sequence_length_is_caught_in_trace_and_export(signatures):
    """Data given as a tuple (matched to the named inputs by position). The TorchScript trace bakes
    in the length; the export is told to specialise it: right at the traced length, caught by the
    dynamic item at the others, naming the dimension and both sizes."""
    _, out, got = signatures
    for fmt in ("torchscript", "export"):
        assert got.get(f"fixed::baseline::{fmt}::outputs") == "PASSED", (fmt, out[-3000:])
        assert got.get(f"fixed::baseline::{fmt}::dynamic") == "FAILED", (fmt, out[-3000:])
    assert (
        "seq traced at 16; at 4 (input_ids[1], attention_mask[1]) the reloaded torchscript artifact differs on "
        "output 'logits': "
    ) in out
    assert "seq traced at 16; at 4 (input_ids[1], attention_mask[1]) the reloaded export artifact " in out


def test_declared_dtype_mismatch_names_the_input(sig):
    """Fractional values given to an int64 input: an error naming the input, found and declared dtype."""
    sig.tester.makepyfile(
        fracdata="""
import numpy as np


def data():
    x, y = __import__("sigmodels").token_data()
    x["input_ids"] = x["input_ids"] + 0.5
    return x, y
"""
    )
    sig.write(
        TOKENS.format(
            name="frac", factory="Tokens", data="token_data", formats="[torchscript]", snapshot="false"
        ).replace("python:sigmodels:token_data", "python:fracdata:data"),
        "frac",
    )
    r = sig.run("-v", "-rA")
    r.stdout.fnmatch_lines(
        [
            "*input 'input_ids': the data gives float64 values that are not whole numbers (e.g. "
            "*) but model.inputs declares int64*"
        ]
    )
    assert r.ret == 1


def test_init_matches_the_data_to_the_declared_shape_and_takes_dtypes_and_names(tmp_path):
    """init reads the data: digits (N, 64) in [0, 16] for --shape 1,1,8,8 gets scale and reshape;
    named inputs and --dtype are written as given; every spec it writes validates."""
    import subprocess
    import sys

    from deploycheck.cli import main

    (tmp_path / "mynet.py").write_text("import torch\n\n\ndef Net():\n    return torch.nn.Identity()\n")

    def init(*args):
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml"
        p = subprocess.run(
            [sys.executable, "-m", "deploycheck.cli", "init", "--factory", "mynet:Net", *args, "-o", str(out)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        assert main(["validate", str(out)]) == 0
        return out.read_text(), p.stderr

    text, _ = init("--shape", "1,1,8,8")
    assert "  preprocess:\n    - scale: 0.0625  # data in [0, 16] -> [0, 1]\n    - reshape: [1, 8, 8]  #" in text
    text, _ = init(
        "--shape",
        "input_ids=1,16",
        "--shape",
        "attention_mask=1,16",
        "--dtype",
        "input_ids=int64",
        "--dtype",
        "attention_mask=bool",
    )
    assert (
        "  inputs:\n    input_ids: {shape: [1, 16], dtype: int64}\n    attention_mask: {shape: [1, 16], dtype: bool}\n"
    ) in text
    text, err = init("--shape", "1,3,32,32", "--dtype", "float16")
    assert "inputs: {shape: [1, 3, 32, 32], dtype: float16}" in text and "reshape" not in text
    assert "note: the data gives samples of shape (64,) but --shape declares (3, 32, 32) per sample" in err
