"""Small modules deploycheck wraps models in. Kept importable without user code."""

from __future__ import annotations

import torch


class Cast(torch.nn.Module):
    """Run ``inner`` in a reduced float dtype behind a float32 interface (fp16 / bf16 recipes)."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            x = x.to(self.dtype)
        return self.inner(x).float()
