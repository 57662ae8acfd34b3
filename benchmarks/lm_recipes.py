"""Quantization recipes on the example causal LM: accuracy (perplexity, next-token top-1 agreement
and KL vs fp32, greedy exact match) and speed (prefill and decode) on this CPU.

    python benchmarks/lm_recipes.py [--write] [--rounds N]

Every recipe is applied to a fresh copy of ``specs/models/tiny_lm``. Speed is measured
interleaved: each round times every recipe once, in a shuffled order (one prefill of a 32-token
prompt, then 16 decode steps through the KV cache), so a busy machine slows all of them alike;
the table shows each recipe's median per-round ratio to fp32 in the same round. One thread.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time

from _common import ROOT, machine_line, write_section

sys.path.insert(0, ROOT)

MODEL = os.path.join(ROOT, "specs", "models", "tiny_lm")
HELDOUT = os.path.join(ROOT, "specs", "data", "tiny_lm_heldout.txt")
PROMPTS = os.path.join(ROOT, "specs", "data", "tiny_lm_prompts.txt")


def recipes():
    """name -> (what it is, function(model) -> model). Configs as torchao 0.18 provides them for CPU."""
    import torch
    from torchao.prototype.quantization.int4.inference_workflow import (
        Int8DynamicActivationInt4WeightConfig,
        PrototypeInt4WeightOnlyConfig,
    )
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8DynamicActivationIntxWeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerGroup,
        quantize_,
    )

    def q(cfg):
        def apply(m):
            quantize_(m, cfg)
            return m

        return apply

    return {
        "fp32": ("baseline", lambda m: m),
        "fp16": ("model.half()", lambda m: m.half()),
        "bf16": ("model.bfloat16()", lambda m: m.bfloat16()),
        "int8 weight-only": ("Int8WeightOnlyConfig()", q(Int8WeightOnlyConfig())),
        "int4 weight-only (tinygemm CPU)": (
            "PrototypeInt4WeightOnlyConfig(group_size=32) (Int4OpaqueTensor)",
            lambda m: q(PrototypeInt4WeightOnlyConfig(group_size=32))(m.bfloat16()),
        ),
        "int4 weight-only (intx)": (
            "IntxWeightOnlyConfig(torch.int4, PerGroup(32)) (unpacked_to_int8)",
            q(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))),
        ),
        "int8 dyn act + int8 weight": (
            "Int8DynamicActivationInt8WeightConfig()",
            q(Int8DynamicActivationInt8WeightConfig()),
        ),
        "int8 dyn act + int4 weight (da8w4)": (
            "prototype Int8DynamicActivationInt4WeightConfig(group_size=32)",
            q(Int8DynamicActivationInt4WeightConfig(group_size=32)),
        ),
        "int8 dyn act + int4 weight (intx)": (
            "Int8DynamicActivationIntxWeightConfig(torch.int4, PerGroup(32))",
            q(Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32))),
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deploycheck import lm

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(MODEL, local_files_only=True).eval()
    texts = open(HELDOUT).read().split("\n")[:-1]
    prompts = open(PROMPTS).read().split("\n")[:-1]
    enc = tok(texts, return_tensors="pt", padding=True)
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    new_tokens = 8

    def logits(m):
        with torch.inference_mode():
            return m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()

    def gens(m):
        pre, dec = lm.hf_steps(m)
        return [lm.greedy(pre, dec, p, new_tokens=new_tokens) for p in prompt_ids]

    base_logits, base_gens = logits(base), gens(base)
    rows, models, errors = {}, {}, {}
    for name, (what, apply) in recipes().items():
        try:
            m = apply(copy.deepcopy(base)).eval()
            lg = logits(m)
            st = lm.next_token_stats(lg, base_logits, enc["attention_mask"])
            rows[name] = {
                "what": what,
                "ppl": lm.perplexity(lg, enc["input_ids"], enc["attention_mask"]),
                "top1": st["top1"],
                "kl": st["mean_kl"],
                "em": lm.exact_match_rate(gens(m), base_gens),
            }
            models[name] = m
        except Exception as e:  # a recipe that does not run here is a finding, not a crash
            errors[name] = (what, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        print(name, rows.get(name) or errors[name], flush=True)

    # speed: interleaved rounds of prefill (32-token prompt) + 16 decode steps
    prompt = (prompts * 8)[0] + "".join(texts[0])
    ids = tok(prompt)["input_ids"][:32]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in models}

    def once(m):
        pre, dec = lm.hf_steps(m)
        t0 = time.perf_counter()
        logits_, state = pre(ids)
        t1 = time.perf_counter()
        tok_ = int(logits_.argmax())
        for _ in range(16):
            logits_, state = dec(tok_, state)
            tok_ = int(logits_.argmax())
        return t1 - t0, (time.perf_counter() - t1) / 16

    for m in models.values():  # warm-up
        once(m)
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(models)
        rng.shuffle(order)
        for n in order:
            times[n].append(once(models[n]))
    for n, ts in times.items():
        b = times["fp32"]
        rows[n]["prefill_ms"] = statistics.median(t[0] for t in ts) * 1e3
        rows[n]["decode_ms"] = statistics.median(t[1] for t in ts) * 1e3
        rows[n]["prefill_ratio"] = statistics.median(t[0] / u[0] for t, u in zip(ts, b, strict=True))
        rows[n]["decode_ratio"] = statistics.median(t[1] / u[1] for t, u in zip(ts, b, strict=True))

    from tabulate import tabulate

    table = [
        [
            n,
            f"{r['ppl']:.4f}",
            f"{r['top1']:.4f}",
            f"{r['kl']:.2e}",
            f"{r['em']:.3f}",
            f"{r['prefill_ms']:.2f}",
            f"{r['prefill_ratio']:.2f}",
            f"{r['decode_ms']:.2f}",
            f"{r['decode_ratio']:.2f}",
        ]
        for n, r in rows.items()
    ]
    n_params = sum(p.numel() for p in base.parameters())
    out = [
        f"Measured on {machine_line()}, torch threads 1, a machine shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f}); `python benchmarks/lm_recipes.py --write --rounds {args.rounds}`.",
        "",
        f"Model: specs/models/tiny_lm (Llama, 2 layers, d=128, {n_params / 1e6:.2f} M parameters); "
        f"{len(texts)} held-out texts ({int(enc['attention_mask'].sum())} tokens), {len(prompts)} prompts × "
        f"{new_tokens} greedy tokens. Top-1, KL and exact match are against fp32. Speed: median of "
        f"{args.rounds} interleaved rounds; ratio = the recipe's time / fp32's in the same round.",
        "",
        tabulate(
            table,
            headers=[
                "recipe",
                "perplexity",
                "top-1 vs fp32",
                "mean KL (nats)",
                "greedy exact match",
                "prefill 32 tok (ms)",
                "prefill ratio",
                "decode / token (ms)",
                "decode ratio",
            ],
            tablefmt="github",
        ),
        "",
    ]
    out += ["Configs: " + "; ".join(f"{n}: `{r['what']}`" for n, r in rows.items() if n != "fp32") + "."]
    for n, (what, err) in errors.items():
        out.append(f"- {n} (`{what}`) does not run on this CPU: `{err}`")
    text = "\n".join(out)
    print(text)
    if args.write:
        write_section("lm-recipes", text)


if __name__ == "__main__":
    main()
