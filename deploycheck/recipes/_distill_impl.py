"""Distillation handler: soft targets from the teacher at a temperature, plus the hard labels."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..models import call_factory
from ..protocol import forward_output, rows, take
from . import StepResult


def run(cfg, teacher, ctx) -> StepResult:
    x, y = ctx.data.train_tensors()
    torch.manual_seed(cfg.seed)
    student = call_factory(cfg.student, cfg.student_kwargs, ctx.search)
    optimizers: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    }
    opt = optimizers[cfg.optimizer](student.parameters(), lr=cfg.lr)
    teacher.eval()
    with torch.no_grad():
        soft_all = forward_output(teacher, x, ctx.spec.metric.output).float()
    T = cfg.temperature
    g = torch.Generator().manual_seed(cfg.seed)
    labelled = y is not None and y.dtype in (torch.int64, torch.int32)
    student.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(rows(x), generator=g)
        total = 0.0
        for i in range(0, rows(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            out = forward_output(student, take(x, idx), ctx.spec.metric.output)
            if labelled:
                soft = (
                    F.kl_div(F.log_softmax(out / T, 1), F.softmax(soft_all[idx] / T, 1), reduction="batchmean") * T * T
                )
                hard = F.cross_entropy(out, y[idx].long())
                loss = cfg.alpha * soft + (1 - cfg.alpha) * hard
            else:  # regression / embeddings: match the teacher's outputs
                loss = F.mse_loss(out, soft_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch == 0 or (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            ctx.log(f"epoch {epoch + 1}/{cfg.epochs} loss {total / rows(x):.4f}")
    student.eval()
    tp = sum(p.numel() for p in teacher.parameters())
    sp = sum(p.numel() for p in student.parameters())
    return StepResult(
        student,
        f"student {cfg.student} with {sp} parameters ({sp / tp:.1%} of the teacher's {tp})",
        {"teacher_params": tp, "student_params": sp, "param_ratio": sp / tp},
        arch={"factory": cfg.student, "kwargs": dict(cfg.student_kwargs)},
    )
