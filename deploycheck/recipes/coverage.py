"""What a quantize step actually converted, read from the model it returned.

A quantize step names the layers it targets (its ``modules`` types minus ``skip``; for static int8
every convolution and Linear layer, which the x86 quantizer handles). What it converts is another
matter: torch.ao swaps only modules of the exact ``nn`` types it knows (a subclass of ``nn.Conv2d``
stays float, and it has no dynamic convolution), torchao rewrites only ``Linear`` weights, int4
skips layers whose input size the group does not divide, and pt2e quantizes only the operators its
quantizer annotated. None of them says so. :func:`coverage` therefore never trusts the request: it
inspects the result (a module swapped for a ``torch.ao.nn.quantized`` one, a weight that became a
quantized tensor subclass or an integer tensor, a graph operator whose weight comes through a
``dequantize`` node) and reports, per targeted layer, whether it was converted, with the layer's
share of the targeted weights, and for each float layer the likely reason.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

#: torch.nn classes a quantize step can target, by the name a spec uses in ``modules``
TARGETABLE = ("Linear", "LSTM", "GRU", "Conv1d", "Conv2d", "Conv3d")
#: what static int8 targets: what the x86 pt2e quantizer annotates, and the recurrent layers it has
#: no int8 kernels for (a GRU that holds most of a speech model's weights must not pass unseen)
STATIC_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "GRU")
#: module types torch.ao's dynamic int8 swaps (exact types, as its default mapping holds them)
TORCH_AO_DYNAMIC = ("Linear", "LSTM", "GRU")
_GRAPH_OPS = ("linear", "conv1d", "conv2d", "conv3d", "convolution")


@dataclass(frozen=True)
class Layer:
    name: str
    type: str  # the class name, e.g. "Conv2dStaticSamePadding"
    base: str  # the torch.nn class it is (or derives from), e.g. "Conv2d"
    weights: int  # parameters it holds itself


@dataclass
class Coverage:
    """Targeted layers and which of them the step converted."""

    targeted: list[Layer]
    converted: set[str] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)  # float layer -> likely reason

    @property
    def fraction(self) -> float:
        """Share of the targeted weights that were converted (1.0 where nothing was targeted)."""
        total = sum(layer.weights for layer in self.targeted)
        done = sum(layer.weights for layer in self.targeted if layer.name in self.converted)
        return done / total if total else 1.0

    def floats(self) -> list[Layer]:
        """The targeted layers left in float, largest first."""
        return sorted((x for x in self.targeted if x.name not in self.converted), key=lambda x: (-x.weights, x.name))

    def to_dict(self) -> dict:
        total = sum(x.weights for x in self.targeted) or 1
        return {
            "targeted_layers": len(self.targeted),
            "converted_layers": len([x for x in self.targeted if x.name in self.converted]),
            "fraction": self.fraction,
            "float": [
                {
                    "name": x.name,
                    "type": x.type,
                    "share": x.weights / total,
                    "reason": self.reasons.get(x.name, ""),
                }
                for x in self.floats()
            ],
        }


def targeted(model, types: tuple[str, ...], skip: tuple[str, ...] = ()) -> list[Layer]:
    """The layers of ``model`` that are instances of the named ``torch.nn`` classes (subclasses
    included, but not attention's ``out_proj``, which torch marks as never quantized), minus those
    whose name matches a ``skip`` glob. Layers inside another targeted
    layer are not counted twice."""
    import torch
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    classes = [(t, getattr(torch.nn, t)) for t in types]
    out: list[Layer] = []
    for name, m in model.named_modules():
        if not name or skipped(name, skip):
            continue
        if isinstance(m, NonDynamicallyQuantizableLinear):  # attention's out_proj: torch says never quantize it
            continue
        if any(name.startswith(x.name + ".") for x in out):
            continue
        base = next((t for t, c in classes if isinstance(m, c)), None)
        if base is None:
            continue
        n = sum(p.numel() for p in m.parameters(recurse=False))
        out.append(Layer(name, type(m).__name__, base, n))
    return out


def tied(model) -> dict[str, str]:
    """Modules whose ``weight`` is the same tensor as another module's parameter (an LM's lm_head
    tied to its input embedding), both sides: module name -> the other holder's parameter name."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((mname, pname))
    out = {}
    for hs in holders.values():
        for mname, pname in hs if len(hs) > 1 else ():
            if pname == "weight" and mname:
                out[mname] = next(f"{a}.{b}" if a else b for a, b in hs if (a, b) != (mname, pname))
    return out


def skipped(name: str, skip: tuple[str, ...]) -> bool:
    """``name`` or a module it lives in matches a ``skip`` glob."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), g) for i in range(1, len(parts) + 1) for g in skip)


def _quantized_tensor(t: Any) -> bool:
    import torch

    if not isinstance(t, torch.Tensor):
        return False
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return True  # a quantized tensor subclass (torchao's Int8Tensor, IntxUnpackedToInt8Tensor...)
    return not (t.dtype.is_floating_point or t.dtype.is_complex)


def converted_modules(model) -> set[str]:
    """Names of the modules of an eager ``model`` whose weights are held quantized."""
    out = set()
    for name, m in model.named_modules():
        if type(m).__module__.startswith("torch.ao.nn.quantized"):
            out.add(name)
            continue
        own = dict(m.named_parameters(recurse=False))
        own.update(dict(m.named_buffers(recurse=False)))
        try:
            w = getattr(m, "weight", None)  # a property may compute it, or raise
        except Exception:  # noqa: BLE001 - no readable weight: judged by its parameters and buffers
            w = None
        if not callable(w) and w is not None:
            own.setdefault("weight", w)
        if any(_quantized_tensor(t) for t in own.values()):
            out.add(name)
    return out


def converted_in_graph(gm) -> set[str]:
    """Module paths (``nn_module_stack``) of the convolution and linear operators of a pt2e graph
    whose weight arrives through a ``dequantize`` node (quantized), as recorded at export."""
    out = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2:
            continue
        op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if op not in _GRAPH_OPS:
            continue
        w = node.args[1]
        src = getattr(w, "target", None)
        if getattr(w, "op", None) != "call_function" or "dequantize" not in str(getattr(src, "__name__", src)):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1][0]
            out.add(str(path))
    return out


def _matches(name: str, paths: set[str]) -> bool:
    """``name`` (a path in the model the step got) among ``paths`` (recorded through wrappers,
    e.g. ``model.fc`` for ``fc``)."""
    return any(p == name or p.endswith("." + name) for p in paths)


def coverage(before: list[Layer], after, *, method: str, backend: str, group_size: int | None = None) -> Coverage:
    """Which of the ``before`` layers (targeted, measured on the model the step got) the step's
    result ``after`` holds quantized, with a reason for each one it left in float."""
    import torch

    cov = Coverage(list(before))
    if isinstance(after, torch.fx.GraphModule):
        paths = converted_in_graph(after)
        cov.converted = {x.name for x in before if _matches(x.name, paths)}
    else:
        mods = converted_modules(after)
        cov.converted = {x.name for x in before if _matches(x.name, mods) or x.name in mods}
    for x in cov.floats():
        cov.reasons[x.name] = _reason(x, method=method, backend=backend, group_size=group_size)
    return cov


def _reason(x: Layer, *, method: str, backend: str, group_size: int | None) -> str:
    subclass = x.type != x.base
    if method == "static_int8" and x.base in ("LSTM", "GRU"):
        return f"pt2e's x86 quantizer has no int8 {x.base}: dynamic_int8 (torch.ao) quantizes it, or name it in skip"
    if method == "static_int8" and x.base == "Conv1d":
        return "pt2e's x86 quantizer quantizes a Conv1d only where a ReLU follows it"
    if method == "static_int8" and x.base == "Conv3d":
        return "pt2e's x86 quantizer has no int8 Conv3d"
    if method == "static_int8":
        return f"the x86 pt2e quantizer did not annotate this {x.base}" + (f" (a {x.type})" if subclass else "")
    if backend == "torchao" or method in ("weight_only_int8", "weight_only_int4"):
        if x.base != "Linear":
            return f"torchao's {method} quantizes Linear weights only; a {x.base} stays float"
        if method == "weight_only_int4" and group_size:
            return f"its input size is not a multiple of group_size {group_size}"
        return "torchao left its weight in float"
    if x.base not in TORCH_AO_DYNAMIC:
        return f"torch.ao dynamic int8 has no {x.base} kernel (static_int8 quantizes convolutions)"
    if subclass:
        return f"torch.ao swaps exact nn.{x.base} modules only; this is a {x.type}"
    return "torch.ao left it in float"


def describe(floats: list[dict], limit: int = 6) -> str:
    """``gru (GRU, 86.1%: <reason>)`` for the largest float layers of a :meth:`Coverage.to_dict`
    record (shares of the targeted weights)."""
    parts = [
        f"{f['name']} ({f['type']}, {100 * f['share']:.1f}%: {f.get('reason') or 'left in float'})"
        for f in floats[:limit]
    ]
    more = len(floats) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
