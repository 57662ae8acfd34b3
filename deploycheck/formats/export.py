"""torch.export -> ``.pt2`` (an ExportedProgram archive), reloaded with ``torch.export.load``."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import field
from . import Format, Unsupported


@dataclass(frozen=True)
class ExportOptions:
    """Options of the torch.export format."""

    dynamic_batch: bool = field(True, doc="export with a dynamic batch dimension")
    strict: bool = field(False, doc="strict (TorchDynamo) tracing instead of non-strict")


def batch_example(example, dynamic: bool):
    """torch.export specializes a size-1 dimension, so a dynamic batch is traced with batch 2."""
    import torch
    if dynamic and example.shape[0] == 1:
        return torch.cat([example, example], 0)
    return example


def batch_dims(dynamic: bool):
    """dynamic_shapes for a single input whose first dimension is the batch."""
    from torch.export import Dim
    return ({0: Dim("batch", min=1, max=65536)},) if dynamic else None


def export_program(model, example, *, dynamic_batch: bool, strict: bool = False):
    """torch.export with the batch dimension dynamic; a failure is Unsupported with the exporter's reason."""
    import torch
    x = batch_example(example, dynamic_batch)
    try:
        return torch.export.export(model, (x,), dynamic_shapes=batch_dims(dynamic_batch), strict=strict)
    except Exception as e:  # the exporter's own reason is the message users need
        raise Unsupported(f"torch.export failed: {type(e).__name__}: {_first_line(e)}") from e


class ExportFormat(Format):
    name = "export"
    suffix = ".pt2"
    Options = ExportOptions
    description = "torch.export ExportedProgram (.pt2)"

    def save(self, model, path, *, example, options, arch):
        import torch
        ep = export_program(model, example, dynamic_batch=options.dynamic_batch, strict=options.strict)
        torch.export.save(ep, path)
        return {"dynamic_batch": options.dynamic_batch}

    def load(self, path, *, options, manifest):
        import torch
        return torch.export.load(path).module()


def _first_line(e: BaseException) -> str:
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # exporters colour their messages
    return text[0][:500] if text else ""
