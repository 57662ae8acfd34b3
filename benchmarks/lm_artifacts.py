"""Prefill and decode through the saved KV-cache step of the example causal LM, per format and
recipe: what the `generation_speed` and `generation_memory` checks see in the fresh worker.

    python benchmarks/lm_artifacts.py [--write] [--rounds N] [--executorch]

Each recipe's KV-cache step (:mod:`deploycheck.formats.lm_kv`) is saved as torch.export
(``.pt2``) and ONNX, reloaded (``torch.export.load``, onnxruntime), and timed interleaved: each
round times every (recipe, format) once in a shuffled order (the prefill of a 32-token prompt,
then one decode step from its cache, repeated), so load slows all alike; ratios are to fp32 in
the same format and round. ``--executorch`` adds the step lowered to an XNNPACK ``.pte`` (needs
``pip install executorch``; lowering takes minutes). Generation through each artifact is
compared with the in-memory model's. One thread.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time
import warnings

from _common import ROOT, machine_line, write_section

sys.path.insert(0, ROOT)

MODEL = os.path.join(ROOT, "specs", "models", "tiny_lm")
PROMPTS = os.path.join(ROOT, "specs", "data", "tiny_lm_prompts.txt")


def recipes():
    """fp32 and the two weight-only recipes the example spec ships, from lm_recipes' table."""
    import lm_recipes

    table = lm_recipes.recipes()
    return {name: table[name][1] for name in ("fp32", "int8 weight-only", "int4 weight-only (intx)")}


def executorch_step(step, args, dyn, path: str):
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    ep = torch.export.export(step, args, dynamic_shapes=dyn, strict=False)
    prog = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(path, "wb") as fh:
        fh.write(prog.buffer)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda ids, pos, k, v: tuple(method.execute([ids, pos, k, v]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--executorch", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch
    from transformers import AutoTokenizer

    from deploycheck import lm
    from deploycheck.formats import lm_kv
    from deploycheck.hf import causal_lm

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL, local_files_only=True)
    prompts = open(PROMPTS).read().split("\n")[:-1]
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    long_prompt = tok("".join(prompts))["input_ids"][:32]
    base = causal_lm(MODEL)
    tmp = tempfile.mkdtemp(prefix="lm_artifacts-")
    steps: dict[tuple[str, str], tuple] = {}
    rows: dict[tuple[str, str], dict] = {}
    errors: list[str] = []
    for name, apply in recipes().items():
        m = apply(copy.deepcopy(base)).eval()
        pre, dec = lm.hf_steps(m.lm)
        ref = [lm.greedy(pre, dec, p, new_tokens=8) for p in prompt_ids]
        fmts = ["export", "onnx"] + (["executorch"] if args.executorch else [])
        for fmt in fmts:
            path = os.path.join(tmp, f"{name.split()[0]}.{fmt}")
            t0 = time.perf_counter()
            try:
                if fmt == "executorch":
                    layout = lm_kv.cache_layout(m.lm, 64)
                    seq = torch.export.Dim("seq", min=1, max=64)
                    run = executorch_step(
                        lm_kv.KVStep(m.lm).eval(),
                        lm_kv.example_args(layout),
                        ({1: seq}, {0: seq}, None, None),
                        path + ".pte",
                    )
                    size = os.path.getsize(path + ".pte")
                else:
                    art = path + (".pt2" if fmt == "export" else ".onnx")
                    info = lm_kv.save_step(m, art, fmt=fmt, inputs=None, dynamic_seq=True, max_len=64)
                    if "error" in info:
                        raise RuntimeError(info["error"])
                    run = lm_kv.load_step(art, fmt=fmt, info=info)
                    layout, size = info, info["size"]
            except Exception as e:  # a format that does not take a recipe is a finding
                errors.append(f"- {name} as {fmt}: `{type(e).__name__}: {str(e).splitlines()[0][:160]}`")
                print(errors[-1], flush=True)
                continue
            save_s = time.perf_counter() - t0
            p, d = lm_kv.cached_steps(run, layout)
            got = [lm.greedy(p, d, q, new_tokens=8) for q in prompt_ids]
            steps[(name, fmt)] = (p, d)
            rows[(name, fmt)] = {
                "save_s": save_s,
                "mb": size / 1e6,
                "equal": sum(a == b for a, b in zip(got, ref, strict=True)) / len(ref),
            }
            print(name, fmt, rows[(name, fmt)], flush=True)

    def prepared(pd):
        p, d = pd
        logits, state = p(long_prompt)
        t = int(logits.argmax())
        return (lambda: p(long_prompt)), (lambda: d(t, state))

    calls = {k: prepared(v) for k, v in steps.items()}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in calls}

    def once(pf):
        pre, dec = pf
        t0 = time.perf_counter()
        pre()
        t1 = time.perf_counter()
        for _ in range(8):
            dec()
        return t1 - t0, (time.perf_counter() - t1) / 8

    with torch.inference_mode():
        for c in calls.values():
            once(c)
        rng = random.Random(0)
        for _ in range(args.rounds):
            order = list(calls)
            rng.shuffle(order)
            for k in order:
                times[k].append(once(calls[k]))
    for (name, fmt), ts in times.items():
        b = times.get(("fp32", fmt))
        r = rows[(name, fmt)]
        r["prefill_ms"] = statistics.median(t[0] for t in ts) * 1e3
        r["decode_ms"] = statistics.median(t[1] for t in ts) * 1e3
        if b:
            r["prefill_ratio"] = statistics.median(t[0] / u[0] for t, u in zip(ts, b, strict=True))
            r["decode_ratio"] = statistics.median(t[1] / u[1] for t, u in zip(ts, b, strict=True))

    from tabulate import tabulate

    def f(x, spec):
        return format(x, spec) if x is not None else "-"

    table = [
        [
            fmt,
            name,
            f(r["mb"], ".2f"),
            f(r["save_s"], ".1f"),
            f(r["equal"], ".3f"),
            f(r["prefill_ms"], ".3f"),
            f(r.get("prefill_ratio"), ".2f"),
            f(r["decode_ms"], ".3f"),
            f(1e3 / r["decode_ms"], ".0f"),
            f(r.get("decode_ratio"), ".2f"),
        ]
        for (name, fmt), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0] != "fp32", kv[0][0]))
    ]
    out = [
        f"Measured on {machine_line()}, torch threads 1, a machine shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f}); `python benchmarks/lm_artifacts.py --write --rounds {args.rounds}"
        f"{' --executorch' if args.executorch else ''}`.",
        "",
        "The KV-cache step (static cache of 64 positions, dynamic sequence length) of each recipe, saved, "
        "reloaded and timed interleaved: prefill of a 32-token prompt, then one decode step from its cache; "
        f"median of {args.rounds} rounds, ratio = the recipe's time / fp32's in the same format and round. "
        "`same gen` = share of the 16 prompts whose 8 greedy tokens through the artifact equal the "
        "in-memory model's (the same recipe). `save s` includes tracing (and lowering, for ExecuTorch).",
        "",
        tabulate(
            table,
            headers=[
                "format",
                "recipe",
                "step MB",
                "save s",
                "same gen",
                "prefill (ms)",
                "prefill ratio",
                "decode step (ms)",
                "decode tok/s",
                "decode ratio",
            ],
            tablefmt="github",
        ),
        "",
    ]
    out += errors
    text = "\n".join(out)
    print(text)
    if args.write:
        write_section("lm-artifacts", text)


if __name__ == "__main__":
    main()
