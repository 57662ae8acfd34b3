"""Numerical health: NaN and Inf fail where they arise, said in words, never as a comparison with nan."""

from __future__ import annotations

import pytest
from conftest import make_spec, shared_run


def test_a_nan_baseline_fails_once_at_the_baseline(project):
    project.write(
        make_spec(
            factory="NaNs", variants="  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.2}"
        )
    )
    res = project.run("-rs")
    res.stdout.fnmatch_lines(
        [
            "*check] outputs failed for tiny::baseline::torchscript*",
            "the baseline's in-memory outputs contain 114 NaN of 114 values; first at sample 0, output index [0]",
            "the baseline's reloaded torchscript outputs contain 114 NaN of 114 values; first at sample 0, output index [0]",
        ]
    )
    res.stdout.fnmatch_lines(
        ["*not compared: the baseline's in-memory outputs are not finite (see tiny::baseline::*::outputs)*"]
    )
    assert "nan >" not in res.stdout.str() and "nan <" not in res.stdout.str()
    # the baseline's finite item, and the pruned variant's own NaN outputs; its metric is skipped
    res.assert_outcomes(failed=2, passed=7, skipped=1)
    res.stdout.fnmatch_lines(["*tiny::pruned::torchscript: outputs: the variant's in-memory outputs contain 114 NaN*"])


def test_fp16_overflow_to_inf_is_named(project):
    project.write(
        make_spec(
            factory="Overflows",
            variants="  baseline: {}\n  half:\n    quantize: {method: fp16}",
            thresholds="  metric: {max_drop: 0.01}\n  outputs: {atol: 0.1}",
        )
    )
    res = project.run("-k", "half", "-v")
    res.stdout.fnmatch_lines(
        [
            "*check] outputs failed for tiny::half::torchscript*",
            "the variant's in-memory outputs contain *Inf* of 114 values; first at sample 0, output index [[]*[]]",
        ]
    )
    # the artifact itself is fine: it reloads; only the checks of its values fail
    res.stdout.fnmatch_lines(["*tiny::half::torchscript::load PASSED*"])
    res.assert_outcomes(failed=1, passed=2, skipped=2)  # load, metric pass; latency, size not gated; outputs fails


@pytest.fixture(scope="module")
def corrupted(request, tmp_path_factory):
    """One session for the localisation tests of a corrupted layer, in every format that can show
    it: a variant whose l2 weights a custom recipe scrambled, judged by its fidelity check."""
    root, res = shared_run(
        request,
        tmp_path_factory,
        make_spec(
            factory="Deep",
            formats="[torchscript, export, onnx]",
            variants="  baseline: {}\n  bad:\n    custom: {callable: 'tinymodels:corrupt', kwargs: {layer: l2}}",
            thresholds="  fidelity: {min_mean_cosine: 0.999}",
        ),
        "-k",
        "bad and fidelity",
    )
    res.assert_outcomes(failed=3)
    return root, res.stdout


def test_a_corrupted_layer_is_named_first(corrupted):
    import json

    root, out = corrupted
    out.fnmatch_lines(
        [
            "*check] fidelity failed for tiny::bad::torchscript*",
            "mean cosine vs baseline * < min_mean_cosine 0.999",
            "  where: the variant first departs from the baseline at module 'l2' (relative error > *), on 16 probes, "
            "in memory (a reloaded torchscript artifact does not expose its layers)",
            "    module  max abs diff     cosine  share of final error",
            "    l1 * 0 * 1.00000 * 0.0%",  # the layer before it is untouched
            "    l2 *%",
        ]
    )
    doc = json.loads((root / "reports" / "deploycheck.json").read_text())
    rec = next(r for r in doc["records"] if r["check"] == "fidelity" and r["format"] == "torchscript")
    assert rec["details"]["divergence"]["first"] == "l2"
    page = (root / "reports" / "deploycheck.html").read_text()
    assert "first departs at <code>l2</code>" in page


def test_exported_graphs_and_onnx_are_localised_in_their_own_layers(corrupted):
    _, out = corrupted
    out.fnmatch_lines(
        [
            "  where: the reloaded export artifact first departs from the baseline at module 'l2' (relative error > *), "
            "on 16 probes, in its own layers (graph nodes mapped to modules)",
            "    module  max abs diff     cosine  share of final error",
            "    l1 * 1.00000 *",
            "    l2 *%",
        ]
    )
    out.fnmatch_lines(
        [
            "  where: the reloaded onnx artifact first departs from the baseline at module 'l2' (relative error > *), "
            "on 16 probes, in its own layers (intermediate outputs from onnxruntime)",
            "    module  max abs diff     cosine  share of final error",
            "    l1 * 1.00000 *",
            "    l2 *%",
        ]
    )
    out.fnmatch_lines(
        [
            "  where: the variant first departs from the baseline at module 'l2' *, in memory "
            "(a reloaded torchscript artifact does not expose its layers)"
        ]
    )


def test_a_reloaded_file_that_departs_from_its_in_memory_model_names_the_layer(project):
    """The outputs check (reloaded vs in-memory): the layer table compares the file's own layers
    with the in-memory model's, where the format exposes them, and says when it cannot."""
    import json

    project.write(
        make_spec(
            factory="ExportsDifferently", formats="[torchscript, export, onnx]", thresholds="  outputs: {atol: 0.001}"
        )
    )
    res = project.run("-k", "outputs")
    res.assert_outcomes(failed=2, passed=1)  # torchscript traces without torch.export: it matches
    for fmt, how in (("export", "graph nodes mapped to modules"), ("onnx", "intermediate outputs from onnxruntime")):
        res.stdout.fnmatch_lines(
            [
                f"*check] outputs failed for tiny::baseline::{fmt}*",
                "outputs of the reloaded * artifact differ from the in-memory variant*",
                f"  where: the reloaded {fmt} artifact first departs from the in-memory variant at module 'l3' "
                f"(relative error > *), on 16 probes, in its own layers ({how})",
            ]
        )
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    rows = {
        r["format"]: r["details"]["divergence"]
        for r in doc["records"]
        if r["check"] == "outputs" and r["status"] == "failed"
    }
    assert rows["export"]["first"] == rows["onnx"]["first"] == "l3"
    l2 = next(r for r in rows["export"]["rows"] if r["module"] == "l2")
    assert l2["max_abs"] == 0.0  # before the changed layer the file agrees exactly


def test_a_pruned_variant_shows_its_error_growing_over_layers(project):
    import json

    project.write(
        make_spec(
            factory="Deep",
            variants="  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.6}",
            thresholds="  fidelity: {min_mean_cosine: 0.9999}",
        )
    )
    res = project.run("-k", "pruned and fidelity")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["  where: the variant first departs from the baseline at module 'l1'*"])
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    rows = next(r for r in doc["records"] if r["check"] == "fidelity")["details"]["divergence"]["rows"]
    linear = [r for r in rows if r["module"] in ("l1", "l2", "l3", "l4")]
    assert [r["module"] for r in linear] == ["l1", "l2", "l3", "l4"]
    assert linear[-1]["rel"] > linear[0]["rel"]  # the error builds up from the first layer to the output
    assert linear[-1]["share"] == pytest.approx(1.0)


def test_passing_checks_pay_nothing_for_localisation(project, monkeypatch):
    import deploycheck.diverge as dv

    def boom(*a, **k):
        raise AssertionError("localise ran for a passing check")

    monkeypatch.setattr(dv, "localise", boom)
    project.write(
        make_spec(
            factory="Deep",
            variants="  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.1}",
            thresholds="  metric: {max_drop: 1.0}",
        )
    )
    project.run("-k", "pruned and metric").assert_outcomes(passed=1)


def test_a_divergence_is_data_its_message_and_report_are_made_from_it():
    """The table's words come from fields, not from sentence fragments read back by key; a file
    made elsewhere says so by a flag, whatever its note reads."""
    import torch

    from deploycheck.diverge import Divergence, Layer, compare

    d = Divergence(16, rows=[Layer("l1", 0.0, 0.0, 1.0, 0.0), Layer("l2", 0.5, 0.2, 0.9, 1.0)], first="l2", limit=0.02)
    assert d.render().splitlines()[:2] == [
        "  where: the variant first departs from the baseline at module 'l2' (relative error > 0.02), "
        "on 16 probes, in memory",
        "    module  max abs diff     cosine  share of final error",
    ]
    assert d.as_dict()["rows"][1] == {
        "module": "l2",
        "max_abs": 0.5,
        "rel": 0.2,
        "cosine": 0.9,
        "share": 1.0,
        "kl": None,
    }
    elsewhere = compare(None, None, torch.zeros(4, 3), fmt="onnx")
    assert elsewhere.made_elsewhere and elsewhere.probes == 4
    assert elsewhere.render() == (
        "  where: an artifact made elsewhere has no in-memory model here to compare layer by layer"
    )


NESTED = """
import torch
from torch import nn


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(4, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 3)
        self.act = nn.ReLU()  # one module called after each layer, as EfficientNet-Lite's blocks do

    def forward(self, x):
        return self.l4(self.act(self.l3(self.act(self.l2(self.act(self.l1(x)))))))


class Nested(nn.Module):
    \"\"\"Every layer inside one container (as an LM wrapper holds the whole model).\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = Body()

    def forward(self, x):
        return self.net(x)


def corrupt(model, ctx, layer):
    with torch.no_grad():
        w = dict(model.named_modules())[layer].weight
        w.copy_(torch.randn(w.shape, generator=ctx.generator) * 3)
    return model
"""


def test_a_shared_activation_and_a_container_never_hide_the_damaged_layer(project):
    """Graph nodes and ONNX scopes used to list a container before what it holds (so the whole
    model was named first) and compare a shared activation's last call with the eager model's first
    call; both now go by the order modules finish and the last call, in every format."""
    project.tester.makepyfile(nested=NESTED)
    variants = "  baseline: {}\n  bad:\n    custom: {callable: 'nested:corrupt', kwargs: {layer: net.l2}}"
    spec = make_spec(
        factory="Nested",
        formats="[torchscript, export, onnx]",
        variants=variants,
        thresholds="  fidelity: {min_mean_cosine: 0.999}",
    ).replace("tinymodels:Nested", "nested:Nested")
    project.write(spec)
    res = project.run("-k", "bad and fidelity")
    res.assert_outcomes(failed=3)
    for subject in ("the variant", "the reloaded export artifact", "the reloaded onnx artifact"):
        res.stdout.fnmatch_lines([f"  where: {subject} first departs from the baseline at module 'net.l2' *"])
    assert "at module 'net' " not in res.stdout.str() and "at module 'net.act'" not in res.stdout.str()
