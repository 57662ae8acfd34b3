"""ONNX through the dynamo exporter (``torch.onnx.export(dynamo=True)``), run with onnxruntime."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from ..schema import field
from . import Format, SaveContext, Unsupported
from .export import batch_dims, batch_example, export_args, exporter_reason, with_signature

#: onnx.TensorProto.BFLOAT16 (onnx itself is not imported to run a file)
ONNX_BFLOAT16 = 16


@dataclass(frozen=True)
class OnnxOptions:
    """Options of the ONNX format."""

    opset: int = field(18, ge=7, doc="ONNX opset version")
    dynamic_batch: bool = field(True, doc="export with a dynamic batch dimension")
    dynamic_seq: bool = field(
        True,
        doc="keep model.inputs' declared dynamic dimensions (a causal LM's sequence "
        "length) dynamic; false specialises them to the example's sizes",
    )


class OnnxFormat(Format):
    name = "onnx"
    suffix = ".onnx"
    Options = OnnxOptions
    description = "ONNX (dynamo exporter), run with onnxruntime on CPU"

    def save(self, model, path, ctx: SaveContext):
        example, options, inputs = ctx.example, ctx.options, ctx.inputs
        import torch

        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise Unsupported(
                "the ONNX dynamo exporter needs onnxscript: pip install 'deploycheck[onnx]'", lasting=False
            ) from e
        x = batch_example(example, options.dynamic_batch)
        dyn = batch_dims(options.dynamic_batch, inputs, options.dynamic_seq)
        args, kwargs = export_args(x)
        # The exporter prints progress lines; keep them out of pytest's output.
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                prog = torch.onnx.export(
                    with_signature(model, inputs),
                    args,
                    kwargs=kwargs,
                    dynamo=True,
                    dynamic_shapes=dyn,
                    opset_version=options.opset,
                    external_data=False,
                )
            except Exception as e:
                raise Unsupported(f"torch.onnx.export failed: {exporter_reason(e)}") from e
        if prog is None:
            raise Unsupported("torch.onnx.export returned no program")
        prog.save(path)
        return {"opset": options.opset, "dynamic_batch": options.dynamic_batch, "dynamic_seq": options.dynamic_seq}

    def load(self, path, *, options, manifest):
        import numpy as np
        import onnxruntime as ort
        import torch

        so = ort.SessionOptions()
        threads = torch.get_num_threads()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            if "Could not find an implementation" in str(e) and _holds_bfloat16(path):
                raise RuntimeError(
                    f"no kernel for bfloat16 on onnxruntime's CPU provider (the graph computes in bfloat16): {e}"
                ) from e
            raise
        names = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]

        def value(t):
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16: onnxruntime gets the bits and their type
                bits = t.contiguous().view(torch.int16).numpy().view(np.uint16)
                return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, ONNX_BFLOAT16)
            return np.ascontiguousarray(t.numpy())

        def feed(args, kwargs):
            if kwargs:  # named inputs: the graph's inputs carry the model's argument names
                missing = [n for n in names if n not in kwargs]
                if missing:
                    raise ValueError(f"the ONNX graph takes inputs {names}; not given: {missing}")
                return {n: value(kwargs[n]) for n in names}
            return {n: value(a) for n, a in zip(names, args, strict=False)}

        def run(*args, **kwargs):
            got = sess.run(None, feed(args, kwargs))
            # every graph output, in the graph's order (the exporter flattens tuples and dicts in
            # their own order); a lone output is returned as it is
            return torch.from_numpy(got[0]) if len(outs) == 1 else tuple(torch.from_numpy(g) for g in got)

        return run


def _holds_bfloat16(path: str) -> bool:
    """Whether the ONNX graph has a bfloat16 weight or value (onnxruntime's CPU provider lacks
    most bfloat16 kernels, and says only that it found no implementation)."""
    import onnx

    try:
        g = onnx.load(path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - an unreadable file is diagnosed by the load itself
        return False
    bf16 = onnx.TensorProto.BFLOAT16
    values = [*g.input, *g.output, *g.value_info]
    return any(t.data_type == bf16 for t in g.initializer) or any(v.type.tensor_type.elem_type == bf16 for v in values)
