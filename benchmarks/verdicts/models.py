"""Models and a slowdown recipe for the end-to-end latency-verdict benchmark (through pytest).

Every baseline is ``Repeated(model, n=20)``: the model applied 20 times in a chain (each pass
depends on the previous one, so no runtime can merge them). A variant that adds ``extra``
passes is exactly ``(20 + extra) / 20`` times the work in every runtime: 22 passes = 1.10x,
25 = 1.25x, and 20 (a fresh copy) is an A/A pair. Weights are seeded: latency does not care
about accuracy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Repeated(nn.Module):
    def __init__(self, inner: nn.Module, n: int):
        super().__init__()
        self.inner, self.n = inner, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        for _ in range(self.n - 1):
            # Depend on the previous pass (a zero-weighted scalar), so passes cannot be deduplicated.
            y = self.inner(x + 0.0 * y.sum())
        return y


class TabularMLP(nn.Module):
    """30 -> 128 -> 128 -> 2, like a small model on tabular features."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(30, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, x):
        return self.net(x)


class GRUClassifier(nn.Module):
    """The 8 rows of a digit image as an 8-step sequence of 8 features; a GRU and a linear head."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.gru(x.reshape(x.shape[0], 8, 8))
        return self.head(out[:, -1])


def _seeded(make):
    torch.manual_seed(0)
    return make()


def mlp(n: int = 20):
    return Repeated(_seeded(TabularMLP), n)


def cnn(n: int = 20):
    from examples.digits import CNN

    return Repeated(_seeded(lambda: CNN(channels=16)), n)


def gru(n: int = 20):
    return Repeated(_seeded(GRUClassifier), n)


def more_passes(model, ctx, extra: int = 0):
    """Custom recipe: the same model with ``extra`` more chained passes (0: an identical copy)."""
    m = copy.deepcopy(model)
    m.n = model.n + extra
    return m
