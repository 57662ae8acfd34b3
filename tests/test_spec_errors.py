"""A spec error is a collection error naming file:line and the field path, every error at once."""

from __future__ import annotations

import pytest
from conftest import make_spec

from deploycheck.errors import SpecError
from deploycheck.spec import parse


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as ei:
        parse(text, filename="s.yaml")
    return str(ei.value).splitlines()


def test_valid_spec_parses_into_typed_objects():
    spec = parse(make_spec(variants="  baseline: {}\n  q:\n    quantize: {method: dynamic_int8}"), filename="s.yaml")
    assert spec.name == "tiny"
    assert list(spec.variants) == ["baseline", "q"]
    assert spec.variants["q"].steps[0].method == "dynamic_int8"
    assert spec.variants["q"].recipe == "quantize:dynamic_int8"
    assert spec.formats[0].name == "torchscript"
    assert spec.where("model") == "s.yaml:3"


def test_unknown_key_names_line_and_suggests():
    text = make_spec().replace("  split:", "  splitt:")
    assert errors(text) == [
        "s.yaml:8: data.splitt: unknown key; did you mean 'split'? allowed: batch_size, limit, "
        "preprocess, source, split"
    ]


def test_every_error_reported_sorted_by_line():
    text = make_spec(
        variants="  q:\n    quantize: {method: int3}\n  p:\n    prune: {method: l1_unstructured, amount: 1.5}",
        thresholds="  latency: {p95_ms: fast}",
    )
    text = text.replace("inputs: {shape: [1, 4]}", "inputs: {shape: [1, 4], dtype: float33}")
    assert errors(text) == [
        "s.yaml:5: model.inputs.dtype: 'float33' is not one of ['float32', 'float16', 'bfloat16', 'float64', "
        "'int64', 'int32', 'uint8', 'bool'] (did you mean 'float32'?)",
        "s.yaml:12: variants.q.quantize.method: 'int3' is not one of ['dynamic_int8', 'weight_only_int8', "
        "'weight_only_int4', 'static_int8', 'fp16', 'bf16']",
        "s.yaml:14: variants.p.prune.amount: must be < 1.0, got 1.5",
        "s.yaml:16: thresholds.latency.p95_ms: expected a number, got str 'fast'",
    ]


def test_missing_required_key():
    text = make_spec().replace("  factory: tinymodels:Tiny\n", "")
    assert errors(text) == [
        "s.yaml:3: model.factory: give exactly one of 'factory' (a python callable) or 'hf' "
        "(a Hugging Face folder); only a spec whose baseline is an artifact may have neither"
    ]
    text = make_spec().replace("  inputs: {shape: [1, 4]}\n", "")
    assert errors(text) == ["s.yaml:3: model.inputs: required key is missing"]


def test_yaml_syntax_error_points_at_its_line():
    text = make_spec().replace("  split: {test_fraction: 0.25, seed: 0}", "  split: {test_fraction: 0.25, seed: 0")
    (msg,) = errors(text)
    assert msg.startswith("s.yaml:9: YAML syntax error:")


def test_duplicate_key_is_an_error():
    text = make_spec(variants="  baseline: {}\n  q: {quantize: {method: fp16}}\n  q: {quantize: {method: bf16}}")
    assert errors(text) == ["s.yaml:13: variants.q: duplicate key (first defined at line 12)"]


def test_variant_level_errors():
    assert errors(make_spec(variants="  baseline:\n    quantize: {method: fp16}")) == [
        "s.yaml:11: variants.baseline: the baseline is the unmodified model and takes no recipe; name the variant differently"
    ]
    assert errors(make_spec(variants="  q:\n    quantise: {method: fp16}")) == [
        "s.yaml:12: variants.q.quantise: unknown key; did you mean 'quantize'? allowed: custom, distill, prune, quantize, "
        "steps, thresholds, formats, description, artifact, model, cadence"
    ]
    assert errors(
        make_spec(variants="  q:\n    prune: {method: l1_unstructured, amount: 0.5}\n    quantize: {method: fp16}")
    ) == ["s.yaml:11: variants.q: a variant names one recipe (prune, quantize given); chain several with steps: [...]"]


def test_chain_steps_are_validated_with_their_lines():
    text = make_spec(
        variants="  c:\n    steps:\n      - prune: {method: l1_unstructured, amount: 0.5}\n"
        "      - quantize: {method: dynamic_int8, skip: 3}\n      - compress: {}"
    )
    assert errors(text) == [
        "s.yaml:14: variants.c.steps[1].quantize.skip: expected a list of strings, got int 3",
        "s.yaml:15: variants.c.steps[2].compress: unknown recipe; available: custom, distill, prune, quantize",
    ]


def test_format_errors_and_pickle_opt_in():
    assert errors(make_spec(formats="[torchscrpt]")) == [
        "s.yaml:9: formats[0]: unknown format 'torchscrpt'; did you mean 'torchscript'? available: aoti, export, hdf5, onnx, "
        "pickle, safetensors, torchscript"
    ]
    (msg,) = errors(make_spec(formats="[pickle]"))
    assert msg.startswith(
        "s.yaml:9: formats[0].pickle.allow: the pickle format runs arbitrary code when loaded; opt in with"
    )
    assert errors(make_spec(formats="[{onnx: {opset: 5}}]")) == ["s.yaml:9: formats[0].onnx.opset: must be >= 7, got 5"]


def test_metric_and_data_errors():
    assert errors(make_spec(extra="metric: acuracy")) == [
        "s.yaml:18: metric: unknown metric 'acuracy'; did you mean 'accuracy'? available: accuracy, agreement, cosine, mae, mse, "
        "r2, token_agreement, top_k, callable"
    ]
    assert errors(make_spec().replace("sklearn:iris", "csv:iris.csv")) == [
        "s.yaml:7: data.source: expected 'sklearn:NAME', 'npz:PATH', 'text:PATH', 'python:module:function', "
        "'images:DIR' or 'manifest:FILE', "
        "got 'csv:iris.csv'"
    ]
    assert errors(make_spec().replace("sklearn:iris", "skleran:iris")) == [
        "s.yaml:7: data.source: did you mean 'sklearn'? expected 'sklearn:NAME', 'npz:PATH', 'text:PATH', "
        "'python:module:function', 'images:DIR' or 'manifest:FILE', got 'skleran:iris'"
    ]
    assert errors(make_spec().replace("sklearn:iris", "sklearn:irises")) == [
        "s.yaml:7: data.source: unknown sklearn dataset 'irises'; did you mean 'iris'? available: breast_cancer, "
        "diabetes, digits, iris, wine"
    ]


def test_distill_student_must_be_an_import_path():
    assert errors(make_spec(variants="  s:\n    distill: {student: TinyStudent}")) == [
        "s.yaml:12: variants.s.distill.student: expected an import path 'package.module:callable', got 'TinyStudent'"
    ]


def test_version_must_be_1():
    assert errors(make_spec().replace("deploycheck: 1", "deploycheck: 2")) == [
        "s.yaml:1: deploycheck: unsupported spec version 2; this deploycheck reads version 1"
    ]


def test_collection_error_in_pytest_has_no_traceback(project):
    project.write(make_spec(variants="  q:\n    quantize: {method: int3}"))
    res = project.run()
    res.assert_outcomes(errors=1)
    res.stdout.fnmatch_lines(
        ["*ERROR collecting tiny.yaml*", "tiny.yaml:12: variants.q.quantize.method: 'int3' is not one of *"]
    )
    assert "Traceback" not in res.stdout.str()
    assert res.ret == 2


def test_other_yaml_files_are_not_collected(project):
    project.write("name: CI\non: [push]\njobs: {}\n", name="workflow")
    project.write(make_spec())
    res = project.run("--collect-only", "-q")
    out = res.stdout.str()
    assert "workflow.yaml" not in out
    assert "tiny.yaml::tiny::baseline::torchscript::load" in out


def test_inputs_sharing_a_dynamic_dimension_must_agree_on_its_range_and_size():
    inputs = (
        "  inputs:\n"
        "    input_ids: {shape: [1, 16], dtype: int64, dynamic: {0: batch, 1: {name: seq, min: 2, max: 64}}}\n"
        "    attention_mask: {shape: [1, 16], dtype: int64, dynamic: {0: batch, 1: {name: seq, min: 4, max: 32}}}\n"
        "    token_type_ids: {shape: [1, 8], dtype: int64, dynamic: {1: {name: seq, min: 2, max: 64}}}\n"
    )
    spec = make_spec().replace("  inputs: {shape: [1, 4]}\n", inputs)
    assert errors(spec) == [
        "s.yaml:7: model.inputs.attention_mask.dynamic.1: dimension 'seq' is declared with min 4, max 32 here but "
        "min 2, max 64 at input_ids[1]; a shared dimension has one range: declare the same range, or give this "
        "one another name",
        "s.yaml:8: model.inputs.token_type_ids.dynamic.1: dimension 'seq' has size 8 in token_type_ids's shape but 16 "
        "in input_ids's (input_ids[1]); inputs that share a dimension share its size",
    ]
    agreeing = spec.replace("min: 4, max: 32", "min: 2, max: 64").replace("shape: [1, 8]", "shape: [1, 16]")
    assert [d.name for _, i in parse(agreeing, filename="s.yaml").model.inputs.items for d in i.dynamic_dims] == [
        "batch",
        "seq",
        "batch",
        "seq",
        "seq",
    ]


def test_quantize_modules_the_method_cannot_quantize_are_spec_errors():
    text = make_spec(
        variants="  a:\n    quantize: {method: dynamic_int8, modules: [Linear, Conv2d]}\n"
        "  b:\n    quantize: {method: dynamic_int8, backend: torchao, modules: [Linear, GRU]}\n"
        "  c:\n    quantize: {method: weight_only_int8, modules: [LSTM]}\n"
        "  ok:\n    quantize: {method: dynamic_int8, modules: [Linear, LSTM]}"
    )
    assert errors(text) == [
        "s.yaml:12: variants.a.quantize.modules: dynamic_int8 (torch.ao) quantizes Linear, LSTM, GRU modules only; "
        "Conv2d cannot be: Conv2d layers are quantized by method: static_int8 (Conv1d only where a ReLU follows)",
        "s.yaml:14: variants.b.quantize.modules: dynamic_int8 (torchao) quantizes Linear modules only; GRU cannot be: "
        "dynamic_int8 with backend torch.ao (the default) converts LSTM and GRU",
        "s.yaml:16: variants.c.quantize.modules: weight_only_int8 (torchao) quantizes Linear modules only; LSTM cannot "
        "be: dynamic_int8 with backend torch.ao (the default) converts LSTM and GRU",
    ]


def test_lengths_of_names_a_bounded_dynamic_dimension_of_another_input():
    def spec(inputs: str) -> str:
        return make_spec().replace("  inputs: {shape: [1, 4]}", inputs)

    good = (
        "  inputs:\n    feats: {shape: [1, 300, 4], dynamic: {1: {name: frames, min: 8, max: 300}}}\n"
        "    lengths: {shape: [1], dtype: int64, lengths_of: frames}"
    )
    parsed = parse(spec(good), filename="s.yaml")
    assert parsed.model.inputs.items[1][1].lengths_of == "frames"
    assert errors(spec(good.replace("lengths_of: frames", "lengths_of: frame"))) == [
        "s.yaml:7: model.inputs.lengths.lengths_of: 'frame' is not a dynamic dimension with min and max of another "
        "input (declared: frames)"
    ]
    assert errors(spec(good.replace("{shape: [1], dtype: int64,", "{shape: [1, 2], dtype: int64,"))) == [
        "s.yaml:7: model.inputs.lengths.lengths_of: a lengths input is one integer per sample: shape [batch] and "
        "dtype int64 or int32, got shape [1, 2] int64"
    ]
    assert errors(spec("  inputs: {shape: [1], dtype: int64, lengths_of: frames}")) == [
        "s.yaml:5: model.inputs.lengths_of: lengths_of belongs to a named input beside the one it measures"
    ]


def test_dynamic_probes_clamp_lengths_to_the_size_they_cut():
    import torch

    from deploycheck.signature import dynamic_probes

    spec = parse(
        make_spec().replace(
            "  inputs: {shape: [1, 4]}",
            "  inputs:\n    feats: {shape: [1, 300, 4], dynamic: {1: {name: frames, min: 8, max: 300}}}\n"
            "    lengths: {shape: [1], dtype: int64, lengths_of: frames}",
        ),
        filename="s.yaml",
    )
    batch = {"feats": torch.zeros(3, 300, 4), "lengths": torch.tensor([164, 99, 143])}
    got = {(p.name, p.size): p.batch for p in dynamic_probes(spec, [batch])}
    assert sorted(got) == [("frames", 8), ("frames", 154), ("frames", 300)]
    assert got[("frames", 8)]["feats"].shape == (3, 8, 4)
    assert got[("frames", 8)]["lengths"].tolist() == [8, 8, 8]
    assert got[("frames", 154)]["lengths"].tolist() == [154, 99, 143]
    assert got[("frames", 300)]["lengths"].tolist() == [164, 99, 143]


def test_a_variant_size_gate_replaces_the_spec_size_gate_other_sections_merge_key_by_key():
    text = make_spec(
        thresholds="  size: {max_ratio: 0.5}\n  metric: {max_drop: 0.01}",
        variants="  baseline: {}\n  big:\n    quantize: {method: fp16}\n"
        "    thresholds: {size: {max_mb: 600}, metric: {max_relative_drop: 0.1}}",
    )
    th = parse(text, filename="s.yaml").variants["big"].thresholds
    assert (th.size.max_mb, th.size.max_ratio) == (600, None)
    assert (th.metric.max_drop, th.metric.max_relative_drop) == (0.01, 0.1)
