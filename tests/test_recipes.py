"""Each recipe changes the model as declared: measured sparsity, weight dtypes, parameter counts, size."""

from __future__ import annotations

import os

import pytest
import torch

from deploycheck.checks import CHECKS
from deploycheck.errors import StageError
from deploycheck.runner import Runner
from deploycheck.spec import parse
from deploycheck.target import Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC = """\
deploycheck: 1
name: r
model:
  factory: examples.digits:{factory}
  weights: models/{weights}
  inputs: {{shape: [1, {features}]}}
data:
  source: sklearn:digits
  preprocess: [{preprocess}]
formats: [torchscript]
variants:
{variants}
"""
MLP = dict(factory="MLP", weights="digits_mlp.safetensors", features=64, preprocess="{scale: 0.0625}")


def runner_for(variants: str, tmp_path, **model):
    m = {**MLP, **model}
    text = SPEC.format(variants=variants, **m)
    spec = parse(text, filename=os.path.join(ROOT, "specs", "test_recipes.yaml"))
    return spec, Runner(run_dir=str(tmp_path))


def built(runner, spec, vname: str):
    return runner.built(Target(spec, spec.variant(vname)))


def linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def test_dynamic_int8_quantizes_linear_layers_except_skipped(tmp_path):
    spec, r = runner_for("  q:\n    quantize: {method: dynamic_int8, skip: ['net.4']}", tmp_path)
    base, q = built(r, spec, "baseline"), built(r, spec, "q")
    kinds = {n: type(m).__module__ + "." + type(m).__name__ for n, m in q.model.named_modules() if n.startswith("net.")}
    assert kinds["net.0"] == kinds["net.2"] == "torch.ao.nn.quantized.dynamic.modules.linear.Linear"
    assert kinds["net.4"] == "torch.nn.modules.linear.Linear"
    assert q.model.net[0].weight().dtype == torch.qint8
    assert abs(q.metric - base.metric) <= 0.01
    assert q.steps[0].details["modules"] == ["net.0", "net.2"]


def test_dynamic_int8_state_is_at_least_3_5x_smaller(tmp_path):
    spec, r = runner_for("  q:\n    quantize: {method: dynamic_int8}", tmp_path)
    ratio = built(r, spec, "baseline").state_bytes / built(r, spec, "q").state_bytes
    assert ratio >= 3.5


def test_weight_only_int8_uses_torchao_int8_weights(tmp_path):
    spec, r = runner_for("  w:\n    quantize: {method: weight_only_int8}", tmp_path)
    w = built(r, spec, "w")
    assert {type(m.weight).__name__ for _, m in linears(w.model)} == {"Int8Tensor"}
    assert w.requires == ("torchao",)


def test_fp16_casts_weights_behind_a_float32_interface(tmp_path):
    spec, r = runner_for("  h:\n    quantize: {method: fp16}", tmp_path)
    h = built(r, spec, "h")
    assert {p.dtype for p in h.model.parameters()} == {torch.float16}
    assert h.outputs and {o.dtype for o in h.outputs.values()} == {torch.float32}  # every named output
    assert h.state_bytes * 2 == built(r, spec, "baseline").state_bytes


def test_static_int8_pt2e_inserts_quantize_ops_and_keeps_accuracy(tmp_path):
    spec, r = runner_for(
        "  s:\n    quantize: {method: static_int8, calibration_batches: 4}",
        tmp_path,
        factory="CNN",
        weights="digits_cnn.safetensors",
        features="1, 8, 8",
        preprocess="{scale: 0.0625}, {reshape: [1, 8, 8]}, {normalize: {mean: 0.3, std: 0.4}}",
    )
    s = built(r, spec, "s")
    targets = {str(n.target) for n in s.model.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets)
    assert s.steps[0].details["calibration_samples"] == 256
    assert abs(s.metric - built(r, spec, "baseline").metric) <= 0.02


@pytest.mark.parametrize("method,amount", [("l1_unstructured", 0.5), ("random_unstructured", 0.3)])
def test_unstructured_pruning_zeroes_that_fraction_of_each_layer_permanently(tmp_path, method, amount):
    spec, r = runner_for(f"  p:\n    prune: {{method: {method}, amount: {amount}}}", tmp_path)
    p = built(r, spec, "p")
    for name, m in linears(p.model):
        zeros = 1 - torch.count_nonzero(m.weight).item() / m.weight.numel()
        assert zeros == pytest.approx(amount, abs=1 / m.weight.numel() + 1e-9), name
        assert p.steps[0].details["sparsity_per_layer"][name] == pytest.approx(zeros)
    state = p.model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)  # permanent: no reparametrization left
    assert not any(m._forward_pre_hooks for m in p.model.modules())


def test_global_pruning_reaches_the_overall_amount(tmp_path):
    spec, r = runner_for("  g:\n    prune: {method: global_l1_unstructured, amount: 0.4}", tmp_path)
    g = built(r, spec, "g")
    assert g.steps[0].details["sparsity_pruned_layers"] == pytest.approx(0.4, abs=1e-4)


def test_structured_pruning_removes_whole_rows_and_finetune_keeps_them_zero(tmp_path):
    spec, r = runner_for(
        "  s:\n    prune: {method: ln_structured, amount: 0.25, n: 2, dim: 0, skip: ['net.4'], finetune: {epochs: 2}}",
        tmp_path,
    )
    s = built(r, spec, "s")
    for name, m in linears(s.model):
        zero_rows = int((m.weight.abs().sum(1) == 0).sum())
        assert zero_rows == (0 if name == "net.4" else round(0.25 * m.weight.shape[0])), name
    tuned = s.steps[0].details["finetune"]  # what the fine-tune did is recorded: loss, epochs, values
    assert (tuned["loss"], tuned["epochs"], len(tuned["loss_per_epoch"])) == ("cross_entropy", 2, 2)
    first, last = tuned["loss_per_epoch"]
    assert s.steps[0].summary.endswith(f"; fine-tuned 2 epochs, cross_entropy {first:.4g} -> {last:.4g}")


def test_builtin_training_names_its_loss_and_both_shapes_when_the_task_does_not_fit():
    """A speech model's per-frame logits against per-utterance label sequences: torch's bare
    "Expected target size [64, 11], got [64, 4]" becomes the loss, the shapes and the way out."""
    from deploycheck.recipes.prune import task_loss

    out, y = torch.randn(64, 11, 50), torch.randint(0, 11, (64, 4))
    with pytest.raises(ValueError) as e:
        task_loss(out, y, what="finetune", output="logits")
    assert str(e.value).startswith(
        "the built-in finetune minimizes cross-entropy between the model's output 'logits' (shape [64, 11, 50]) and "
        "the training labels (shape [64, 4]): it fits a classifier's logits (batch, classes) against integer labels "
        "(batch,). For another task (CTC, sequence labels, several outputs), write the training as a custom recipe "
        "(custom: {callable: ...}); torch said: Expected target size [64, 50], got [64, 4]"
    )


def test_distilled_student_is_small_accurate_and_deterministic(tmp_path):
    v = "  st:\n    distill: {student: 'examples.digits:TinyMLP', student_kwargs: {hidden: 32}, epochs: 30}"
    spec, r = runner_for(v, tmp_path)
    st = built(r, spec, "st")
    teacher = built(r, spec, "baseline")
    assert st.params <= 0.25 * teacher.params
    assert st.metric >= 0.9
    assert st.arch == {"factory": "examples.digits:TinyMLP", "kwargs": {"hidden": 32}}
    d = st.steps[0].details
    assert d["loss"] == "alpha 0.7 x KL(teacher || student) at temperature 4 + 0.3 x cross-entropy on the labels"
    assert len(d["loss_per_epoch"]) == 30 and d["loss_per_epoch"][-1] < d["loss_per_epoch"][0]
    _, r2 = runner_for(v, tmp_path / "again")
    again = built(r2, spec, "st")
    assert all(
        torch.equal(a, b)
        for a, b in zip(st.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    )


def test_chain_records_each_step(tmp_path):
    spec, r = runner_for(
        "  c:\n    steps:\n      - prune: {method: l1_unstructured, amount: 0.5}\n"
        "      - quantize: {method: dynamic_int8}",
        tmp_path,
    )
    c = built(r, spec, "c")
    assert [s.recipe for s in c.steps] == ["prune:l1_unstructured@0.5", "quantize:dynamic_int8"]
    assert c.steps[0].nonzero < 0.6 * c.steps[0].params
    assert c.steps[1].state_bytes < c.steps[0].state_bytes / 3
    assert c.recipe == "prune:l1_unstructured@0.5 -> quantize:dynamic_int8"


def test_skip_glob_that_matches_nothing_fails_the_build_with_the_variant_line(tmp_path):
    spec, r = runner_for("  q:\n    quantize: {method: dynamic_int8, skip: ['fc9*']}", tmp_path)
    with pytest.raises(StageError) as ei:
        built(r, spec, "q")
    assert ei.value.headline().startswith(
        "[build] r::q (declared at " + os.path.join(ROOT, "specs", "test_recipes.yaml") + ":12): recipe step 1 "
        "(quantize:dynamic_int8) failed: ValueError: skip glob 'fc9*' matches no module; modules are: net, net.0"
    )


def test_recipe_failure_fails_only_its_variant(project):
    project.tester.makepyfile(
        branchy="""
        import torch
        class Branchy(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 3)
            def forward(self, x):
                if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                    return self.fc(x)
                return -self.fc(x)
    """
    )
    from conftest import make_spec

    project.write(
        make_spec(
            factory="Branchy",
            variants="  baseline: {}\n  s:\n    quantize: {method: static_int8}",
            thresholds="  size: {max_mb: 1}",
        ).replace("tinymodels:Branchy", "branchy:Branchy")
    )
    res = project.run()
    res.assert_outcomes(passed=3, skipped=2, failed=6)  # s: quantized, then load, outputs, metric, latency, size
    res.stdout.fnmatch_lines(
        ["[[]build[]] tiny::s (declared at tiny.yaml:12): recipe step 1 (quantize:static_int8) failed: *"]
    )


def test_batch_invariance_reports_largest_difference_and_changed_predictions(tmp_path):
    spec, r = runner_for(
        "  q:\n    quantize: {method: dynamic_int8}\n    thresholds:\n      batch_invariance: {atol: 0.0, probes: 16}",
        tmp_path,
    )
    v = CHECKS.get("batch_invariance").run(r, Target(spec, spec.variant("q")))
    assert not v.passed
    assert v.message.startswith("max |alone - batched| ")
    assert "> atol 0; changed predictions" in v.message
    assert v.message.endswith("(16 probes, batches of 64)")
    assert CHECKS.get("batch_invariance").applies(Target(spec, spec.variant("q")))
    assert not CHECKS.get("batch_invariance").applies(Target(spec, spec.variant("baseline")))


def test_quantized_engine_is_recorded_for_the_loader(tmp_path):
    spec, r = runner_for("  q:\n    quantize: {method: dynamic_int8, engine: qnnpack, per_channel: false}", tmp_path)
    q = built(r, spec, "q")
    assert q.settings == {"quantized_engine": "qnnpack"}
    assert torch.backends.quantized.engine != "qnnpack"  # the process-wide engine is restored after packing
    art = r.artifact(Target(spec, spec.variant("q"), spec.variant("q").formats[0]))
    assert art.manifest["torch_settings"] == {"quantized_engine": "qnnpack"}


def test_reduced_precision_variants_export_and_never_read_as_a_format_limit(project):
    """fp16/bf16 wrap the model in ``Cast`` (forward(*args)): its export must be carried out and
    checked, not skipped as 'unsupported' because dynamic_shapes did not follow *args."""
    from conftest import make_spec

    project.write(
        make_spec(
            formats="[export, onnx]",
            variants="  half:\n    quantize: {method: fp16}\n  brain:\n    quantize: {method: bf16}\n"
            "    formats: [export]",  # onnxruntime's CPU has no bf16 Gemm: a load failure
            thresholds="  metric: {max_drop: 0.05}",
        )
    )
    res = project.run("-k", "(half or brain) and (load or outputs)", "-rs")
    res.assert_outcomes(passed=6)
    assert "unsupported" not in res.stdout.str()
