"""Pruning handlers: torch.nn.utils.prune, made permanent, sparsity measured per layer."""

from __future__ import annotations

import torch
import torch.nn.utils.prune as P

from . import StepResult
from ._select import select


def run(cfg, model, ctx) -> StepResult:
    chosen = select(model, cfg.modules, cfg.skip)
    if cfg.method == "global_l1_unstructured":
        P.global_unstructured([(m, "weight") for _, m in chosen], pruning_method=P.L1Unstructured, amount=cfg.amount)
    else:
        torch.manual_seed(cfg.seed)
        for _, m in chosen:
            if cfg.method == "l1_unstructured":
                P.l1_unstructured(m, "weight", amount=cfg.amount)
            elif cfg.method == "random_unstructured":
                P.random_unstructured(m, "weight", amount=cfg.amount)
            else:
                if cfg.dim >= m.weight.dim() or cfg.dim < -m.weight.dim():
                    raise ValueError(f"dim {cfg.dim} is out of range for {type(m).__name__} weight of shape "
                                     f"{tuple(m.weight.shape)}")
                P.ln_structured(m, "weight", amount=cfg.amount, n=cfg.n, dim=cfg.dim)
    if cfg.finetune:
        _finetune(cfg.finetune, model, ctx)
    for _, m in chosen:
        P.remove(m, "weight")  # permanent: no masks or reparametrization left in the artifact
    layers = {n: 1.0 - float(torch.count_nonzero(m.weight)) / m.weight.numel() for n, m in chosen}
    total = sum(m.weight.numel() for _, m in chosen)
    zeros = sum(m.weight.numel() - int(torch.count_nonzero(m.weight)) for _, m in chosen)
    overall = zeros / total
    return StepResult(model.eval(), f"{cfg.method} amount {cfg.amount:g}: {overall:.1%} of pruned-layer weights are zero",
                      {"sparsity_per_layer": layers, "sparsity_pruned_layers": overall})


def _finetune(ft, model, ctx) -> None:
    """A short fine-tune with the masks in place, so pruned weights stay zero."""
    x, y = ctx.data.train_tensors()
    if y is None:
        raise ValueError("finetune needs labelled training data")
    g = torch.Generator().manual_seed(ft.seed)
    torch.manual_seed(ft.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=ft.lr)
    model.train()
    for epoch in range(ft.epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), ft.batch_size):
            idx = perm[i:i + ft.batch_size]
            opt.zero_grad()
            loss = _loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        ctx.log(f"finetune epoch {epoch + 1}/{ft.epochs} loss {total / len(x):.4f}")
    model.eval()


def _loss(out, y):
    if y.dtype in (torch.int64, torch.int32):
        return torch.nn.functional.cross_entropy(out, y.long())
    return torch.nn.functional.mse_loss(out.reshape(y.shape), y)
