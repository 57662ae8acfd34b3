"""torch.export -> ``.pt2`` (an ExportedProgram archive), reloaded with ``torch.export.load``."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.schema import field
from . import Format, Unsupported, register


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


@register
class ExportFormat(Format):
    name = "export"
    suffix = ".pt2"
    Options = ExportOptions
    description = "torch.export ExportedProgram (.pt2)"

    def save(self, model, path, *, example, options, arch):
        import torch
        from torch.export import Dim
        x = batch_example(example, options.dynamic_batch)
        dyn = ({0: Dim("batch", min=1, max=65536)},) if options.dynamic_batch else None
        try:
            ep = torch.export.export(model, (x,), dynamic_shapes=dyn, strict=options.strict)
        except Exception as e:  # the exporter's own reason is the message users need
            raise Unsupported(f"torch.export failed: {type(e).__name__}: {_first_line(e)}") from e
        torch.export.save(ep, path)
        return {"dynamic_batch": options.dynamic_batch}

    def load(self, path, *, options, manifest):
        import torch
        return torch.export.load(path).module()


def _first_line(e: BaseException) -> str:
    import re
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # exporters colour their messages
    return text[0][:500] if text else ""
