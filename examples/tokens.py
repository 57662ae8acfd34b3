"""A tiny token model for the named-inputs example (examples/tokens/tokens.yaml): token ids (int64)
and an attention mask (bool) in, a dict of outputs out, any sequence length from 4 to 64."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB = 100


class TokenClassifier(nn.Module):
    """Embeddings, one Transformer-style feed-forward block, a masked mean and a linear head;
    returns {"logits": (N, 4), "pooled": (N, 32)}."""

    def __init__(self, dim: int = 32, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(VOCAB, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.emb(input_ids)
        h = self.norm(h + self.ff(h))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return {"logits": self.head(pooled), "pooled": pooled}


def data(n: int = 256, length: int = 32, seed: int = 0):
    """Seeded token sequences with a padded tail (mask 0), as named inputs; no labels, so the
    metric measures fidelity to the baseline."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, length))
    lens = rng.integers(4, length + 1, size=n)
    mask = np.arange(length)[None, :] < lens[:, None]
    ids = np.where(mask, ids, 0)
    return {"input_ids": ids, "attention_mask": mask}, None
