"""Hugging Face sources, text inputs and declarative preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_spec

from deploycheck.data.dataset import preprocess
from deploycheck.errors import SpecError
from deploycheck.spec import parse

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "market",
    "fell",
    "stock",
    "rain",
    "snow",
    "cold",
    "warm",
    "sun",
    "a",
    "is",
    "was",
    "big",
    "small",
    ".",
]


@pytest.fixture
def tiny_bert(pytester):
    """A 2-layer BERT with a 26-word vocabulary, saved like a Hugging Face model folder."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install 'deploycheck[hf]'")
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = pytester.path / "tinybert"
    d.mkdir()
    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(str(d))
    (pytester.path / "texts.txt").write_text(
        "\n".join(
            [
                "the cat sat on the mat .",
                "the dog ran on the mat .",
                "the stock market fell .",
                "rain is cold .",
                "the sun is warm .",
                "snow was cold .",
                "a big cat sat .",
                "a small dog ran .",
                "the market was big .",
                "the sun sat on the snow .",
            ]
        )
        + "\n"
    )
    (pytester.path / "triplets.tsv").write_text("the cat sat .\ta cat sat on the mat .\tthe stock market fell .\n")
    return d


HF_SPEC = """\
deploycheck: 1
name: tinybert
model:
  hf: {path: tinybert, pooling: mean}
  inputs: {shape: [1, 2, 16], dtype: int64}
data:
  source: text:texts.txt
  split: {test_fraction: 0.5, seed: 0}
  preprocess: [{tokenize: {max_length: 16}}]
metric: cosine
formats: [torchscript, export]
semantic: {triplets: triplets.tsv, min_agreement: 0.0}
variants:
  baseline: {}
  int8: {quantize: {method: dynamic_int8}}
thresholds:
  fidelity: {min_mean_cosine: 0.9}
latency: {warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}
snapshot: {enabled: false}
"""


def test_hf_model_from_a_local_folder_runs_every_check(project, tiny_bert):
    project.write(HF_SPEC, name="tinybert")
    res = project.run("-rs")
    out = res.stdout.str()
    # baseline: 2 formats x 7 checks; int8: torchscript (7) + batch_invariance + quantized, export unsupported (7 skipped);
    # metric, latency and size have no threshold in this spec: not gated (9 skipped)
    res.assert_outcomes(passed=14, skipped=16)
    assert "unsupported: export cannot hold variant 'int8'" in out
    import json

    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    fid = next(
        r
        for r in doc["records"]
        if r["check"] == "fidelity" and r["variant"] == "int8" and r["format"] == "torchscript"
    )
    assert fid["formula"].startswith("mean cosine vs baseline ") and fid["formula"].endswith(">= min_mean_cosine 0.9")
    sem = next(
        r
        for r in doc["records"]
        if r["check"] == "semantic" and r["variant"] == "baseline" and r["format"] == "torchscript"
    )
    assert sem["status"] == "passed", sem
    assert sem["formula"].startswith("1 of 1 triplets keep their order") or sem["formula"].startswith("0 of 1")


def test_fidelity_failure_message(project, tiny_bert):
    project.write(HF_SPEC.replace("min_mean_cosine: 0.9", "min_mean_cosine: 0.9, min_cosine: 1.0"), name="tinybert")
    res = project.run("-k", "int8 and torchscript and fidelity")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*min cosine vs baseline * (1 - cos = *, sample *) < min_cosine 1"])


def test_text_inputs_are_tokenized_to_ids_and_mask(tiny_bert, pytester):
    spec = parse(HF_SPEC, filename=str(pytester.path / "tinybert.yaml"))
    x = preprocess(spec, np.asarray(["the cat sat .", "the dog"], dtype=object))
    assert x.shape == (2, 2, 16) and x.dtype == np.int64
    assert x[0, 0, :6].tolist() == [2, 5, 6, 8, 25, 3]  # [CLS] the cat sat . [SEP]
    assert x[0, 1].tolist() == [1] * 6 + [0] * 10


def test_missing_package_skips_the_spec_with_the_reason(project):
    project.write(HF_SPEC.replace("path: tinybert", "path: package:not_a_model_pkg/model"), name="tinybert")
    res = project.run("-rs")
    res.assert_outcomes(skipped=30)
    res.stdout.fnmatch_lines(
        ["SKIPPED [[]30[]] tinybert.yaml: model.hf.path names package 'not_a_model_pkg', which is not installed"]
    )


def test_without_transformers_the_spec_is_skipped(project, tiny_bert, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a)
    )
    project.write(HF_SPEC, name="tinybert")
    res = project.run("-rs")
    res.stdout.fnmatch_lines(
        ["SKIPPED * needs Hugging Face transformers for model.hf: pip install 'deploycheck[[]hf[]]'"]
    )


def test_text_data_without_tokenize_is_a_clear_build_error(project, tiny_bert):
    project.write(HF_SPEC.replace("  preprocess: [{tokenize: {max_length: 16}}]\n", ""), name="tinybert")
    res = project.run("-k", "baseline and torchscript and load")
    res.stdout.fnmatch_lines(
        [
            "[[]build[]] tinybert (declared at tinybert.yaml:6): the data are texts: add a "
            "preprocessing step such as {tokenize: {max_length: 128}}"
        ]
    )


def test_hf_and_factory_are_exclusive():
    text = HF_SPEC.replace("  hf: {path: tinybert, pooling: mean}", "  hf: {path: tinybert}\n  factory: m:f")
    with pytest.raises(SpecError) as ei:
        parse(text, filename="s.yaml")
    assert "model.factory: give exactly one of 'factory' (a python callable) or 'hf' (a Hugging Face folder)" in str(
        ei.value
    )


@pytest.mark.parametrize(
    "steps,expected",
    [
        ("[{scale: 0.5}, {shift: 1.0}]", [[1.5, 2.0, 2.5, 3.0]]),
        ("[{clip: [2, 3]}]", [[2.0, 2.0, 3.0, 3.0]]),
        ("[{reshape: [2, 2]}, {normalize: {mean: [1.0, 3.0], std: [1.0, 2.0]}}]", [[[0.0, 1.0], [0.0, 0.5]]]),
        ("[{dtype: int64}]", [[1, 2, 3, 4]]),
        ("[{callable: 'prep:double'}]", [[2.0, 4.0, 6.0, 8.0]]),
    ],
)
def test_preprocessing_steps(pytester, steps, expected):
    pytester.makepyfile(prep="def double(x):\n    return x * 2\n")
    spec = parse(
        make_spec().replace("  split:", f"  preprocess: {steps}\n  split:"), filename=str(pytester.path / "s.yaml")
    )
    out = preprocess(spec, np.asarray([[1, 2, 3, 4]]))
    assert out.tolist() == expected


def test_a_test_fraction_of_one_evaluates_every_sample_and_leaves_nothing_to_train_on(tmp_path):
    """A language model's held-out texts all evaluate (split test_fraction 1); a recipe that needs
    training data (calibration, pruning by data, fine-tuning) is told there is none."""
    from deploycheck.data.dataset import load
    from deploycheck.spec import parse_file

    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(make_spec().replace("test_fraction: 0.25", "test_fraction: 1.0"))
    ds = load(parse_file(str(spec_file)))
    assert len(ds.x_test) == 150 and len(ds.x_train) == 0  # all of iris
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:]  # an empty part shaped as the evaluated one
    with pytest.raises(ValueError) as e:
        ds.train_tensors()
    assert str(e.value).startswith("no training data: data.split.test_fraction is 1, so every sample evaluates")
    spec_file.write_text(make_spec().replace("test_fraction: 0.25", "test_fraction: 1.5"))
    with pytest.raises(SpecError) as bad:
        parse_file(str(spec_file))
    assert "data.split.test_fraction: must be <= 1, got 1.5" in str(bad.value)
