"""Inputs at the sizes a declared dynamic dimension may take.

An artifact traced at one sequence length may have specialised it (a Python int taken from
``x.shape`` in a TorchScript trace, a ``torch.export`` without a ``Dim``): it loads, runs the
evaluation batches at that length, and fails or answers wrongly at any other. For every dynamic
dimension declared under ``model.inputs`` (other than the batch), the reloaded artifact runs at
its minimum, a middle and its maximum size, and its outputs are compared with the in-memory
variant's on the same inputs. An input declared ``lengths_of`` that dimension (a speech model's
``lengths`` beside ``feats``) is clamped to each size, so a short input has consistent lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol import take

#: evaluation rows each dynamic-size batch holds (a batch size the example did not have)
PROBE_ROWS = 3


@dataclass(frozen=True)
class DynamicProbe:
    """One batch with dimension ``name`` at ``size`` (``traced`` is the declared example's size)."""

    name: str
    size: int
    traced: int
    where: tuple[str, ...]  # e.g. ("input_ids[1]", "attention_mask[1]")
    batch: Any = field(compare=False, repr=False)

    def label(self) -> str:
        return f"{self.name}={self.size}"


def probe_sizes(lo: int, hi: int) -> list[int]:
    return sorted({lo, (lo + hi) // 2, hi})


def resize(t, dim: int, n: int):
    """``t`` with dimension ``dim`` cut or tiled to ``n`` (tiling keeps token ids and masks valid)."""
    have = t.shape[dim]
    if have < n:
        reps = [1] * t.dim()
        reps[dim] = -(-n // have)
        t = t.repeat(*reps)
    return t.narrow(dim, 0, n).contiguous()


def dynamic_probes(spec, batches: list) -> list[DynamicProbe]:
    """The probe batches for every declared dynamic dimension with a min and max (not the batch)."""
    sig = spec.model.inputs
    if not batches:
        return []
    dims: dict[str, list[tuple[str, int]]] = {}
    bounds: dict[str, tuple[int, int, int]] = {}
    for name, inp in sig.items:
        for d in inp.dynamic_dims:
            if d.dim == 0 or d.min is None or d.max is None:
                continue
            dims.setdefault(d.name, []).append((name, d.dim))
            bounds.setdefault(d.name, (d.min, d.max, inp.shape[d.dim]))
    base = take(batches[0], slice(0, PROBE_ROWS))
    out = []
    for dname, where in dims.items():
        lo, hi, traced = bounds[dname]
        for n in probe_sizes(lo, hi):
            if isinstance(base, dict):
                b = dict(base)
                for iname, d in where:
                    b[iname] = resize(b[iname], d, n)
                for iname, inp in sig.items:  # lengths along this dimension follow its cut
                    if inp.lengths_of == dname and iname in b:
                        b[iname] = b[iname].clamp(max=n)
            else:
                b = resize(base, where[0][1], n)
            label = tuple(f"{i}[{d}]" if sig.named else f"dim {d}" for i, d in where)
            out.append(DynamicProbe(dname, n, traced, label, b))
    return out
