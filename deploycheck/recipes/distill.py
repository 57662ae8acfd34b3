"""Knowledge distillation of the baseline (teacher) into a smaller student architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..loading import call_factory
from ..protocol import forward_output, rows, take
from ..schema import field, import_path_problem
from . import Recipe, RecipeContext, StepResult


@dataclass(frozen=True)
class DistillConfig(Recipe):
    """Train ``student`` to match the teacher's softened outputs and the true labels: with integer
    labels the loss is alpha x KL(teacher || student) at ``temperature`` over dim 1 plus (1 - alpha) x
    cross-entropy; without them, mean squared error to the teacher's outputs. Other tasks (CTC,
    sequence labels) train in a custom recipe. The loss per epoch is in the step's details."""

    recipe_name: ClassVar[str] = "distill"

    student: str = field(doc="import path 'module:callable' returning the student nn.Module")
    student_kwargs: dict[str, Any] = field(default_factory=dict, doc="keyword arguments for the student factory")
    temperature: float = field(4.0, gt=0, doc="softmax temperature of the soft targets")
    alpha: float = field(0.7, ge=0, le=1, doc="weight of the soft (teacher) loss; 1 - alpha weighs the hard loss")
    epochs: int = field(30, ge=1, doc="passes over the training split")
    batch_size: int = field(64, ge=1, doc="training batch size")
    lr: float = field(3e-3, gt=0, doc="learning rate")
    optimizer: Literal["adam", "adamw", "sgd"] = field("adam", doc="adam | adamw | sgd (momentum 0.9)")
    seed: int = field(0, doc="seed for initialisation and shuffling")

    def check(self) -> list[tuple[str, str]]:
        problem = import_path_problem(self.student)
        return [("student", problem)] if problem else []

    def short(self) -> str:
        return f"distill:{self.student.rpartition(':')[2]}"

    def apply(self, model: Any, ctx: RecipeContext) -> StepResult:
        return _distill(self, model, ctx)


def _distill(cfg, teacher, ctx) -> StepResult:
    """Soft targets from the teacher at a temperature, plus the hard labels."""
    import torch
    import torch.nn.functional as F

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
    loss_used = (
        f"alpha {cfg.alpha:g} x KL(teacher || student) at temperature {T:g} + {1 - cfg.alpha:g} x cross-entropy "
        "on the labels"
        if labelled
        else "the mean squared error to the teacher's outputs"
    )
    losses = []
    student.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(rows(x), generator=g)
        total = 0.0
        for i in range(0, rows(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            out = forward_output(student, take(x, idx), ctx.spec.metric.output)
            try:
                if labelled:
                    soft = (
                        F.kl_div(F.log_softmax(out / T, 1), F.softmax(soft_all[idx] / T, 1), reduction="batchmean")
                        * T
                        * T
                    )
                    hard = F.cross_entropy(out, y[idx].long())
                    loss = cfg.alpha * soft + (1 - cfg.alpha) * hard
                else:  # regression / embeddings: match the teacher's outputs
                    loss = F.mse_loss(out, soft_all[idx])
            except (RuntimeError, ValueError) as e:
                raise ValueError(
                    f"distillation minimizes {loss_used} between the student's output (shape {list(out.shape)}) "
                    f"and the teacher's (shape {list(soft_all[idx].shape)})"
                    + (f" and the labels (shape {list(y[idx].shape)})" if labelled else "")
                    + ": it fits classifiers (logits over dim 1, integer labels) and outputs the student "
                    "shares with the teacher. For another task (CTC, sequence labels), write the training "
                    f"as a custom recipe (custom: {{callable: ...}}); torch said: {e}"
                ) from e
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / rows(x))
        if epoch == 0 or (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:
            ctx.log(f"epoch {epoch + 1}/{cfg.epochs} loss {total / rows(x):.4f}")
    student.eval()
    tp = sum(p.numel() for p in teacher.parameters())
    sp = sum(p.numel() for p in student.parameters())
    return StepResult(
        student,
        f"student {cfg.student} with {sp} parameters ({sp / tp:.1%} of the teacher's {tp}); "
        f"{cfg.epochs} epochs, loss {losses[0]:.4g} -> {losses[-1]:.4g}",
        {
            "teacher_params": tp,
            "student_params": sp,
            "param_ratio": sp / tp,
            "loss": loss_used,
            "epochs": cfg.epochs,
            "loss_per_epoch": losses,
        },
        arch={"factory": cfg.student, "kwargs": dict(cfg.student_kwargs)},
    )
