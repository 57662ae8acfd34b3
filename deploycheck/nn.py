"""Small modules deploycheck wraps models in. Kept importable without user code."""

from __future__ import annotations

import torch


class Cast(torch.nn.Module):
    """Run ``inner`` in a reduced float dtype behind a float32 interface (fp16 / bf16 recipes)."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        # float inputs go in at the reduced dtype (token ids and masks stay as they are); every
        # float output comes back as float32, whatever structure holds it
        from torch.utils._pytree import tree_map

        down = lambda t: t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        up = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        return tree_map(up, self.inner(*tree_map(down, args), **tree_map(down, kwargs)))
