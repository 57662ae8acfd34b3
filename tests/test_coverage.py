"""What a quantize step converted is read from the model it returned (real torch.ao, torchao and
pt2e on small models), never from what it was asked; the `quantized` check gates it."""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deploycheck.recipes.coverage import converted_in_graph, coverage, describe, targeted
from deploycheck.recipes.quantize import QuantizeConfig


class FunctionalConv(nn.Conv2d):
    """An nn.Conv2d subclass that calls the functional op (as EfficientNet's same-padding conv does)."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Speech(nn.Module):
    """Two convolutions (one a subclass), a GRU holding most of the weights, a Linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = FunctionalConv(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = F.relu6(self.c2(F.relu6(self.c1(x)))).mean(2).transpose(1, 2)
        o, _ = self.gru(y)
        return self.fc(o[:, -1])


class Vision(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = FunctionalConv(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


class SharedActivation(nn.Module):
    """One ReLU6 module called after both convolutions, as EfficientNet-Lite's blocks do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = FunctionalConv(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


X = torch.randn(2, 3, 8, 8)
# what the torch.ao, torchao and pt2e paths read from a recipe context
CTX = types.SimpleNamespace(example=X)


def apply(cfg: QuantizeConfig, model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cfg.apply(copy.deepcopy(model).eval(), CTX)
    return out, out.details["coverage"]


def floats(cov: dict) -> dict[str, str]:
    return {f["name"]: f["reason"] for f in cov["float"]}


def test_targets_are_nn_classes_with_their_subclasses_minus_skip_and_attention_out_proj():
    m = Speech()
    assert [(x.name, x.type, x.base) for x in targeted(m, ("Linear", "Conv2d"))] == [
        ("c1", "FunctionalConv", "Conv2d"),
        ("c2", "Conv2d", "Conv2d"),
        ("fc", "Linear", "Linear"),
    ]
    assert [x.name for x in targeted(m, ("Linear", "Conv2d", "GRU"), ("c*",))] == ["gru", "fc"]
    att = nn.MultiheadAttention(8, 2)  # its out_proj is a Linear subclass torch marks as never quantized
    assert targeted(att, ("Linear",)) == []


def test_torch_ao_dynamic_int8_converts_linear_and_gru_but_no_convolution():
    out, cov = apply(QuantizeConfig(method="dynamic_int8", modules=("Linear", "GRU", "Conv2d")), Speech())
    assert (cov["targeted_layers"], cov["converted_layers"]) == (4, 2)
    w = {"c1": 3 * 8 * 9 + 8, "c2": 8 * 9 + 8, "gru": 3 * 16 * (8 + 16) + 6 * 16, "fc": 16 * 10 + 10}
    assert cov["fraction"] == pytest.approx((w["gru"] + w["fc"]) / sum(w.values()))
    assert floats(cov) == {
        "c1": "torch.ao dynamic int8 has no Conv2d kernel (static_int8 quantizes convolutions)",
        "c2": "torch.ao dynamic int8 has no Conv2d kernel (static_int8 quantizes convolutions)",
    }
    assert out.summary == ("dynamic int8 (torch.ao, x86); converted 2 of 4 targeted layers (82.3% of their weights)")


def test_torch_ao_dynamic_int8_leaves_a_linear_subclass_float_and_says_why():
    class Head(nn.Linear):
        pass

    m = nn.Sequential(nn.Linear(4, 8), Head(8, 3))
    _, cov = apply(QuantizeConfig(method="dynamic_int8"), m)
    assert floats(cov) == {"1": "torch.ao swaps exact nn.Linear modules only; this is a Head"}


@pytest.mark.parametrize("method", ["dynamic_int8", "weight_only_int8"])
def test_torchao_reports_the_gru_it_cannot_quantize(method):
    """The speech engineer's silent green: `modules: [gru, fc]` said 2 modules, the GRU stayed float."""
    out, cov = apply(QuantizeConfig(method=method, backend="torchao"), Speech())
    assert (cov["targeted_layers"], cov["converted_layers"]) == (2, 1)
    assert cov["fraction"] == pytest.approx(170 / (170 + 1248))
    assert floats(cov) == {"gru": f"torchao's {method} quantizes Linear weights only; a GRU stays float"}
    assert describe(cov["float"]) == (
        f"gru (GRU, 88.0%: torchao's {method} quantizes Linear weights only; a GRU stays float)"
    )
    assert type(out.model.fc.weight) is not nn.Parameter  # the Linear is quantized (a tensor subclass)


def test_int4_names_the_layers_its_group_size_leaves_float():
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 48), nn.Linear(48, 8))
    _, cov = apply(QuantizeConfig(method="weight_only_int4", group_size=32), m)
    assert floats(cov) == {"3": "its input size is not a multiple of group_size 32"}
    assert cov["converted_layers"] == 2


def test_static_int8_reads_the_graph_and_finds_the_convolution_pt2e_did_not_annotate():
    """pt2e's x86 quantizer quantizes the plain Conv2d and Linear and leaves the subclass float
    (issue 39's EfficientNet: 1 of 50 layers quantized and passing as int8). The graph is made as
    the recipe makes it: exported behind a wrapper, prepared, calibrated, converted."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class Wrapper(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)

    m = Vision().eval()
    before = targeted(m, ("Linear", "Conv1d", "Conv2d", "Conv3d"))
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(Wrapper(m), (X,)).module(), quantizer)
    prepared(X)
    cov = coverage(before, convert_pt2e(prepared), method="static_int8", backend="torchao")
    assert cov.converted == {"c2", "fc"}
    assert cov.reasons == {"c1": "the x86 pt2e quantizer did not annotate this Conv2d (a FunctionalConv)"}


def test_fp16_has_no_coverage_record():
    out = QuantizeConfig(method="fp16").apply(Speech(), CTX)
    assert "coverage" not in out.details
    assert coverage([], Speech(), method="dynamic_int8", backend="torch.ao").fraction == 1.0


def static(model: nn.Module, tmp_path, inputs: str = "{shape: [1, 3, 8, 8]}", **options):
    """QuantizeConfig(static_int8) applied as a build applies it, on a spec whose input is X's."""
    from deploycheck.spec import parse

    spec = parse(
        f"deploycheck: 1\nname: v\nmodel:\n  factory: examples.digits:CNN\n  inputs: {inputs}\n"
        "data:\n  source: sklearn:digits\nformats: [export]\nvariants:\n  baseline: {}\n",
        filename=str(tmp_path / "v.yaml"),
    )
    ctx = types.SimpleNamespace(
        example=X[:1],
        spec=spec,
        data=types.SimpleNamespace(train_tensors=lambda: (torch.randn(16, 3, 8, 8), None)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = QuantizeConfig(method="static_int8", calibration_batches=1, **options).apply(model.eval(), ctx)
    return out, out.details["coverage"]


def test_static_int8_recipe_quantizes_a_conv_subclass_that_calls_the_functional_op(tmp_path):
    """The recipe marks the operators a subclass of nn.Conv2d produced as Conv2d's, so the x86
    quantizer annotates them: every convolution and the Linear end up int8."""
    out, cov = static(Vision(), tmp_path)
    assert (cov["targeted_layers"], cov["converted_layers"], cov["float"]) == (3, 3, [])
    assert out.summary.endswith("converted 3 of 3 targeted layers (100.0% of their weights)")


def test_static_int8_counts_the_gru_it_cannot_quantize_and_skip_keeps_layers_float(tmp_path):
    """The speech engineer's static int8: the GRU (most of the weights) stays float and says why;
    a skipped layer is left float by the quantizer and is not targeted."""
    out, cov = static(Speech(), tmp_path, skip=("c1",))
    assert (cov["targeted_layers"], cov["converted_layers"]) == (3, 2)
    assert floats(cov) == {
        "gru": "pt2e's x86 quantizer has no int8 GRU: dynamic_int8 (torch.ao) quantizes it, or name it in skip"
    }
    assert cov["fraction"] == pytest.approx((80 + 170) / (80 + 1248 + 170))
    assert not any(p.endswith("c1") for p in converted_in_graph(out.model))  # skipped: float in the graph
    with pytest.raises(ValueError, match="skip glob 'c9' matches no module"):
        static(Speech(), tmp_path, skip=("c9",))


def test_static_int8_handles_an_activation_module_called_twice(tmp_path):
    """pt2e grouped both calls of the shared ReLU6 into one partition and its conv + activation
    fusion failed with "Input partition has more than one output node"; each call is its own."""
    _, cov = static(SharedActivation(), tmp_path)
    assert (cov["targeted_layers"], cov["converted_layers"]) == (3, 3)


def test_static_int8_of_an_rnn_with_a_dynamic_time_axis_is_traced_at_the_example_size(tmp_path):
    """The GRU specialises the time axis under torch.export: static int8 quantizes at the example's
    size instead of failing the variant in every format, and says so."""
    out, _ = static(Speech(), tmp_path, inputs="{shape: [1, 3, 8, 8], dynamic: {3: {name: width, min: 4, max: 8}}}")
    assert out.details["fixed_dims"] == "width=8"
    assert "; traced at width=8 (a layer specialised that dimension, so the int8 model takes that size only)" in (
        out.summary
    )


class TiedLM(nn.Module):
    """An input embedding and an lm_head sharing one weight, as most causal LMs have them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(64, 32)
        self.mlp = nn.Linear(32, 32)
        self.lm_head = nn.Linear(32, 64, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.relu(self.mlp(self.embed(ids))))


@pytest.mark.parametrize("method", ["dynamic_int8", "weight_only_int8", "weight_only_int4"])
def test_a_tied_lm_head_stays_float_and_tied_unless_untie_is_set(method):
    """torchao and torch.ao quantize lm_head's copy of the shared weight and leave the embedding in
    float: the model grows by a vocabulary x hidden matrix (SmolLM2: 134.5 M -> 162.8 M)."""
    ids = torch.randint(0, 64, (2, 5))
    ctx = types.SimpleNamespace(example=ids)
    model = TiedLM().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = QuantizeConfig(method=method).apply(copy.deepcopy(model), ctx)
    assert out.details["kept_tied"] == {"embed": "lm_head.weight", "lm_head": "embed.weight"}
    assert (
        out.summary.endswith("; kept float to stay tied: embed (shares lm_head.weight), lm_head (shares embed.weight)")
        or "; kept float to stay tied: embed (shares lm_head.weight), lm_head (shares embed.weight)" in out.summary
    )
    assert out.model.lm_head.weight is out.model.embed.weight
    assert (out.details["coverage"]["targeted_layers"], out.details["coverage"]["converted_layers"]) == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        untied = QuantizeConfig(method=method, untie=True).apply(copy.deepcopy(model), ctx)
    assert "kept_tied" not in untied.details
    assert untied.details["coverage"]["converted_layers"] == 2


def test_state_tensors_count_a_tied_weight_once_and_name_quantized_tensors_by_their_storage():
    from deploycheck.loading import describe_state, state_bytes, state_tensors

    model = TiedLM()
    names = [n for n, _, _ in state_tensors(model)]
    assert names == ["embed.weight", "mlp.weight", "mlp.bias"]  # lm_head.weight is embed.weight
    assert state_bytes(model) == (64 * 32 + 32 * 32 + 32) * 4
    out, _ = apply(QuantizeConfig(method="weight_only_int8"), model)
    got = {n: d for n, d, _ in state_tensors(out.model)}
    assert (got["embed.weight"], got["mlp.weight"]) == ("float32", "int8")
    assert describe_state([("a", "float32", 3_000_000), ("b", "int8", 500_000), ("c", "float32", 1_000_000)]) == (
        "float32 4 MB in 2 tensors (largest a 3 MB); int8 0.5 MB in 1 tensors (largest b 0.5 MB)"
    )


def test_a_static_step_that_targets_no_layer_fails_the_quantized_check_instead_of_passing(tmp_path):
    """Nothing targeted means nothing quantized: the fraction of an empty set must not read as 1."""
    from deploycheck.checks.quantized import quantized_check
    from deploycheck.recipes import StepRecord

    out, cov = static(Vision(), tmp_path, skip=("c1", "c2", "fc"))
    assert (cov["targeted_layers"], cov["converted_layers"]) == (0, 0)
    rec = StepRecord("quantize:static_int8", out.summary, 0.0, 0, 0, 0, out.details)
    runner = types.SimpleNamespace(built=lambda t: types.SimpleNamespace(steps=[rec]))
    th = types.SimpleNamespace(quantized=types.SimpleNamespace(min_fraction=0.9))
    t = types.SimpleNamespace(variant=types.SimpleNamespace(thresholds=th))
    v = quantized_check(runner, t)
    assert not v.passed
    assert v.formula == "step 1 (quantize:static_int8): targeted no layer (no module of its types is left after `skip`)"
