"""Pruning: unstructured (L1 per layer, global L1, random) and structured (Ln over channels/rows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..schema import field


@dataclass(frozen=True)
class FineTune:
    """A short fine-tune on the spec's training split after pruning, masks kept fixed."""

    epochs: int = field(2, ge=1, doc="passes over the training split")
    lr: float = field(1e-3, gt=0, doc="Adam learning rate")
    batch_size: int = field(64, ge=1, doc="training batch size")
    seed: int = field(0, doc="seed for shuffling")


@dataclass(frozen=True)
class PruneConfig:
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
    finetune: FineTune | None = field(None, doc="optional recovery fine-tune: {epochs, lr, batch_size, seed}")

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
