"""torch.export -> ``.pt2`` (an ExportedProgram archive), reloaded with ``torch.export.load``."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.schema import field
from . import Format, Unsupported


@dataclass(frozen=True)
class ExportOptions:
    """Options of the torch.export format."""

    dynamic_batch: bool = field(True, doc="export with a dynamic batch dimension")
    dynamic_seq: bool = field(True, doc="keep a model's declared dynamic dimensions (a causal LM's sequence "
                                        "length) dynamic; false specialises them to the example's sizes")
    strict: bool = field(False, doc="strict (TorchDynamo) tracing instead of non-strict")


def batch_example(example, dynamic: bool):
    """torch.export specializes a size-1 dimension, so a dynamic batch is traced with batch 2."""
    import torch
    if dynamic and example.shape[0] == 1:
        return torch.cat([example, example], 0)
    return example


def model_dynamic_dims(model) -> dict[int, str]:
    """The input dimensions a model declares dynamic besides the batch (``dynamic_dims`` on it or on
    a module inside a recipe's wrapper), e.g. ``{2: "seq"}`` for a causal LM's sequence length."""
    for m in model.modules() if hasattr(model, "modules") else [model]:
        dims = getattr(m, "dynamic_dims", None)
        if dims:
            return dict(dims)
    return {}


def batch_dims(dynamic: bool, extra: dict[int, str] | None = None):
    """dynamic_shapes for a single input whose first dimension is the batch, plus ``extra`` dims."""
    from torch.export import Dim
    dims = {0: Dim("batch", min=1, max=65536)} if dynamic else {}
    for i, name in (extra or {}).items():
        dims[i] = Dim(name, min=2, max=65536)
    return (dims,) if dims else None


def export_program(model, example, *, dynamic_batch: bool, dynamic_seq: bool = True, strict: bool = False):
    """torch.export with the batch dimension (and the model's declared dimensions) dynamic; a
    failure is Unsupported with the exporter's reason."""
    import torch
    x = batch_example(example, dynamic_batch)
    extra = model_dynamic_dims(model) if dynamic_seq else {}
    try:
        return torch.export.export(model, (x,), dynamic_shapes=batch_dims(dynamic_batch, extra), strict=strict)
    except Exception as e:  # the exporter's own reason is the message users need
        raise Unsupported(f"torch.export failed: {type(e).__name__}: {_first_line(e)}") from e


class ExportFormat(Format):
    name = "export"
    suffix = ".pt2"
    Options = ExportOptions
    description = "torch.export ExportedProgram (.pt2)"

    def save(self, model, path, *, example, options, arch):
        import torch
        ep = export_program(model, example, dynamic_batch=options.dynamic_batch, dynamic_seq=options.dynamic_seq,
                            strict=options.strict)
        torch.export.save(ep, path)
        return {"dynamic_batch": options.dynamic_batch, "dynamic_seq": options.dynamic_seq}

    def load(self, path, *, options, manifest):
        import torch
        return torch.export.load(path).module()


def _first_line(e: BaseException) -> str:
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # exporters colour their messages
    return text[0][:500] if text else ""
