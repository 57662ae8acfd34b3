"""TorchScript (``torch.jit.trace`` or ``torch.jit.script``) -> ``.ts``, reloaded with ``torch.jit.load``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

from ..schema import field
from . import Format, SaveContext, Unsupported
from .export import _first_line, with_signature


@dataclass(frozen=True)
class TorchScriptOptions:
    """Options of the TorchScript format."""

    mode: Literal["trace", "script"] = field("trace", doc="trace with the example input, or script the module")


class TorchScriptFormat(Format):
    name = "torchscript"
    suffix = ".ts"
    Options = TorchScriptOptions
    description = "TorchScript archive (.ts); deprecated in torch 2.13 but still widely deployed"

    def save(self, model, path, ctx: SaveContext):
        example, options, inputs = ctx.example, ctx.options, ctx.inputs
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if options.mode == "script":
                    sm = torch.jit.script(model)
                else:
                    # strict=False: a dict or list output is traced as it is (checked by every key);
                    # named inputs are traced by keyword, so the file is called by the same names
                    traced = with_signature(model, inputs)
                    if isinstance(example, dict):
                        sm = torch.jit.trace(traced, example_kwarg_inputs=example, check_trace=False, strict=False)
                    else:
                        sm = torch.jit.trace(traced, (example,), check_trace=False, strict=False)
            except Exception as e:
                reason = f"torch.jit.{options.mode} failed: {type(e).__name__}: {_first_line(e)}"
                try:
                    subclassed = any(type(p) not in (torch.Tensor, torch.nn.Parameter) for p in model.parameters())
                except Exception:  # noqa: BLE001 - a model without parameters() holds no torchao tensors
                    subclassed = False
                if subclassed:
                    reason = reason.rstrip(".") + (
                        ". The variant's weights are torchao quantized tensors, which TorchScript cannot "
                        "trace: ship it as export or onnx (torch.ao's dynamic int8 is the TorchScript path)"
                    )
                raise Unsupported(reason) from e
            torch.jit.save(sm, path)
        return {"mode": options.mode}

    def load(self, path, *, options, manifest):
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = torch.jit.load(path, map_location="cpu")
        m.eval()
        return m
