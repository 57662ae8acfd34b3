"""Make the files the example spec gates, the way a team's own pipeline would: plain torch APIs,
no deploycheck. The digits MLP (the weights of specs/digits_mlp.yaml) exported to ONNX with the
dynamo exporter and traced to TorchScript, both with a dynamic batch dimension.

    python examples/bring_your_own/make_artifacts.py [--out examples/bring_your_own/dist]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "dist"))
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    from safetensors.torch import load_file

    from examples.digits import MLP

    model = MLP(hidden=128)
    model.load_state_dict(load_file(os.path.join(ROOT, "specs", "models", "digits_mlp.safetensors")))
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    x = torch.rand(2, 64)
    torch.jit.trace(model, x).save(os.path.join(args.out, "model.ts"))
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()):
        prog = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: batch},), external_data=False)
    prog.save(os.path.join(args.out, "model.onnx"))
    for name in ("model.ts", "model.onnx"):
        print(
            f"wrote {os.path.relpath(os.path.join(args.out, name))} ({os.path.getsize(os.path.join(args.out, name))} bytes)"
        )


if __name__ == "__main__":
    main()
