"""Train the example digits models deterministically and write their weights next to the specs.

    python -m examples.train_digits

The data comes through deploycheck's own loader from the spec itself, so the training split
is exactly the complement of the spec's evaluation split.
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(spec_file: str, epochs: int = 40, lr: float = 3e-3, seed: int = 0) -> float:
    import dataclasses

    from deploycheck import data as dc_data
    from deploycheck.loading import build_baseline, import_callable, search_dirs
    from deploycheck.spec import parse_file

    spec = parse_file(os.path.join(ROOT, spec_file))
    ds = dc_data.load(spec)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = import_callable(spec.model.factory, search_dirs(spec))(**spec.model.kwargs)
    x, y = ds.train_tensors()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xt, yt = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    out = os.path.join(os.path.dirname(spec.path), spec.model.weights)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    # Sanity: the spec's own loader reads the file back.
    build_baseline(dataclasses.replace(spec))
    print(f"{spec_file}: held-out accuracy {acc:.4f} -> {os.path.relpath(out, ROOT)}")
    return acc


if __name__ == "__main__":
    for f in sys.argv[1:] or ["specs/digits_mlp.yaml", "specs/digits_cnn.yaml"]:
        train(f)
