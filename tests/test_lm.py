"""Causal-LM checks: the math on synthetic logits with known answers, then the checks on the
example model with a fault injected into one layer."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from deploycheck import lm  # noqa: E402


def _logits_for(probs_per_pos, batch=1):
    """Logits whose softmax is exactly ``probs_per_pos`` (seq, vocab)."""
    p = torch.tensor(probs_per_pos, dtype=torch.float64)
    return torch.log(p).unsqueeze(0).repeat(batch, 1, 1)


# --- perplexity ---------------------------------------------------------------------------------


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    logits = torch.zeros(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert lm.perplexity(logits, ids, mask) == pytest.approx(7.0)


def test_perplexity_counts_only_real_next_tokens():
    # the true next token always has p = 0.5 -> perplexity 2; padded positions carry p = 0.01
    ids = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    good = [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
    logits = _logits_for(good, batch=2)
    # make the masked predictions (sample 1, positions 1 and 2) terrible; they must not count
    logits[1, 1:] = torch.log(torch.tensor([0.99, 0.01], dtype=torch.float64))
    assert lm.perplexity(logits, ids, mask) == pytest.approx(2.0)
    nll, n = lm.token_nll(logits, ids, mask)
    assert n == 3 + 1 and nll == pytest.approx(4 * math.log(2))


def test_perplexity_with_nothing_to_score_is_an_error():
    with pytest.raises(ValueError, match="no position to score"):
        lm.perplexity(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))


def test_perplexity_of_nan_logits_is_infinite_and_fails():
    logits = torch.full((1, 3, 4), float("nan"))
    value = lm.perplexity(logits, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3))
    ok, formula = lm.perplexity_verdict(value, 3.9, max_relative_increase=0.05)
    assert not ok and formula == "perplexity inf is not finite (baseline 3.9)"


def test_perplexity_verdict_formula():
    ok, f = lm.perplexity_verdict(4.12, 3.90, max_relative_increase=0.05)
    assert not ok
    assert f == "perplexity 4.12 > baseline 3.9 × (1 + max_relative_increase 0.05) = 4.095"
    ok, f = lm.perplexity_verdict(4.0, 3.90, max_relative_increase=0.05, max_increase=0.2)
    assert ok
    assert f == (
        "perplexity 4 <= baseline 3.9 × (1 + max_relative_increase 0.05) = 4.095; "
        "perplexity 4 <= baseline 3.9 + max_increase 0.2 = 4.1"
    )
    ok, f = lm.perplexity_verdict(4.0, 3.90, max_increase=0.05)
    assert not ok and f == "perplexity 4 > baseline 3.9 + max_increase 0.05 = 3.95"


# --- next-token agreement and KL ----------------------------------------------------------------


def test_identical_distributions_agree_fully_with_zero_kl():
    logits = torch.randn(3, 6, 11)
    st = lm.next_token_stats(logits, logits.clone(), torch.ones(3, 6))
    assert st["top1"] == 1.0 and st["mean_kl"] == pytest.approx(0, abs=1e-12) and st["positions"] == 15


def test_kl_and_top1_have_their_closed_form_values():
    base = _logits_for([[0.5, 0.5], [0.8, 0.2], [0.5, 0.5]])
    var = _logits_for([[0.9, 0.1], [0.3, 0.7], [0.1, 0.9]])
    st = lm.next_token_stats(var, base, torch.ones(1, 3))
    kl0 = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl1 = 0.8 * math.log(0.8 / 0.3) + 0.2 * math.log(0.2 / 0.7)
    assert st["positions"] == 2  # the last position predicts past the text
    assert st["mean_kl"] == pytest.approx((kl0 + kl1) / 2)
    assert st["max_kl"] == pytest.approx(kl1) and st["worst"] == (0, 1)
    # position 0: argmax 0 vs tie (0.5, 0.5) -> argmax 0 on both; position 1: 0 vs 1
    assert st["top1"] == pytest.approx(0.5)
    # two positions: the percentiles interpolate between them (torch.quantile, linear)
    assert st["median_kl"] == pytest.approx((kl0 + kl1) / 2)
    assert st["p99_kl"] == pytest.approx(kl0 + 0.99 * (kl1 - kl0))
    assert st["p999_kl"] == pytest.approx(kl0 + 0.999 * (kl1 - kl0))
    lo, hi = st["top1_ci95"]  # Wilson: 1 of 2
    assert (lo, hi) == (pytest.approx(0.0945, abs=1e-4), pytest.approx(0.9055, abs=1e-4))
    ok, f = lm.agreement_verdict(st, min_top1=0.9, max_mean_kl=0.01, max_kl=1.0)
    assert not ok
    spread = (
        f"median {lm.fmt_num(st['median_kl'])}, p99 {lm.fmt_num(st['p99_kl'])}, "
        f"p99.9 {lm.fmt_num(st['p999_kl'])}, max {lm.fmt_num(kl1)} nats"
    )
    assert f == (
        "next-token top-1 agreement 0.5000 [95% 0.0945, 0.9055] < min_top1 0.9; mean KL(baseline || variant) "
        f"{lm.fmt_num((kl0 + kl1) / 2)} nats > max_mean_kl 0.01 (2 positions; KL {spread}, worst at text 0 "
        "position 1)"
    )
    # the largest KL is within 1 nat: only the failing bounds are listed
    ok, f = lm.agreement_verdict(st, max_p99_kl=0.5, max_kl=1.0)
    assert not ok and f.startswith(f"99th percentile KL(baseline || variant) {lm.fmt_num(st['p99_kl'])} nats > ")
    ok, f = lm.agreement_verdict(st, max_kl=1.0, max_median_kl=1.0)
    assert ok and f.startswith("median KL(baseline || variant) ") and " <= max_median_kl 1; largest KL" in f
    with pytest.raises(TypeError, match="unknown next-token thresholds"):
        lm.agreement_verdict(st, max_p50_kl=1.0)


def test_wilson_interval_has_its_closed_form_values():
    assert lm.wilson(0, 0) == (0.0, 1.0)
    lo, hi = lm.wilson(10, 10)  # all agree: the interval still has width
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    lo, hi = lm.wilson(81, 100)
    assert (lo, hi) == (pytest.approx(0.7222, abs=1e-4), pytest.approx(0.8749, abs=1e-4))


def test_kl_ignores_padded_positions():
    base = torch.zeros(1, 4, 3)
    var = base.clone()
    var[0, 2:] = torch.tensor([9.0, -9.0, 0.0])  # different only where the mask ends
    st = lm.next_token_stats(var, base, torch.tensor([[1, 1, 1, 0]]))
    assert st["positions"] == 2 and st["mean_kl"] == pytest.approx(0, abs=1e-12)


def test_shapes_must_match():
    with pytest.raises(
        ValueError, match=r"logits of shape \(1, 4, 3\) cannot be compared with the baseline's \(1, 5, 3\)"
    ):
        lm.next_token_stats(torch.zeros(1, 4, 3), torch.zeros(1, 5, 3), torch.ones(1, 4))


# --- greedy generation and departures -----------------------------------------------------------


def _counting_model(vocab=10, stumble_at=None):
    """A fake LM whose greedy next token is (last token + 1) mod vocab; state counts the cache length.
    ``stumble_at``: after that many cached tokens it predicts 0 instead."""
    calls = []

    def logits_for(tok, length):
        nxt = 0 if stumble_at is not None and length >= stumble_at else (tok + 1) % vocab
        out = torch.zeros(vocab)
        out[nxt] = 1.0
        return out

    def prefill(ids):
        calls.append(("prefill", len(ids)))
        return logits_for(ids[-1], len(ids)), len(ids)

    def decode(tok, length):
        calls.append(("decode", length))
        return logits_for(tok, length + 1), length + 1

    return prefill, decode, calls


def test_greedy_prefills_once_then_decodes_one_token_at_a_time():
    prefill, decode, calls = _counting_model()
    assert lm.greedy(prefill, decode, [3, 4], new_tokens=5) == [5, 6, 7, 8, 9]
    assert calls == [("prefill", 2), ("decode", 2), ("decode", 3), ("decode", 4), ("decode", 5)]


def test_greedy_stops_at_eos():
    prefill, decode, _ = _counting_model()
    assert lm.greedy(prefill, decode, [5], new_tokens=8, eos_id=8) == [6, 7, 8]


def test_first_departure():
    assert lm.first_departure([1, 2, 3], [1, 2, 3]) is None
    assert lm.first_departure([1, 2, 3], [1, 5, 3]) == 1
    assert lm.first_departure([1, 2], [1, 2, 3]) == 2


def test_prefix_match_is_the_mean_share_reproduced_before_the_first_departure():
    refs = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9]]
    gens = [[1, 2, 0, 0], [5, 6, 7, 8], [0, 9]]
    # 2/4, 4/4 and 0/2
    assert lm.prefix_match(gens, refs) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    ok, msg, frac = lm.prefix_verdict(gens, refs, min_prefix_match=0.6)
    assert not ok and frac == pytest.approx(0.5)
    assert msg == (
        "prefix match 0.500 < min_prefix_match 0.6 vs the baseline (mean share of each baseline generation "
        "reproduced before the first departure)"
    )
    assert lm.prefix_verdict(refs, refs, min_prefix_match=1.0)[0]
    with pytest.raises(ValueError, match="2 generations cannot be compared with 3"):
        lm.prefix_match(gens[:2], refs)


def test_a_kv_cache_step_whose_file_changed_is_not_loaded(tmp_path):
    from deploycheck.formats import lm_kv

    art = tmp_path / "model.onnx"
    assert lm_kv.kv_path(str(art)) == str(tmp_path / "model.kv.onnx")
    with pytest.raises(FileNotFoundError, match="no KV-cache step model.kv.onnx next to the artifact"):
        lm_kv.load_step(str(art), fmt="onnx", info={"sha256": "0" * 64})
    (tmp_path / "model.kv.onnx").write_bytes(b"not the file the manifest hashed")
    with pytest.raises(ValueError, match="has sha256 .*, its manifest says 000000000000…: a changed or corrupted file"):
        lm_kv.load_step(str(art), fmt="onnx", info={"sha256": "0" * 64})
    # the manifest is data: a layout that is not a cache shape is refused before anything is allocated
    with pytest.raises(ValueError, match="is not a cache shape and dtype"):
        lm_kv.empty_cache({"shape": [2, 1, 4, 1 << 30, 32], "dtype": "float32"})
    with pytest.raises(ValueError, match="is not a cache shape and dtype"):
        lm_kv.empty_cache({"shape": [2, 1, 4, 8, 32], "dtype": "Tensor"})


def test_generation_verdict_names_the_first_departing_position_with_decoded_text():
    ref_p, ref_d, _ = _counting_model()
    bad_p, bad_d, _ = _counting_model(stumble_at=4)
    prompts = [[1], [2, 3], [7, 8, 9]]
    refs = [lm.greedy(ref_p, ref_d, p, new_tokens=4) for p in prompts]
    gens = [lm.greedy(bad_p, bad_d, p, new_tokens=4) for p in prompts]
    assert refs[0] == [2, 3, 4, 5] and gens[0] == [2, 3, 4, 0]
    ok, msg, deps = lm.generation_verdict(
        gens,
        refs,
        min_exact_match=0.9,
        against="the baseline",
        prompts=["a", "bc", "hij"],
        decode=lambda ids: "".join("abcdefghij"[i] for i in ids),
    )
    assert not ok
    assert [(d.prompt, d.position) for d in deps] == [(0, 3), (1, 2), (2, 1)]
    assert msg.splitlines() == [
        "greedy exact match 0/3 = 0.000 < min_exact_match 0.9 vs the baseline; first departure: prompt 0 at new token 3",
        "  prompt 0 'a': departs at new token 3 after 'cde': got 'a', the baseline 'f'",
        "  prompt 1 'bc': departs at new token 2 after 'ef': got 'aa', the baseline 'gh'",
        "  prompt 2 'hij': departs at new token 1 after 'a': got 'aaa', the baseline 'bcd'",
    ]
    ok, msg, _ = lm.generation_verdict(refs, refs, min_exact_match=1.0, against="the baseline")
    assert ok and msg == "greedy exact match 3/3 = 1.000 >= min_exact_match 1 vs the baseline"
    assert lm.exact_match_rate(gens[:1] + refs[1:], refs) == pytest.approx(2 / 3)


# --- the checks on the example model, through pytest ----------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
LM_SPEC = """\
deploycheck: 1
name: lm
model:
  hf: {{path: {root}/specs/models/tiny_lm, task: causal-lm}}
  inputs: {{shape: [1, 2, 64], dtype: int64, dynamic: {{0: batch, 2: {{name: seq, min: 4, max: 64}}}}}}
data:
  source: text:{root}/specs/data/tiny_lm_heldout.txt
  split: {{test_fraction: 0.25, seed: 0}}
  preprocess: [{{tokenize: {{max_length: 64}}}}]
  batch_size: 16
metric: token_agreement
generation: {{prompts: prompts.txt, new_tokens: 6}}
formats: [export]
latency: {{warmup: 1, min_rounds: 5, max_time_s: 0.3, round_ms: 0.2}}
snapshot: {{enabled: false}}
thresholds:
  outputs: {{atol: 1.0e-4, rtol: 1.0e-3}}
  metric: {{max_drop: 1.0}}
  perplexity: {{max_relative_increase: 0.01}}
  next_token: {{min_top1: 0.99, max_mean_kl: 1.0e-4}}
  generation: {{max_prefill_ratio: 1.6, max_decode_ratio: 1.6, max_peak_memory_ratio: 1.6}}
variants:
  baseline: {{}}
  faulty:                                   # one layer's weights scaled: a bad conversion
    custom: {{callable: 'lmfaults:scale', kwargs: {{layer: lm.model.layers.1.mlp.down_proj, factor: 1.6}}}}
  pinned:                                   # the baseline, exported with the sequence length fixed at 64
    formats: [{{export: {{dynamic_seq: false}}}}]
  heavy:                                    # two faults: one layer 64x wider (zeros: the same outputs, more
    steps:                                  # memory and time), and a KV-cache step that ignores the past
      - custom: {{callable: 'lmfaults:widen', kwargs: {{layer: lm.model.layers.1.mlp.down_proj, factor: 64}}}}
      - custom: {{callable: 'lmfaults:forget_past'}}
    thresholds:                             # measured 1.7x per decode step (a d=128 model is overhead-bound)
      generation: {{max_decode_ratio: 1.25}}
"""

LM_FAULTS = """
import torch

def scale(model, ctx, layer, factor):
    with torch.no_grad():
        dict(model.named_modules())[layer].weight.mul_(factor)
    return model


def forget_past(model, ctx):
    model.lm.forget_past = True  # read by the patched KV-cache step (conftest.py)
    return model


class Wide(torch.nn.Module):
    # a linear layer computed factor times wider (the extra rows zero), its first slice returned:
    # the same outputs, factor x the weights to hold and the work to do

    def __init__(self, inner, factor):
        super().__init__()
        w = torch.zeros(inner.out_features * factor, inner.in_features)
        w[: inner.out_features] = inner.weight.detach()
        self.wide = torch.nn.Linear(inner.in_features, inner.out_features * factor, bias=False)
        self.wide.weight = torch.nn.Parameter(w, requires_grad=False)
        self.n = inner.out_features

    def forward(self, x):
        return self.wide(x)[..., : self.n]


def _through_dynamic_cache(module, args, kwargs, output):
    # a stand-in for per-token activation scales: one decode step through transformers' own
    # (dynamic) cache answers differently from the whole sequence recomputed; the saved KV step
    # (a static cache) and the one-tensor artifact are untouched
    from transformers import DynamicCache

    ids = kwargs.get("input_ids")
    if isinstance(kwargs.get("past_key_values"), DynamicCache) and ids is not None and ids.shape[1] == 1:
        output.logits[..., 5] += 100.0
    return output


def path_dependent(model, ctx):
    model.lm.register_forward_hook(_through_dynamic_cache, with_kwargs=True)
    return model


def widen(model, ctx, layer, factor):
    parent, _, name = layer.rpartition(".")
    mod = dict(model.named_modules())[parent]
    setattr(mod, name, Wide(getattr(mod, name), factor))
    return model
"""

LM_CONFTEST = """
import torch

import deploycheck.formats.lm_kv as kv

_forward = kv.KVStep.forward


def forward(self, input_ids, cache_position, past_keys, past_values):
    # an exporter bug in cache handling: the step's past keys and values never reach attention
    if getattr(self.lm, "forget_past", False):
        past_keys, past_values = torch.zeros_like(past_keys), torch.zeros_like(past_values)
    return _forward(self, input_ids, cache_position, past_keys, past_values)


kv.KVStep.forward = forward
"""


@pytest.fixture(scope="module")
def lm_run(lm_project):
    _, stdout, recs = lm_project
    return stdout, recs


def _lm_pytest(d, spec: str, *args: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", spec, "-rA"]
    cmd += [f"--deploycheck-run-dir={d / 'run'}", f"--deploycheck-cache-dir={d / 'cache'}", *args]
    return subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def lm_project(tmp_path_factory):
    """One inner pytest run over the example LM: baseline, a fault in one layer, a pinned export."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install 'deploycheck[hf]'")
    import json

    d = tmp_path_factory.mktemp("lm")
    (d / "lm.yaml").write_text(LM_SPEC.format(root=ROOT))
    (d / "lmfaults.py").write_text(LM_FAULTS)
    (d / "conftest.py").write_text(LM_CONFTEST)
    prompts = (ROOT / "specs" / "data" / "tiny_lm_prompts.txt").read_text().splitlines()[:6]
    (d / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (d / "pytest.ini").write_text("[pytest]\n")
    out = _lm_pytest(d, "lm.yaml")
    doc = json.loads((d / "reports" / "deploycheck.json").read_text())
    recs = {(r["variant"], r["format"], r["check"]): r for r in doc["records"]}
    return d, out.stdout, recs


def test_the_baseline_passes_every_lm_check(lm_run):
    _, recs = lm_run
    for check in (
        "perplexity",
        "next_token",
        "generation",
        "tokenizer",
        "outputs",
        "load",
    ):
        assert recs[("baseline", "export", check)]["status"] == "passed", recs[("baseline", "export", check)]
    speed = recs[("baseline", "export", "generation_speed")]  # the baseline is what the ratios compare with
    assert speed["status"] == "not gated" and speed["formula"].endswith(
        "the baseline is the reference of max_prefill_ratio and max_decode_ratio: nothing to gate"
    ), speed
    memory = recs[("baseline", "export", "generation_memory")]  # only max_peak_memory_ratio is set
    assert memory["status"] == "not gated" and memory["formula"].endswith(
        "no threshold set (the baseline is the reference of max_peak_memory_ratio; thresholds.generation: "
        "max_peak_memory_mb)"
    ), memory
    gen = recs[("baseline", "export", "generation")]["formula"]
    assert gen == (
        "greedy exact match 6/6 = 1.000 >= min_exact_match_in_memory 1 vs the in-memory baseline "
        "(6 prompts × up to 6 new tokens, 36 generated through the reloaded export artifact's KV-cache step "
        "(static cache, prefill then one token per step))"
    )
    assert recs[("baseline", "export", "generation")]["details"]["path"] == "kv-cache"
    speed = recs[("baseline", "export", "generation_speed")]
    assert (
        speed["formula"].startswith("prefill ")
        and " tokens/s through the reloaded export artifact's KV-cache" in (speed["formula"])
    )
    assert speed["details"]["decode_tokens_per_s"] > 0 and speed["details"]["prefill_ms"] > 0
    mem = recs[("baseline", "export", "generation_memory")]
    assert mem["formula"].startswith("peak memory of the generation ") and "VmHWM" in mem["formula"]
    assert mem["details"]["peak_mb"] > 0
    tok = recs[("baseline", "export", "tokenizer")]["formula"]
    assert tok.startswith("70 of 70 texts tokenize to the same ids with the tokenizer shipped next to the artifact")


def test_a_fault_in_one_layer_fails_perplexity_kl_and_generation(lm_run):
    _, recs = lm_run
    ppl = recs[("faulty", "export", "perplexity")]
    assert ppl["status"] == "failed"
    assert ppl["details"]["perplexity"] > ppl["details"]["baseline"] * 1.01
    assert " > baseline " in ppl["message"] and "× (1 + max_relative_increase 0.01) = " in ppl["message"]
    nt = recs[("faulty", "export", "next_token")]
    assert nt["status"] == "failed" and nt["details"]["mean_kl"] > 1e-4
    assert "nats > max_mean_kl 0.0001" in nt["message"]
    # both name the damaged layer first, in the export artifact's own layers (never the whole model)
    for rec in (ppl, nt):
        div = rec["details"]["divergence"]
        assert div["first"] == "lm.model.layers.1.mlp.down_proj", div
        assert (
            "  where: the reloaded export artifact first departs from the baseline at module "
            "'lm.model.layers.1.mlp.down_proj', in block 'lm.model.layers.1': the block's next-token KL "
            "through the baseline's final norm and lm_head is " in rec["message"]
        )
        # the blocks are ranked by what these checks gate: next-token KL (nats), block 0 below the limit
        assert div["measure"] == "next-token KL" and div["block"] == "lm.model.layers.1"
        kl = {r["module"]: r["kl"] for r in div["rows"] if r["kl"] is not None}
        assert sorted(kl) == ["lm.model.layers.0", "lm.model.layers.1"], kl
        assert kl["lm.model.layers.0"] <= div["limit"] < kl["lm.model.layers.1"]
        assert div["limit"] == pytest.approx(max(1e-4, 0.1 * div["final_kl"]))
        assert not any(r["module"] in ("lm", "lm.model", "lm.model.rotary_emb") for r in div["rows"])
    gen = recs[("faulty", "export", "generation")]
    assert gen["status"] == "failed"
    first = gen["message"].splitlines()[0]
    deps = gen["details"]["the baseline"]["departures"]
    assert deps, gen
    d0 = deps[0]
    # the message names the first departing prompt and position, then each with its decoded text
    assert f"vs the baseline; first departure: prompt {d0['prompt']} at new token {d0['position']}" in first
    assert (
        f"  prompt {d0['prompt']} '" in gen["message"]
        and f"departs at new token {d0['position']} after " in gen["message"]
    )
    # the artifact still generates what its own in-memory model generates: not shown as a failure
    assert gen["details"]["the in-memory variant"]["exact_match"] == 1.0
    assert "in-memory variant" not in gen["message"]


def test_an_export_that_specialises_the_sequence_length_is_caught(lm_run):
    _, recs = lm_run
    # held-out texts are padded to the example's 64 tokens: those checks alone cannot see it
    assert recs[("pinned", "export", "perplexity")]["status"] == "passed"
    gen = recs[("pinned", "export", "generation")]
    assert gen["status"] == "failed"
    assert gen["message"].startswith(
        "greedy generation through the reloaded export artifact's KV-cache step (static cache, prefill then one "
        "token per step) failed: "
    )
    assert "was the sequence length specialised at export?" in gen["message"]
    # nothing generated, nothing timed: the speed gate fails instead of passing unmeasured
    speed = recs[("pinned", "export", "generation_speed")]
    assert speed["status"] == "failed"
    assert speed["message"].startswith("not measured: the generation through the reloaded export artifact failed: ")


def test_a_kv_cache_step_that_ignores_the_past_fails_generation(lm_run):
    _, recs = lm_run
    # the one-tensor artifact is right: the held-out texts cannot see a broken cache
    assert recs[("heavy", "export", "perplexity")]["status"] == "passed"
    gen = recs[("heavy", "export", "generation")]
    assert gen["status"] == "failed"
    assert gen["details"]["path"] == "kv-cache"
    assert gen["details"]["the in-memory variant"]["exact_match"] < 1.0
    first = gen["message"].splitlines()[0]
    assert " < min_exact_match_in_memory 1 vs the in-memory variant" in gen["message"]
    assert first.endswith(
        "generated through the reloaded export artifact's KV-cache step (static cache, prefill then one token per step))"
    )


def test_a_wider_layer_fails_the_decode_and_memory_gates(lm_run):
    _, recs = lm_run
    # the same outputs: the held-out texts cannot see it
    assert recs[("heavy", "export", "perplexity")]["status"] == "passed"
    speed = recs[("heavy", "export", "generation_speed")]
    assert speed["status"] == "failed", speed
    assert speed["details"]["decode_ratio"] > 1.25
    # the decode ratio fails (the prefill ratio, at the spec's 1.6, may fail too: it is listed first)
    assert "decode time ratio " in speed["message"] and "> max_decode_ratio 1.25 × control " in speed["message"]
    mem = recs[("heavy", "export", "generation_memory")]
    assert mem["status"] == "failed", mem
    assert mem["details"]["ratio"] > 1.6
    assert mem["message"].startswith("peak memory ratio ") and "> max_peak_memory_ratio 1.6" in mem["message"]
    # the unchanged-size variants pass the ratio gates measured the same way
    assert recs[("faulty", "export", "generation_memory")]["status"] == "passed"


def test_a_shipped_kv_cache_step_changed_after_a_cached_pass_fails(lm_project):
    """Issue 32: a cached result covers every file the check reads. The baseline's export, its
    manifest and its KV-cache step are shipped as files made elsewhere (``artifact:``) and pass;
    then one step is swapped for another variant's, one truncated, one deleted: each fails, while
    the untouched copy passes from the cache."""
    import fnmatch
    import json
    import shutil

    d, _, _ = lm_project
    base = next((d / "run").rglob("baseline/**/model.kv.pt2")).parent
    # another variant's step (one that ignores the past), kept before the next session tidies run/
    (d / "dist").mkdir()
    shutil.copy(next((d / "run").rglob("heavy/**/model.kv.pt2")), d / "dist" / "other.kv.pt2")
    names = ["same", "swapped", "truncated", "deleted"]
    for n in names:
        (d / "dist" / n).mkdir(parents=True)
        for f in ("model.pt2", "model.pt2.manifest.json", "model.kv.pt2"):
            shutil.copy(base / f, d / "dist" / n / f)
        if (base / "tokenizer").is_dir():
            shutil.copytree(base / "tokenizer", d / "dist" / n / "tokenizer")
    head = LM_SPEC.format(root=ROOT).split("variants:")[0]
    shipped = "".join(f"  {n}: {{artifact: {{path: dist/{n}/model.pt2}}}}\n" for n in names)
    select = ("-k", "not baseline and (load or generation) and not speed and not memory")
    # the first session passes one copy: its results are cached under the files' contents, which
    # every copy shares until it is changed (a result key never holds a path)
    (d / "shipped.yaml").write_text(head + "variants:\n  baseline: {}\n" + shipped.splitlines(True)[0])
    first = _lm_pytest(d, "shipped.yaml", *select)
    assert first.returncode == 0, first.stdout[-3000:]
    (d / "shipped.yaml").write_text(head + "variants:\n  baseline: {}\n" + shipped)
    shutil.copy(d / "dist" / "other.kv.pt2", d / "dist" / "swapped" / "model.kv.pt2")
    kv = d / "dist" / "truncated" / "model.kv.pt2"
    kv.write_bytes(kv.read_bytes()[: kv.stat().st_size // 2])
    (d / "dist" / "deleted" / "model.kv.pt2").unlink()

    second = _lm_pytest(d, "shipped.yaml", *select)
    out = second.stdout
    assert second.returncode == 1, out[-3000:]
    assert "PASSED shipped.yaml::lm::same::export::load" in out and "ok (cached)" in out, out[-3000:]
    recs = {
        r["variant"]: r
        for r in json.loads((d / "reports" / "deploycheck.json").read_text())["records"]
        if r["check"] == "generation"
    }
    assert recs["same"]["status"] == "passed"
    why = {
        "swapped": "has sha256 *, its manifest says *: a changed or corrupted file",
        "truncated": "has sha256 *, its manifest says *: a changed or corrupted file",
        "deleted": "FileNotFoundError: no KV-cache step model.kv.pt2 next to the artifact",
    }
    for n, reason in why.items():
        assert f"FAILED shipped.yaml::lm::{n}::export::generation" in out, out[-3000:]
        assert recs[n]["status"] == "failed"
        assert fnmatch.fnmatch(
            recs[n]["message"],
            "greedy generation through the reloaded export artifact's KV-cache step (static cache, prefill then "
            f"one token per step) failed: the KV-cache step failed to load: *{reason}",
        ), recs[n]["message"]


def test_the_perplexity_ratio_interval_resamples_texts_and_holds_the_point_ratio():
    """Two texts: the variant is worse on one only. The point ratio is exp of the mean NLL gap per
    token; the interval, over resampled texts, runs from no change (both draws the good text) to
    the bad text's own gap."""
    ids = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]])
    mask = torch.ones(2, 4)
    base = torch.zeros(2, 4, 2)  # uniform: NLL log 2 per token
    var = base.clone()
    var[1] = torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # text 1: the wrong token favoured
    nv, count = lm.text_nll(var, ids, mask)
    nb, _ = lm.text_nll(base, ids, mask)
    assert list(count) == [3.0, 3.0] and nb[0] == pytest.approx(3 * math.log(2))
    gap = nv[1] - nb[1]
    ratio, lo, hi = lm.perplexity_ratio_ci(var, base, ids, mask)
    assert ratio == pytest.approx(math.exp(gap / 6))
    assert ratio == pytest.approx(lm.perplexity(var, ids, mask) / lm.perplexity(base, ids, mask))
    assert lo == pytest.approx(1.0) and hi == pytest.approx(math.exp(gap / 3))


def test_the_size_item_counts_the_kv_cache_step_that_ships_with_the_artifact(lm_run):
    """Generation loads model.kv.pt2 (a second copy of the weights): what ships is both files."""
    _, recs = lm_run
    size = recs[("baseline", "export", "size")]
    files = size["details"]["files"]
    assert sorted(files) == ["model.kv.pt2", "model.pt2"]
    assert size["details"]["size_mb"] == pytest.approx(sum(files.values()) / 1e6)
    assert f"(model.pt2 {files['model.pt2'] / 1e6:.4g} MB + model.kv.pt2 " in size["formula"]


# --- chat-template prompts ----------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_jsonl_prompts_take_multi_line_text_and_chat_messages_and_name_a_bad_line(tmp_path):
    from deploycheck.data.sources import read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"prompt": "first line\\nsecond line"}\n\n'
        '{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}\n'
    )
    assert read_prompts(str(f)) == [
        "first line\nsecond line",
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ]
    for line, why in [
        ('{"prompt": "a"', "p.jsonl:1: not a JSON object ("),
        ('{"messages": [{"role": "user"}]}', 'p.jsonl:1: expected {"prompt": "text"} or {"messages": [{"role": '),
        ('{"prompt": " "}', "p.jsonl:1: the prompt is empty"),
        ('["hi"]', "p.jsonl:1: expected "),
    ]:
        f.write_text(line + "\n")
        with pytest.raises(ValueError) as e:
            read_prompts(str(f))
        assert str(e.value).startswith(why), str(e.value)


def test_chat_messages_are_rendered_with_the_tokenizers_own_template(tmp_path):
    import json
    import shutil

    from deploycheck.hf import prompt_ids, token_ids

    d = tmp_path / "tok"
    shutil.copytree(ROOT / "specs" / "models" / "tiny_lm", d)
    msgs = [{"role": "user", "content": "the cat sat"}]
    with pytest.raises(ValueError, match="prompt 2 is chat messages, but the tokenizer in .* has no chat template"):
        prompt_ids(["plain", msgs], path=str(d))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))
    texts, ids = prompt_ids(["plain", msgs], path=str(d))
    assert texts == ["plain", "user: the cat sat\nassistant:"]
    assert ids[0] == token_ids(["plain"], path=str(d))[0]
    # the template's text, tokenized without adding special tokens a second time
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert ids[1] == tok(texts[1], add_special_tokens=False)["input_ids"]


def test_a_chat_prompt_file_drives_generation_through_the_artifact(tmp_path):
    """A .jsonl prompt file with chat messages and a multi-line prompt, through the real path:
    rendered with the model folder's chat template, generated by the reloaded export's KV step."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install 'deploycheck[hf]'")
    import json
    import shutil

    d = tmp_path
    shutil.copytree(ROOT / "specs" / "models" / "tiny_lm", d / "chatlm")
    cfg = json.loads((d / "chatlm" / "tokenizer_config.json").read_text())
    (d / "chatlm" / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))
    (d / "prompts.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "the little dog"}]}\n{"prompt": "once upon\\na time"}\n'
    )
    spec = LM_SPEC.format(root=ROOT).replace(f"{ROOT}/specs/models/tiny_lm", str(d / "chatlm"))
    spec = spec.replace("prompts: prompts.txt", "prompts: prompts.jsonl")
    (d / "lm.yaml").write_text(spec.split("  faulty:")[0])
    (d / "pytest.ini").write_text("[pytest]\n")
    out = _lm_pytest(d, "lm.yaml", "-k", "generation and not speed and not memory")
    assert "1 passed" in out.stdout, out.stdout[-3000:]
    rec = next(
        r for r in json.loads((d / "reports" / "deploycheck.json").read_text())["records"] if r["check"] == "generation"
    )
    assert rec["status"] == "passed"
    assert rec["formula"].startswith("greedy exact match 2/2 = 1.000 >= min_exact_match_in_memory 1")


def test_an_in_memory_variant_that_answers_differently_by_path_is_not_blamed_on_the_file(tmp_path):
    """Blame where it belongs: the in-memory variant generates differently through its KV cache and
    by recomputing the sequence (per-token activation scales do this); the file, which generates what
    the baseline does, is not failed for departing from one of those paths, and the report says so."""
    pytest.importorskip("transformers", reason="needs the hf extra: pip install 'deploycheck[hf]'")
    import json

    d = tmp_path
    spec = LM_SPEC.format(root=ROOT).split("  faulty:")[0]
    spec += "  bypath:\n    custom: {callable: 'lmfaults:path_dependent'}\n"
    (d / "lm.yaml").write_text(spec)
    (d / "lmfaults.py").write_text(LM_FAULTS)
    prompts = (ROOT / "specs" / "data" / "tiny_lm_prompts.txt").read_text().splitlines()[:3]
    (d / "prompts.txt").write_text("\n".join(prompts) + "\n")
    (d / "pytest.ini").write_text("[pytest]\n")
    out = _lm_pytest(d, "lm.yaml", "-k", "bypath and generation and not speed and not memory")
    rec = next(
        r for r in json.loads((d / "reports" / "deploycheck.json").read_text())["records"] if r["check"] == "generation"
    )
    assert rec["status"] == "passed", out.stdout[-3000:]
    assert rec["details"]["in_memory_path_dependent_prompts"] == [0, 1, 2]
    assert rec["details"]["the in-memory variant"]["exact_match"] is None
    assert rec["formula"].startswith("greedy exact match 3/3 = 1.000 >= min_exact_match 1 vs the baseline")
    assert rec["message"] == (
        "  note: the in-memory variant itself generates differently through its KV cache and by recomputing "
        "the sequence on 3 of 3 prompts (0, 1, 2): its recipe makes the result depend on the path (per-token "
        "activation scales), so those prompts are not held against the file; nothing is left to compare the "
        "file with its in-memory variant"
    )
