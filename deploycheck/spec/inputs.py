"""A model's inputs as a spec declares them: names, shapes, dtypes and dynamic dimensions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..schema import DType
from .loader import LMap
from .schema import (
    Ctx,
    Invalid,
    build_dataclass,
    dataclass_schema,
    field,
)

INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DynamicDim:
    """One dimension of an input whose size varies: exported as a ``torch.export.Dim`` of this
    name (inputs that share a name share the size), tried at its min, a middle size and its max."""

    dim: int
    name: str
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class InputSpec:
    """One input, batch dimension first: the example used for export / tracing and latency."""

    shape: tuple[int, ...] = field(doc="example input shape, batch first, e.g. [1, 64]")
    dtype: DType = field(
        "float32",
        doc="the input's dtype; the data are cast to it (an integer or bool input "
        "given values that are not whole numbers / 0 and 1 is an error)",
    )
    dynamic: dict[str, Any] = field(
        default_factory=dict,
        doc="dimensions whose size varies, by position: the batch as a name (`{0: batch}`), any other "
        "dimension as `{name, min, max}` (`{1: {name: seq, min: 4, max: 128}}`; a size beyond the data's "
        "is made by repeating the data along it); the batch dimension is dynamic unless a format option "
        "says otherwise",
    )
    lengths_of: str | None = field(
        None,
        doc="named inputs: this input holds each sample's valid length along the dynamic dimension of this "
        "name (a speech model's `lengths` beside `feats`), shape [batch], integer: where the `dynamic` check "
        "cuts that dimension to a size, these lengths are clamped to it, so short inputs come with "
        "consistent lengths",
    )

    def check(self) -> list[tuple[str, str]]:
        if not self.shape or any(d < 1 for d in self.shape):
            return [("shape", f"must be a non-empty list of positive sizes, got {list(self.shape)}")]
        if self.lengths_of is not None and (len(self.shape) != 1 or self.dtype not in ("int64", "int32")):
            return [
                (
                    "lengths_of",
                    f"a lengths input is one integer per sample: shape [batch] and dtype int64 or int32, got shape "
                    f"{list(self.shape)} {self.dtype}",
                )
            ]
        for k, v in self.dynamic.items():
            if not k.lstrip("-").isdigit() or not 0 <= int(k) < len(self.shape):
                return [
                    (
                        "dynamic",
                        f"key {k!r} is not a dimension of shape {list(self.shape)} (0 to {len(self.shape) - 1})",
                    )
                ]
            if isinstance(v, dict):
                extra = set(v) - {"name", "min", "max"}
                if extra or not isinstance(v.get("name"), str):
                    return [("dynamic", f"dimension {k}: expected {{name, min, max}} with a string name, got {v}")]
                lo, hi = v.get("min"), v.get("max")
                if any(b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1) for b in (lo, hi)):
                    return [("dynamic", f"dimension {k}: min and max are positive integers, got {v}")]
                if lo is not None and hi is not None and lo > hi:
                    return [("dynamic", f"dimension {k}: min {lo} > max {hi}")]
                if int(k) > 0 and (lo is None or hi is None):
                    return [
                        ("dynamic", f"dimension {k} ({v['name']}): give both min and max, the sizes it is tried at")
                    ]
            elif not isinstance(v, str):
                return [("dynamic", f"dimension {k}: expected a name or {{name, min, max}}, got {v!r}")]
            elif int(k) > 0:
                return [
                    ("dynamic", f"dimension {k} ({v}): give {{name: {v}, min: …, max: …}}, the sizes it is tried at")
                ]
        return []

    @property
    def dynamic_dims(self) -> tuple[DynamicDim, ...]:
        out = []
        for k, v in sorted(self.dynamic.items(), key=lambda kv: int(kv[0])):
            if isinstance(v, str):
                out.append(DynamicDim(int(k), v))
            else:
                out.append(DynamicDim(int(k), v["name"], v.get("min"), v.get("max")))
        return tuple(out)


@dataclass(frozen=True)
class Inputs:
    """``model.inputs``: one input (``{shape, dtype, dynamic}``, today's form) or a mapping of named
    inputs, each ``{shape, dtype, dynamic}``, passed to the model by keyword in this order."""

    items: tuple[tuple[str, InputSpec], ...]
    named: bool = False

    @property
    def first(self) -> InputSpec:
        return self.items[0][1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The first input's shape (the only one's, for a single unnamed input)."""
        return self.first.shape

    @property
    def dtype(self) -> str:
        return self.first.dtype

    def describe(self) -> str:
        """``shape [1, 64] float32``, or each named input's."""

        def one(i: InputSpec) -> str:
            return f"shape {list(i.shape)} {i.dtype}"

        if not self.named:
            return one(self.first)
        return ", ".join(f"{n}: {one(i)}" for n, i in self.items)

    @classmethod
    def parse(cls, value: Any, *, path: str, line: int, ctx: Ctx) -> Inputs:
        if not isinstance(value, dict):
            ctx.error(
                line,
                path,
                f"expected a mapping: {{shape, dtype, dynamic}} for one input, or named inputs "
                f"{{input_ids: {{shape, dtype}}, attention_mask: {{shape, dtype}}}}, got "
                f"{'a list' if isinstance(value, list) else repr(value)}",
            )
            raise Invalid
        if "shape" in value and not isinstance(value["shape"], dict):
            one = build_dataclass(InputSpec, value, path=path, line=line, ctx=ctx)
            if one.lengths_of is not None:
                ctx.error(line, f"{path}.lengths_of", "lengths_of belongs to a named input beside the one it measures")
                raise Invalid
            return cls(((("x", one),)), False)
        items, bad = [], False
        for name, sub in value.items():
            kl = value.line_of(name) if isinstance(value, LMap) else line
            if not isinstance(name, str) or not INPUT_NAME.match(name):
                ctx.error(kl, f"{path}.{name}", "an input name is a Python identifier (the model's argument name)")
                bad = True
                continue
            try:
                items.append((name, build_dataclass(InputSpec, sub, path=f"{path}.{name}", line=kl, ctx=ctx)))
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        if not items:
            ctx.error(line, path, "declare at least one input")
            raise Invalid
        if not _dims_agree(items, value, path=path, line=line, ctx=ctx):
            raise Invalid
        bounded = sorted({d.name for _, i in items for d in i.dynamic_dims if d.dim > 0 and d.max is not None})
        for name, sub in items:
            if sub.lengths_of is not None and sub.lengths_of not in bounded:
                kl = value.line_of(name) if isinstance(value, LMap) else line
                declared = f"declared: {', '.join(bounded)}" if bounded else "none is declared"
                ctx.error(
                    kl,
                    f"{path}.{name}.lengths_of",
                    f"{sub.lengths_of!r} is not a dynamic dimension with min and max of another input ({declared})",
                )
                bad = True
        if bad:
            raise Invalid
        return cls(tuple(items), True)

    @classmethod
    def json_schema_hook(cls) -> dict:
        one = dataclass_schema(InputSpec)
        return {"anyOf": [one, {"type": "object", "additionalProperties": one}], "description": cls.__doc__}


def _dims_agree(items: list[tuple[str, InputSpec]], value: Any, *, path: str, line: int, ctx: Ctx) -> bool:
    """Inputs that name the same dynamic dimension share its size: one range and one example size.
    A second, different declaration was silently ignored (the first won)."""
    first: dict[str, tuple[str, DynamicDim, int]] = {}
    ok = True
    for name, spec in items:
        kl = value.line_of(name) if isinstance(value, LMap) else line
        for d in spec.dynamic_dims:
            size = spec.shape[d.dim]
            if d.name not in first:
                first[d.name] = (name, d, size)
                continue
            oname, od, osize = first[d.name]
            where = f"{path}.{name}.dynamic.{d.dim}"
            bounded = (d.min, d.max) != (None, None) and (od.min, od.max) != (None, None)
            if bounded and (d.min, d.max) != (od.min, od.max):
                ctx.error(
                    kl,
                    where,
                    f"dimension {d.name!r} is declared with min {d.min}, max {d.max} here but min {od.min}, "
                    f"max {od.max} at {oname}[{od.dim}]; a shared dimension has one range: declare the same "
                    "range, or give this one another name",
                )
                ok = False
            elif size != osize:
                ctx.error(
                    kl,
                    where,
                    f"dimension {d.name!r} has size {size} in {name}'s shape but {osize} in {oname}'s "
                    f"({oname}[{od.dim}]); inputs that share a dimension share its size",
                )
                ok = False
    return ok
