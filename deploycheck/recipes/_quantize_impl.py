"""Quantization handlers (torch imported here, not at spec validation)."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from ..formats.export import batch_dims, batch_example, export_args, with_signature
from ..models import describe_exc
from ..nn import Cast
from ..protocol import call, rows, take
from . import StepResult
from ._select import select


def run(cfg, model, ctx) -> StepResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dynamic_int8": _dynamic,
            "weight_only_int8": _weight_only,
            "weight_only_int4": _weight_only_int4,
            "static_int8": _static,
            "fp16": _cast,
            "bf16": _cast,
        }[cfg.method](cfg, model, ctx)


def _dynamic(cfg, model, ctx) -> StepResult:
    chosen = select(model, cfg.modules, cfg.skip)
    backend = "torch.ao" if cfg.backend == "auto" else cfg.backend
    if backend == "torch.ao":
        # Measured on this CPU: torch.ao's fbgemm/x86 dynamic kernels beat torchao's eager
        # dynamic-activation path by ~10x on small MLPs, so torch.ao is the default.
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = cfg.engine  # weights are packed for the engine current now
        try:
            qc = (
                torch.ao.quantization.per_channel_dynamic_qconfig
                if cfg.per_channel
                else torch.ao.quantization.default_dynamic_qconfig
            )
            qspec = {name: qc for name, _ in chosen}
            q = torch.ao.quantization.quantize_dynamic(model, qconfig_spec=qspec, dtype=torch.qint8, inplace=False)
            _check_runs(q, model, ctx.example)
        finally:
            torch.backends.quantized.engine = previous
    else:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        names = {n for n, _ in chosen if type(dict(model.named_modules())[n]).__name__ == "Linear"}
        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
        q = model
    return StepResult(
        q,
        f"dynamic int8 ({backend}{', ' + cfg.engine if backend == 'torch.ao' else ''}) on {len(chosen)} modules",
        {"backend": backend, "modules": [n for n, _ in chosen]},
        requires=("torchao",) if backend == "torchao" else (),
        settings={"quantized_engine": cfg.engine} if backend == "torch.ao" else {},
    )


def _check_runs(q, model, example) -> None:
    """Run the torch.ao-quantized model once: some modules (nn.TransformerEncoder's fast path, say)
    read their Linear children's weight tensor, which a packed torch.ao module replaces by a method.
    The failure names the innermost module that was running (from the traceback: hooks would
    switch that fast path off) and the backend that handles it."""
    try:
        with torch.inference_mode():
            call(q, example)
    except Exception as e:
        try:
            with torch.inference_mode():
                call(model, example)
        except Exception:
            return  # the float model fails too: not torch.ao's doing, and reported where the model runs
        names = {id(m): (n or "<model>", type(m).__name__) for n, m in q.named_modules()}
        where, tb = "when run", e.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if id(owner) in names:
                where = f"in module {names[id(owner)][0]!r} ({names[id(owner)][1]})"
            tb = tb.tb_next
        raise ValueError(
            f"torch.ao dynamic int8 made the model fail {where}: {describe_exc(e)}. torch.ao replaces each "
            "quantized Linear by a packed module without a weight tensor, which that module reads; use "
            "backend: torchao (quantize: {method: dynamic_int8, backend: torchao}), or leave its Linear "
            "modules out with skip"
        ) from e


def _weight_only(cfg, model, ctx) -> StepResult:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    chosen = [(n, m) for n, m in select(model, cfg.modules, cfg.skip) if type(m).__name__ == "Linear"]
    names = {n for n, _ in chosen}
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in names)
    return StepResult(
        model,
        f"weight-only int8 (torchao) on {len(chosen)} Linear modules",
        {"backend": "torchao", "modules": sorted(names)},
        requires=("torchao",),
    )


def _weight_only_int4(cfg, model, ctx) -> StepResult:
    """torchao's IntxWeightOnlyConfig(int4, PerGroup): int4 values stored unpacked in int8 and
    dequantized per call - the layout torchao intends for export (torch.export, ExecuTorch). Its
    faster CPU kernel (tinygemm, Int4OpaqueTensor) needs bf16 activations and does not export;
    docs/BENCHMARKS.md measures both."""
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup, quantize_

    chosen = [
        (n, m)
        for n, m in select(model, cfg.modules, cfg.skip)
        if type(m).__name__ == "Linear" and m.in_features % cfg.group_size == 0
    ]
    names = {n for n, _ in chosen}
    if not names:
        raise ValueError(f"no Linear layer has an input size divisible by group_size {cfg.group_size}")
    quantize_(
        model,
        IntxWeightOnlyConfig(
            weight_dtype=torch.int4,  # type: ignore[attr-defined]  # torch >= 2.6 has int1..int7
            granularity=PerGroup(cfg.group_size),
        ),
        filter_fn=lambda m, fqn: fqn in names,
    )
    return StepResult(
        model,
        f"weight-only int4 (torchao intx, group {cfg.group_size}) on {len(chosen)} Linear modules",
        {"backend": "torchao", "group_size": cfg.group_size, "modules": sorted(names)},
        requires=("torchao",),
    )


def _static(cfg, model, ctx) -> StepResult:
    """pt2e: torch.export -> prepare_pt2e (x86 quantizer) -> calibrate -> convert_pt2e."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inputs = ctx.spec.model.inputs
    args, kwargs = export_args(batch_example(ctx.example, True))
    gm = torch.export.export(
        with_signature(model, inputs), args, kwargs=kwargs, dynamic_shapes=batch_dims(True, inputs)
    ).module()
    quantizer = xiq.X86InductorQuantizer()
    qconfig = xiq.get_default_x86_inductor_quantization_config(reduce_range=cfg.reduce_range)
    if cfg.weight_bits == 7:
        # Weights in [-64, 63]: a pair of u8 x s7 products stays below 2^15, so the 16-bit
        # intermediate of non-VNNI int8 dot products never saturates, in torch or onnxruntime.
        qconfig = dataclasses.replace(qconfig, weight=dataclasses.replace(qconfig.weight, quant_min=-64, quant_max=63))
    quantizer.set_global(qconfig)
    prepared = prepare_pt2e(gm, quantizer)
    xtr, _ = ctx.data.train_tensors()
    bs = ctx.spec.data.batch_size
    n = 0
    with torch.no_grad():
        for i in range(cfg.calibration_batches):
            batch = take(xtr, slice(i * bs, (i + 1) * bs))
            if rows(batch) == 0:
                break
            call(prepared, batch)
            n += rows(batch)
    q = convert_pt2e(prepared)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    q = move_exported_model_to_eval(q)
    bits = (
        f"{'7-bit activations (reduce_range)' if cfg.reduce_range else '8-bit activations'}, "
        f"{cfg.weight_bits}-bit weights"
    )
    return StepResult(
        q,
        f"static int8 (pt2e, x86 quantizer, {bits}), calibrated on {n} samples",
        {
            "backend": "torchao.pt2e",
            "calibration_samples": n,
            "reduce_range": cfg.reduce_range,
            "weight_bits": cfg.weight_bits,
        },
        requires=("torchao",),
    )


def _cast(cfg, model, ctx) -> StepResult:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.method]
    return StepResult(Cast(model, dtype), f"cast to {cfg.method} behind a float32 interface", {"dtype": str(dtype)})
