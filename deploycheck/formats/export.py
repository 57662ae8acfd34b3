"""torch.export -> ``.pt2`` (an ExportedProgram archive), reloaded with ``torch.export.load``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from ..loading import essence
from ..schema import field
from . import Format, SaveContext, Unsupported


@dataclass(frozen=True)
class ExportOptions:
    """Options of the torch.export format."""

    dynamic_batch: bool = field(True, doc="export with a dynamic batch dimension")
    dynamic_seq: bool = field(
        True,
        doc="keep model.inputs' declared dynamic dimensions (a causal LM's sequence "
        "length) dynamic; false specialises them to the example's sizes",
    )
    strict: bool = field(False, doc="strict (TorchDynamo) tracing instead of non-strict")


def batch_example(example, dynamic: bool):
    """torch.export specializes a size-1 dimension, so a dynamic batch is traced with batch 2
    (every named input alike)."""
    import torch

    if isinstance(example, dict):
        return {k: batch_example(v, dynamic) for k, v in example.items()}
    if dynamic and example.shape[0] == 1:
        return torch.cat([example, example], 0)
    return example


def batch_dims(dynamic: bool, inputs=None, declared: bool = True):
    """dynamic_shapes: the batch dimension (when ``dynamic``) and every declared dynamic
    dimension, as ``Dim`` objects shared by name; a tuple for one input, a dict for named ones.
    ``declared=False`` leaves the declared ones out (the export specialises them)."""
    from torch.export import Dim

    if inputs is None or not inputs.named:
        dims = {0: Dim("batch", min=1, max=65536)} if dynamic else {}
        for d in inputs.first.dynamic_dims if inputs is not None and declared else ():
            if d.dim > 0:
                dims[d.dim] = Dim(d.name, min=d.min or 1, max=d.max or 65536)
        return (dims,) if dims else None
    made: dict = {}

    def dim(name, lo, hi):
        if name not in made:
            made[name] = Dim(name, min=lo or 1, max=hi or 65536)
        return made[name]

    out = {}
    for name, inp in inputs.items:
        dims = {0: dim("batch", 1, 65536)} if dynamic else {}
        for d in inp.dynamic_dims if declared else ():
            if d.dim > 0:
                dims[d.dim] = dim(d.name, d.min, d.max)
        out[name] = dims or None
    return out


def with_signature(model, inputs=None):
    """``model`` as the tracers see it: one whose ``forward`` takes ``*args`` / ``**kwargs`` (the
    fp16/bf16 ``Cast`` wrapper) is wrapped in a module whose ``forward`` names the declared inputs,
    so torch.export binds ``dynamic_shapes`` and keyword inputs to them, the ONNX graph's inputs
    carry their names and ``torch.jit.trace`` accepts them by keyword. Without this, every
    reduced-precision variant with named inputs would be reported as a format limit instead of
    being exported. Only traced formats use the wrapper (their files hold a graph, not the class)."""
    import inspect

    import torch

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return model
    if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return model
    named = inputs is not None and inputs.named
    names = [n for n, _ in inputs.items] if named else ["x"]

    def forward(self, *args, **kwargs):
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        return self.inner(**given) if named else self.inner(*[given[n] for n in names])

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", kind), *(inspect.Parameter(n, kind) for n in names)]
    )

    def init(self, inner):
        torch.nn.Module.__init__(self)
        self.inner = inner

    cls = type(type(model).__name__, (torch.nn.Module,), {"__init__": init, "forward": forward})
    return cls(model).train(model.training)


def export_args(example):
    """(args, kwargs) for torch.export / the ONNX exporter: named inputs go by keyword."""
    if isinstance(example, dict):
        return (), example
    return (example,), None


def export_program(model, example, *, dynamic_batch: bool, strict: bool = False, inputs=None, dynamic_seq: bool = True):
    """torch.export with the batch dimension and the declared dynamic dimensions dynamic; a
    failure is Unsupported with the exporter's reason."""
    import torch

    x = batch_example(example, dynamic_batch)
    args, kwargs = export_args(x)
    try:
        return torch.export.export(
            with_signature(model, inputs),
            args,
            kwargs=kwargs,
            dynamic_shapes=batch_dims(dynamic_batch, inputs, dynamic_seq),
            strict=strict,
        )
    except Exception as e:  # the exporter's own reason is the message users need
        reason = f"torch.export failed: {type(e).__name__}: {_first_line(e)}"
        if "specialized it to be a constant" in str(e):
            reason = reason.rstrip(".") + (
                ". A layer fixed that dimension while tracing (nn.GRU and nn.LSTM specialise the sequence "
                "length under torch.export): the format cannot hold it dynamic; give this format "
                "`dynamic_seq: false` to export at the example's size, or ship TorchScript"
            )
        raise Unsupported(reason) from e


class ExportFormat(Format):
    name = "export"
    suffix = ".pt2"
    Options = ExportOptions
    description = "torch.export ExportedProgram (.pt2)"

    def save(self, model, path, ctx: SaveContext):
        example, options, inputs = ctx.example, ctx.options, ctx.inputs
        import torch

        ep = export_program(
            model,
            example,
            dynamic_batch=options.dynamic_batch,
            strict=options.strict,
            inputs=inputs,
            dynamic_seq=options.dynamic_seq,
        )
        torch.export.save(ep, path)
        return {"dynamic_batch": options.dynamic_batch, "dynamic_seq": options.dynamic_seq}

    def load(self, path, *, options, manifest):
        import torch

        with _export_load_warnings() as warned:
            try:
                return torch.export.load(path).module()
            except RuntimeError as e:
                # torch.export.load logs the archive reader's error as a warning and raises "Please
                # check the warnings above", which a worker's captured output hides: name the cause.
                cause = next((r.exc_info[1] for r in warned if r.exc_info and r.exc_info[1] is not None), None)
                if cause is None or "check the warnings above" not in str(e):
                    raise
                raise RuntimeError(
                    f"not a readable torch.export archive ({type(cause).__name__}: {_first_line(cause)}); "
                    "it was not written by torch.export.save, or it was altered after: re-export it"
                ) from cause


@contextlib.contextmanager
def _export_load_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings torch.export logs while loading, kept to name a failure's cause."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("torch.export")
    handler = _Keep(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _first_line(e: BaseException) -> str:
    """The exporter's message as one line, with the cause torch prints after its first line."""
    return essence(str(e))  # exporters colour their messages: essence strips that


def exporter_reason(e: BaseException) -> str:
    """An exporter's failure as one line that keeps its cause: the ONNX exporter's first line is
    "Failed to export ... step 1/3 ... Next steps:" (advice), its cause is the chained exception."""
    head = _first_line(e)
    head = head.split(" Next steps:")[0].strip().rstrip(".")
    inner, seen = e, {id(e)}
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    if inner is e:
        return f"{type(e).__name__}: {head}"
    return f"{type(e).__name__}: {head}: caused by {type(inner).__name__}: {_first_line(inner)}"
