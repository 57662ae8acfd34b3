"""Pruning: unstructured (L1 per layer, global L1, random) and structured (Ln over channels/rows)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..protocol import forward_output, rows, take
from ..schema import field
from . import Recipe, RecipeContext, StepResult

#: module types ``prune.modules`` can name
KIND_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "GRU", "RNN", "MultiheadAttention")


@dataclass(frozen=True)
class FineTune:
    """A short fine-tune on the spec's training split after pruning, masks kept fixed."""

    epochs: int = field(2, ge=1, doc="passes over the training split")
    lr: float = field(1e-3, gt=0, doc="Adam learning rate")
    batch_size: int = field(64, ge=1, doc="training batch size")
    seed: int = field(0, doc="seed for shuffling")


@dataclass(frozen=True)
class PruneConfig(Recipe):
    """Zero out weights; the result is made permanent (no masks or reparametrization remain)."""

    recipe_name: ClassVar[str] = "prune"

    method: Literal["l1_unstructured", "global_l1_unstructured", "random_unstructured", "ln_structured"] = field(
        doc="l1_unstructured (per layer) | global_l1_unstructured | random_unstructured | ln_structured"
    )
    amount: float = field(gt=0.0, lt=1.0, doc="fraction of weights (or rows/channels) to prune, in (0, 1)")
    dim: int = field(0, doc="ln_structured: the weight dimension whose slices are pruned (0 = output rows/channels)")
    n: int = field(2, ge=1, doc="ln_structured: the norm used to rank slices")
    modules: tuple[Literal["Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "GRU", "RNN", "MultiheadAttention"], ...] = (
        field(
            ("Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "GRU", "RNN", "MultiheadAttention"),
            doc="module types whose weights are pruned (subclasses included): a Linear's or Conv's weight, an LSTM/GRU/RNN's "
            "weight_ih_l*/weight_hh_l*, a MultiheadAttention's in_proj_weight (or q/k/v_proj_weight) and out_proj.weight. "
            "When the weights left out (of modules not listed, embeddings apart) keep the model's sparsity under half the "
            "amount, the build fails naming them",
        )
    )
    skip: tuple[str, ...] = field(
        (), doc="module name globs not pruned, with everything inside them (each must match a module)"
    )
    seed: int = field(0, doc="seed for random_unstructured")
    finetune: FineTune | None = field(
        None,
        doc="optional recovery fine-tune: {epochs, lr, batch_size, seed}. Minimizes cross-entropy between the "
        "metric's output and integer labels, or mean squared error to float targets; other tasks (CTC, "
        "sequence labels) train in a custom recipe. Its loss per epoch is in the step's details and summary",
    )

    OPTIONS_BY = "method"
    _COMMON = ("amount", "modules", "skip", "finetune")
    OPTIONS = {
        "l1_unstructured": _COMMON,
        "global_l1_unstructured": _COMMON,
        "random_unstructured": _COMMON + ("seed",),
        "ln_structured": _COMMON + ("dim", "n"),
    }

    def short(self) -> str:
        return f"prune:{self.method}@{self.amount:g}" + ("+ft" if self.finetune else "")

    def apply(self, model: Any, ctx: RecipeContext) -> StepResult:
        """torch.nn.utils.prune, made permanent, sparsity measured per layer."""
        return _prune(self, model, ctx)


# --- apply (torch imported inside) ---------------------------------------------------------------


def _prune(cfg, model, ctx) -> StepResult:
    import torch
    import torch.nn.utils.prune as P
    from torch import nn

    chosen = targets(model, cfg.modules, cfg.skip)
    if cfg.method == "global_l1_unstructured":
        P.global_unstructured([(m, p) for _, m, p in chosen], pruning_method=P.L1Unstructured, amount=cfg.amount)
    else:
        torch.manual_seed(cfg.seed)
        for label, m, p in chosen:
            if cfg.method == "l1_unstructured":
                P.l1_unstructured(m, p, amount=cfg.amount)
            elif cfg.method == "random_unstructured":
                P.random_unstructured(m, p, amount=cfg.amount)
            else:
                w = getattr(m, p)
                if cfg.dim >= w.dim() or cfg.dim < -w.dim():
                    raise ValueError(f"dim {cfg.dim} is out of range for {label} of shape {tuple(w.shape)}")
                P.ln_structured(m, p, amount=cfg.amount, n=cfg.n, dim=cfg.dim)
    tuned = _finetune(cfg.finetune, model, ctx) if cfg.finetune else None
    for _, m, p in chosen:
        P.remove(m, p)  # permanent: no masks or reparametrization left in the artifact
    for _, m, _p in chosen:
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()  # the RNN kernels read their flat list of weights, not the attributes
    weights = {label: getattr(m, p) for label, m, p in chosen}
    layers = {label: 1.0 - float(torch.count_nonzero(w)) / w.numel() for label, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights.values())
    overall = zeros / total
    left = missed(model, chosen, cfg.skip)
    whole = total + sum(n for _, _, n in left)
    achieved = zeros / whole
    if left and achieved < cfg.amount / 2:
        left.sort(key=lambda x: -x[2])
        names = ", ".join(f"{n} ({kind}, {size:,})" for n, kind, size in left[:6]) + (" …" if len(left) > 6 else "")
        kinds = sorted({kind for _, kind, _ in left if kind in KIND_NAMES})
        others = sorted({kind for _, kind, _ in left if kind not in KIND_NAMES})
        how = []
        if kinds:
            how.append(f"add {', '.join(kinds)} to prune.modules (now {', '.join(cfg.modules)})")
        if others:
            how.append(f"prune {', '.join(others)} with a custom recipe (this recipe prunes {', '.join(KIND_NAMES)})")
        raise ValueError(
            f"amount {cfg.amount:g} was asked for, but only {achieved:.1%} of the model's weights are zero: "
            f"{len(left)} weight matri{'ces' if len(left) > 1 else 'x'} ({1 - total / whole:.0%} of the "
            f"weights) were not pruned: {names}; {', or '.join(how)}, or name those modules in prune.skip "
            "to keep them dense on purpose"
        )
    details = {"sparsity_per_layer": layers, "sparsity_pruned_layers": overall, "sparsity_model": achieved}
    summary = f"{cfg.method} amount {cfg.amount:g}: {overall:.1%} of pruned-layer weights are zero"
    if tuned is not None:
        details["finetune"] = tuned
        ls = tuned["loss_per_epoch"]
        summary += f"; fine-tuned {tuned['epochs']} epochs, {tuned['loss']} {ls[0]:.4g} -> {ls[-1]:.4g}"
    return StepResult(model.eval(), summary, details)


def _kinds() -> dict[str, type]:
    """The module types ``prune.modules`` can name; a subclass counts as its base (MultiheadAttention's
    out_proj is a NonDynamicallyQuantizableLinear, a Linear)."""
    from torch import nn

    return {
        "Linear": nn.Linear,
        "Conv1d": nn.Conv1d,
        "Conv2d": nn.Conv2d,
        "Conv3d": nn.Conv3d,
        "LSTM": nn.LSTM,
        "GRU": nn.GRU,
        "RNN": nn.RNN,
        "MultiheadAttention": nn.MultiheadAttention,
    }


def _weights(name: str, m) -> list[tuple[str, object, str]]:
    """(label, owner module, parameter name) of the weight matrices a module's pruning covers; the
    label keys ``sparsity_per_layer``."""
    from torch import nn

    def label(p: str) -> str:
        return f"{name}.{p}" if name else p

    if isinstance(m, nn.MultiheadAttention):
        own = (
            ["in_proj_weight"] if m.in_proj_weight is not None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        )
        return [(label(p), m, p) for p in own] + [(label("out_proj"), m.out_proj, "weight")]
    if isinstance(m, nn.RNNBase):  # weight_ih_l0, weight_hh_l0 (and _reverse, weight_hr_ for projections)
        return [(label(p), m, p) for p, _ in m.named_parameters(recurse=False) if p.startswith("weight_")]
    return [(name, m, "weight")]  # a layer with one weight is named by its module, as before


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    """A module is skipped when its name, or the name of a module holding it, matches a glob."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), g) for i in range(1, len(parts) + 1) for g in skip)


def targets(model, types: tuple[str, ...], skip: tuple[str, ...]) -> list[tuple[str, object, str]]:
    names = [n for n, _ in model.named_modules() if n]
    for g in skip:
        if not any(fnmatch.fnmatchcase(n, g) for n in names):
            raise ValueError(
                f"skip glob {g!r} matches no module; modules are: {', '.join(names[:20])}"
                + (" …" if len(names) > 20 else "")
            )
    kinds = tuple(_kinds()[t] for t in types)
    out: list[tuple[str, object, str]] = []
    seen: set[tuple[int, str]] = set()
    for n, m in model.named_modules():
        if not n or not isinstance(m, kinds) or _skipped(n, skip):
            continue
        for label, owner, p in _weights(n, m):
            if (id(owner), p) not in seen:  # an attention's out_proj is also a Linear
                seen.add((id(owner), p))
                out.append((label, owner, p))
    if not out:
        raise ValueError(
            f"no module of type {', '.join(types)} to work on" + (f" after skipping {list(skip)}" if skip else "")
        )
    return out


def missed(model, chosen, skip: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """Weight matrices (2-D or more) that pruning left alone without being told to: (name, module type, size)."""
    from torch import nn

    tables = (nn.Embedding, nn.EmbeddingBag)  # lookup tables, not compute: never pruned, not counted
    kinds = _kinds()
    covered = {(id(owner), p) for _, owner, p in chosen}
    out = []
    for n, m in model.named_modules():
        if isinstance(m, tables) or (n and _skipped(n, skip)):
            continue
        for p, t in m.named_parameters(recurse=False):
            if t.dim() >= 2 and t.is_floating_point() and (id(m), p) not in covered:
                kind = next((k for k, cls in kinds.items() if isinstance(m, cls)), type(m).__name__)
                out.append((f"{n}.{p}" if n else p, kind, t.numel()))
    return out


def _finetune(ft, model, ctx) -> dict:
    """A short fine-tune with the masks in place, so pruned weights stay zero; returns what it did
    (the loss it minimized and its value per epoch), which the step's record keeps."""
    import torch

    x, y = ctx.data.train_tensors()
    if y is None:
        raise ValueError(
            "finetune needs labelled training data: it minimizes cross-entropy (integer labels) or mean squared "
            "error (float targets) between the model's output and the labels; without labels, drop finetune or "
            "fine-tune in a custom recipe"
        )
    g = torch.Generator().manual_seed(ft.seed)
    torch.manual_seed(ft.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=ft.lr)
    name = loss_name(y)
    losses = []
    model.train()
    for epoch in range(ft.epochs):
        perm = torch.randperm(rows(x), generator=g)
        total = 0.0
        for i in range(0, rows(x), ft.batch_size):
            idx = perm[i : i + ft.batch_size]
            opt.zero_grad()
            out = forward_output(model, take(x, idx), ctx.spec.metric.output)
            loss = task_loss(out, y[idx], what="finetune", output=ctx.spec.metric.output)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / rows(x))
        ctx.log(f"finetune epoch {epoch + 1}/{ft.epochs} {name} {losses[-1]:.4f}")
    model.eval()
    return {"loss": name, "epochs": ft.epochs, "loss_per_epoch": losses}


def loss_name(y) -> str:
    """The loss the built-in fine-tune and distillation minimize for these labels."""
    import torch

    return "cross_entropy" if y.dtype in (torch.int64, torch.int32) else "mse"


def task_loss(out, y, *, what: str, output: str | None):
    """Cross-entropy for integer labels, mean squared error for float targets; a model whose output
    does not fit them (a sequence model's CTC, per-frame labels) gets a message naming the loss,
    both shapes and the way out, not torch's bare shape error."""
    try:
        return _loss(out, y)
    except (RuntimeError, ValueError) as e:
        name = loss_name(y)
        want = (
            "a classifier's logits (batch, classes) against integer labels (batch,)"
            if name == "cross_entropy"
            else "an output of the targets' shape"
        )
        raise ValueError(
            f"the built-in {what} minimizes {name.replace('_', '-')} between the model's output"
            f"{f' {output!r}' if output else ''} (shape {list(out.shape)}) and the training labels (shape "
            f"{list(y.shape)}): it fits {want}. For another task (CTC, sequence labels, several outputs), "
            f"write the training as a custom recipe (custom: {{callable: ...}}); torch said: {e}"
        ) from e


def _loss(out, y):
    import torch

    if y.dtype in (torch.int64, torch.int32):
        return torch.nn.functional.cross_entropy(out, y.long())
    return torch.nn.functional.mse_loss(out.reshape(y.shape), y)
