"""A model's outputs, every one of them, by a stable name.

Whatever a model returns (a tensor, a tuple or list, a dict, a Hugging Face output, nested
structures of these) is flattened into an ordered ``{name: tensor}`` mapping: ``0`` for a lone
tensor, ``0``, ``1`` … for a sequence's items, a dict's keys (``logits``), joined with dots when
nested (``past.0.key``). Checks, snapshots, the metric and fidelity read outputs by these names,
so no output goes unchecked because it was not the first.
"""

from __future__ import annotations

from typing import Any

Named = dict  # {output name: tensor}, in the model's own order


class OutputError(TypeError):
    """What a model returned cannot be read as named tensors."""


def flatten(o: Any) -> Named:
    """Every tensor in ``o`` by its stable name; ``None`` leaves are left out (a Hugging Face
    output's unset fields), anything else that is not a tensor is an error naming where it sits."""
    out: dict[str, Any] = {}

    def walk(x: Any, name: str) -> None:
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            out[name or "0"] = x
        elif x is None:
            return
        elif isinstance(x, dict) or (hasattr(x, "keys") and hasattr(x, "__getitem__")):
            for k in x.keys():
                walk(x[k], f"{name}.{k}" if name else str(k))
        elif isinstance(x, (tuple, list)):
            for i, v in enumerate(x):
                walk(v, f"{name}.{i}" if name else str(i))
        else:
            where = f"output {name!r}" if name else "the model's output"
            raise OutputError(
                f"{where} is a {type(x).__name__}, not a tensor (outputs are tensors, or tuples, "
                "lists and dicts of them)"
            )

    walk(o, "")
    if not out:
        raise OutputError(f"the model returned {type(o).__name__} holding no tensor")
    return out


def concat(parts: list[Named]) -> Named:
    """Per-batch outputs joined along the batch dimension; every batch must give the same names."""
    import torch

    if not parts:
        return {}
    names = list(parts[0])
    for i, p in enumerate(parts[1:], 1):
        if list(p) != names:
            raise OutputError(f"batch {i} returned outputs {list(p)} but batch 0 returned {names}")
    return {n: torch.cat([p[n] for p in parts]) for n in names}


def as_named(x: Any) -> Named:
    """Outputs stored by an older version (one tensor) as named outputs."""
    return x if isinstance(x, dict) else {"0": x}


def label(name: str, outputs: Named) -> str:
    """`` output 'emb'`` where a model has several outputs, nothing where it has one (its messages
    read as they always did)."""
    return f" output {name!r}" if len(outputs) > 1 else ""


def pick(outputs: Named, name: str | None) -> Any:
    """The output the metric reads: ``name``, or the first."""
    if name is None:
        return next(iter(outputs.values()))
    if name not in outputs:
        raise OutputError(
            f"metric.output {name!r} is not an output of the model; its outputs are "
            f"{', '.join(repr(n) for n in outputs)}"
        )
    return outputs[name]


def align(ref: Named, got: Named) -> tuple[list[tuple[str, Any, Any]], str | None]:
    """Pairs ``(name, reference, got)`` for every reference output, or a reason they cannot be paired.

    By name when both sides have the same names; by position when only the names differ (a format
    whose file names its outputs itself, e.g. ONNX's graph outputs, or a tuple where the model
    returned a dict), always under the reference's names."""
    if list(ref) == list(got):
        return [(n, ref[n], got[n]) for n in ref], None
    if len(ref) == len(got):
        return [(n, r, g) for (n, r), g in zip(ref.items(), got.values(), strict=False)], None
    return [], (
        f"returned {len(got)} output(s) ({', '.join(got)}) where the reference returned {len(ref)} ({', '.join(ref)})"
    )
