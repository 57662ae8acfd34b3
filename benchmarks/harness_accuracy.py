"""deploycheck's median latency vs torch.utils.benchmark.Timer's on the same models.

python benchmarks/harness_accuracy.py [--write]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.utils.benchmark as tb
from _common import ROOT, machine_line, write_section

sys.path.insert(0, ROOT)


def models():
    from safetensors.torch import load_file

    from examples.digits import CNN, MLP, TinyMLP

    mlp = MLP()
    mlp.load_state_dict(load_file(os.path.join(ROOT, "specs", "models", "digits_mlp.safetensors")))
    cnn = CNN()
    cnn.load_state_dict(load_file(os.path.join(ROOT, "specs", "models", "digits_cnn.safetensors")))
    q = torch.ao.quantization.quantize_dynamic(mlp, {torch.nn.Linear}, dtype=torch.qint8)
    for name, m, x in (
        ("MLP fp32, batch 1", mlp, torch.rand(1, 64)),
        ("MLP fp32, batch 64", mlp, torch.rand(64, 64)),
        ("MLP dynamic int8, batch 1", q, torch.rand(1, 64)),
        ("TinyMLP, batch 1", TinyMLP(), torch.rand(1, 64)),
        ("CNN fp32, batch 1", cnn, torch.rand(1, 1, 8, 8)),
        ("CNN fp32, batch 64", cnn, torch.rand(64, 1, 8, 8)),
    ):
        yield name, torch.jit.trace(m.eval(), x), x


def main() -> None:
    from tabulate import tabulate

    from deploycheck.timing import measure

    torch.set_num_threads(1)
    rows = []
    with torch.inference_mode():
        for name, m, x in models():
            ours, n = measure(lambda m=m, x=x: m(x), warmup=10, rounds=60, round_s=1e-3)
            timer = tb.Timer("m(x)", globals={"m": m, "x": x}, num_threads=1).blocked_autorange(min_run_time=1.0)
            ref = timer.median * 1e3
            rows.append([name, f"{ours['p50_ms']:.4f}", f"{ref:.4f}", f"{(ours['p50_ms'] / ref - 1) * 100:+.1f}%", n])
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"Measured on {machine_line()}, 1 thread; `python benchmarks/harness_accuracy.py --write`.",
            "",
            tabulate(
                rows,
                headers=["model", "deploycheck p50 ms", "torch Timer median ms", "difference", "calls per round"],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    )
    print(text)
    if "--write" in sys.argv:
        write_section("harness", text)


if __name__ == "__main__":
    main()
