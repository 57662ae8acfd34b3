"""AOTInductor: torch.export compiled ahead of time into a ``.pt2`` package of native code.

The compiled deployment path for torch.export, and where pt2e int8 graphs get real CPU speed.
Compiling takes tens of seconds per model, so specs opt in per variant. A package compiled for
one batch size can silently return the wrong number of rows for another: the dynamic batch
option is on by default and the worker's shape check catches the rest.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from ..schema import field
from . import Format, SaveContext, Unsupported
from .export import _first_line, export_program


@dataclass(frozen=True)
class AotiOptions:
    """Options of the AOTInductor format."""

    dynamic_batch: bool = field(True, doc="compile with a dynamic batch dimension")


class AotiFormat(Format):
    name = "aoti"
    suffix = ".aoti.pt2"
    Options = AotiOptions
    description = "AOTInductor package (compiled torch.export, .pt2); opt-in: compiling takes tens of seconds"

    def save(self, model, path, ctx: SaveContext):
        example, options, inputs = ctx.example, ctx.options, ctx.inputs
        import torch

        ep = export_program(model, example, dynamic_batch=options.dynamic_batch, inputs=inputs)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                torch._inductor.aoti_compile_and_package(ep, package_path=path)
            except Exception as e:
                raise Unsupported(f"AOTInductor compilation failed: {type(e).__name__}: {_first_line(e)}") from e
        return {"dynamic_batch": options.dynamic_batch}

    def load(self, path, *, options, manifest):
        import torch

        fn = torch._inductor.aoti_load_package(path)

        def run(*args, **kwargs):
            # The compiled kernels index their inputs as contiguous: a strided view (a slice of a
            # longer sequence) gives wrong numbers without an error (measured: 0.55 off on a
            # token model), so every input is made contiguous first.
            c = lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t  # noqa: E731
            return fn(*(c(a) for a in args), **{k: c(v) for k, v in kwargs.items()})

        return run
