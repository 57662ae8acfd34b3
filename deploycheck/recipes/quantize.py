"""Quantization: dynamic int8, weight-only int8 and int4, static int8 (pt2e), fp16 / bf16 casts.
torch and torchao are imported inside the functions that use them, not at spec validation."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from .. import machine
from ..formats.export import batch_dims, batch_example, export_args, with_signature
from ..loading import describe_exc
from ..protocol import call, rows, take
from ..schema import field
from . import Recipe, RecipeContext, StepResult, coverage
from ._select import check_skip, select

Method = Literal["dynamic_int8", "weight_only_int8", "weight_only_int4", "static_int8", "fp16", "bf16"]
ModuleType = Literal["Linear", "LSTM", "GRU", "Conv1d", "Conv2d"]
DEFAULT_MODULES: tuple[ModuleType, ...] = ("Linear", "LSTM", "GRU")


@dataclass(frozen=True)
class QuantizeConfig(Recipe):
    """Quantize the model's weights (and, for dynamic/static int8, activations)."""

    recipe_name: ClassVar[str] = "quantize"

    method: Method = field(doc="dynamic_int8 | weight_only_int8 | weight_only_int4 | static_int8 | fp16 | bf16")
    backend: Literal["auto", "torch.ao", "torchao"] = field(
        "auto",
        doc="implementation; auto picks the measured-faster one on CPU: torch.ao for "
        "dynamic_int8, torchao for weight_only_int8, torchao pt2e for static_int8",
    )
    modules: tuple[ModuleType, ...] = field(
        DEFAULT_MODULES,
        doc="module types to quantize, subclasses included (dynamic_int8, weight_only_int8/int4). torch.ao "
        "converts exact nn.Linear/LSTM/GRU modules, torchao Linear weights only; a convolution listed here is "
        "a spec error naming the method that quantizes it (static_int8). What was converted is read from the "
        "result and gated by thresholds.quantized",
    )
    skip: tuple[str, ...] = field(
        (), doc="module name globs left in float on purpose (each must match a module; not counted as targeted)"
    )
    calibration_batches: int = field(8, ge=1, doc="static_int8: batches of training data used to calibrate")
    engine: Literal["x86", "fbgemm", "qnnpack", "onednn"] = field(
        "x86",
        doc="torch.ao quantized engine for dynamic_int8; recorded in the manifest and set by the loader. "
        "x86/fbgemm quantize activations to 7 bits (fast); qnnpack uses 8 bits (more accurate, slower on x86)",
    )
    weight_bits: Literal[8, 7] = field(
        8,
        doc="static_int8: 7 keeps weights in [-64, 63], so int8 dot products never "
        "saturate their 16-bit intermediate on x86 CPUs without VNNI (AVX2, early "
        "AVX-512): results agree across CI runners, in torch and onnxruntime alike",
    )
    reduce_range: bool = field(
        False,
        doc="static_int8: 7-bit activations (0..127), torch's older fix for the same "
        "saturation; onnxruntime does not keep the 127 clamp (QuantizeLinear "
        "saturates at 255), so ONNX outputs depart from torch's - prefer weight_bits: 7",
    )
    group_size: Literal[32, 64, 128, 256] = field(
        32,
        doc="weight_only_int4: input features per int4 scale (Linear "
        "layers whose input size it does not divide stay float)",
    )
    untie: bool = field(
        False,
        doc="dynamic_int8, weight_only_int8/int4: also quantize a layer whose weight is tied to another "
        "module's (an LM's lm_head and its input embedding). Off: such a layer stays float, so the weight "
        "stays one tensor and the model does not grow",
    )
    per_channel: bool = field(
        False,
        doc="dynamic_int8 (torch.ao): one weight scale per output channel instead of per "
        "tensor: more accurate, slightly larger",
    )

    OPTIONS_BY = "method"
    OPTIONS = {
        "dynamic_int8": ("backend", "modules", "skip", "untie", "engine", "per_channel"),
        "weight_only_int8": ("backend", "modules", "skip", "untie"),
        "weight_only_int4": ("backend", "modules", "skip", "untie", "group_size"),
        "static_int8": ("backend", "skip", "calibration_batches", "weight_bits", "reduce_range"),
        "fp16": ("backend",),
        "bf16": ("backend",),
    }

    def check(self) -> list[tuple[str, str]]:
        if self.method == "static_int8" and self.backend == "torch.ao":
            return [("backend", "static_int8 runs through torchao's pt2e flow; use backend: auto or torchao")]
        if self.method in ("weight_only_int8", "weight_only_int4") and self.backend == "torch.ao":
            return [("backend", f"{self.method} is provided by torchao; use backend: auto or torchao")]
        if self.method in ("fp16", "bf16") and self.backend != "auto":
            return [("backend", f"{self.method} is a plain cast; leave backend at auto")]
        return self._check_modules()

    def _check_modules(self) -> list[tuple[str, str]]:
        """A module kind the method cannot quantize, listed by the user, is a spec error (the
        default list, which names LSTM and GRU for torch.ao, is left to the `quantized` check)."""
        if self.method == "static_int8" or self.method not in INT_METHODS or self.modules == DEFAULT_MODULES:
            return []
        torch_ao = self.method == "dynamic_int8" and self.backend != "torchao"
        able = coverage.TORCH_AO_DYNAMIC if torch_ao else ("Linear",)
        bad = [m for m in self.modules if m not in able]
        if not bad:
            return []
        how = "torch.ao" if torch_ao else "torchao"
        if any(b.startswith("Conv") for b in bad):
            fix = "Conv2d layers are quantized by method: static_int8 (Conv1d only where a ReLU follows)"
        else:
            fix = "dynamic_int8 with backend torch.ao (the default) converts LSTM and GRU"
        return [
            (
                "modules",
                f"{self.method} ({how}) quantizes {', '.join(able)} modules only; {', '.join(bad)} cannot be: {fix}",
            )
        ]

    def imports(self) -> tuple[str, ...]:
        """Libraries the handler imports. A build runs in a forked child, whose imports die with it;
        the session imports these first (it needs them to unpickle the result anyway), so a build
        does not pay for them twice."""
        if self.backend == "torchao" or (self.backend == "auto" and self.method in ("weight_only_int8", "static_int8")):
            return ("torchao.quantization",) + (("torch.export",) if self.method == "static_int8" else ())
        return ()

    def short(self) -> str:
        return f"quantize:{self.method}" + (f"({self.backend})" if self.backend != "auto" else "")

    @property
    def precision(self) -> str | None:
        if self.method in INT8_METHODS:
            return "int8"
        return self.method if self.method in ("fp16", "bf16") else None

    @property
    def batch_sensitive(self) -> bool:
        return self.method == "dynamic_int8"  # activations quantized with each batch's own range

    def targets(self, model: Any) -> list[coverage.Layer] | None:
        """The layers this step means to quantize (None for the fp16/bf16 casts, which convert the
        whole model behind a float32 interface)."""
        if self.method == "static_int8":
            return coverage.targeted(model, coverage.STATIC_TYPES, self.skip)
        if self.method in INT_METHODS:
            return coverage.targeted(model, self.modules, self.skip)
        return None

    def apply(self, model: Any, ctx: RecipeContext) -> StepResult:
        kept = (
            {} if self.untie or self.method not in INT_METHODS or self.method == "static_int8" else coverage.tied(model)
        )
        cfg = dataclasses.replace(self, skip=self.skip + tuple(kept)) if kept else self
        before = cfg.targets(model)  # first: torchao rewrites the model in place
        params = _param_count(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = {
                "dynamic_int8": _dynamic,
                "weight_only_int8": _weight_only,
                "weight_only_int4": _weight_only_int4,
                "static_int8": _static,
                "fp16": _cast,
                "bf16": _cast,
            }[self.method](cfg, model, ctx)
        grown = _param_count(out.model)
        if grown > params and not self.untie:
            raise ValueError(
                f"the step grew the model from {params:,} to {grown:,} parameters (a shared weight was split "
                "into copies); set untie: true to accept that"
            )
        if kept:
            out.details["kept_tied"] = kept
            out.summary += "; kept float to stay tied: " + ", ".join(f"{m} (shares {w})" for m, w in kept.items())
        if before is not None:
            # what it converted, read from the result: the request is not evidence
            cov = coverage.coverage(
                before,
                out.model,
                method=self.method,
                backend="torchao" if str(out.details.get("backend", "")).startswith("torchao") else "torch.ao",
                group_size=self.group_size if self.method == "weight_only_int4" else None,
            )
            out.details["coverage"] = cov.to_dict()
            done = len(cov.converted)
            out.summary += (
                f"; converted {done} of {len(cov.targeted)} targeted layers "
                f"({100 * cov.fraction:.1f}% of their weights)"
            )
        return out


#: the methods whose arithmetic runs in int8 (int4 weights are dequantized per call)
INT8_METHODS = ("dynamic_int8", "weight_only_int8", "static_int8")
#: the methods that convert chosen layers to integer weights (the `quantized` check reads what they did)
INT_METHODS = INT8_METHODS + ("weight_only_int4",)


def saturation_hint(steps) -> str:
    """On x86 without VNNI, int8 u8 x s8 dot products saturate a 16-bit intermediate: say so, and
    name the option that avoids it. Empty where it cannot be the cause (no int8 step, a VNNI CPU)."""
    if not any(s.precision == "int8" for s in steps) or not machine.saturation_risk():
        return ""
    fp = machine.fingerprint()
    static = [s for s in steps if isinstance(s, QuantizeConfig) and s.method == "static_int8"]
    if static and not all(s.weight_bits == 7 for s in static):
        fix = "quantize with `weight_bits: 7` (weights in [-64, 63] keep every pair of u8 x s7 products inside 16 bits)"
    elif static:
        fix = "weight_bits is already 7, so saturation is ruled out; int8 rounding still differs by ISA"
    else:
        fix = (
            "dynamic int8 on the x86/fbgemm engine already uses 7-bit activations; the ISA's int8 rounding "
            "still differs, so widen the tolerance or approve this class with `pytest --snapshot-update`"
        )
    return (
        f"\n  likely cause: this CPU ({machine.isa_class(fp)}) has no VNNI, so int8 dot products (u8 x s8) "
        f"accumulate pairs in a saturating 16-bit intermediate and results differ from VNNI machines; {fix}"
    )


# --- apply (torch imported inside) ---------------------------------------------------------------
def _dynamic(cfg, model, ctx) -> StepResult:
    import torch

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

        names = {n for n, m in chosen if isinstance(m, torch.nn.Linear)}
        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
        q = model
    return StepResult(
        q,
        f"dynamic int8 ({backend}{', ' + cfg.engine if backend == 'torch.ao' else ''})",
        {"backend": backend, "modules": [n for n, _ in chosen]},
        requires=("torchao",) if backend == "torchao" else (),
        settings={"quantized_engine": cfg.engine} if backend == "torch.ao" else {},
    )


def _param_count(model) -> int:
    """Parameters, a shared tensor counted once (what ``model.parameters()`` yields)."""
    try:
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a graph module without parameters() counts as none
        return 0


def _check_runs(q, model, example) -> None:
    """Run the torch.ao-quantized model once: some modules (nn.TransformerEncoder's fast path, say)
    read their Linear children's weight tensor, which a packed torch.ao module replaces by a method.
    The failure names the innermost module that was running (from the traceback: hooks would
    switch that fast path off) and the backend that handles it."""
    import torch

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
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    chosen = [(n, m) for n, m in select(model, cfg.modules, cfg.skip) if isinstance(m, torch.nn.Linear)]
    names = {n for n, _ in chosen}
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn in names)
    return StepResult(
        model,
        "weight-only int8 (torchao)",
        {"backend": "torchao", "modules": sorted(names)},
        requires=("torchao",),
    )


def _weight_only_int4(cfg, model, ctx) -> StepResult:
    """torchao's IntxWeightOnlyConfig(int4, PerGroup): int4 values stored unpacked in int8 and
    dequantized per call - the layout torchao intends for export (torch.export, ExecuTorch). Its
    faster CPU kernel (tinygemm, Int4OpaqueTensor) needs bf16 activations and does not export;
    docs/BENCHMARKS.md measures both."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup, quantize_

    chosen = [
        (n, m)
        for n, m in select(model, cfg.modules, cfg.skip)
        if isinstance(m, torch.nn.Linear) and m.in_features % cfg.group_size == 0
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
        f"weight-only int4 (torchao intx, group {cfg.group_size})",
        {"backend": "torchao", "group_size": cfg.group_size, "modules": sorted(names)},
        requires=("torchao",),
    )


def _static(cfg, model, ctx) -> StepResult:
    """pt2e: torch.export -> prepare_pt2e (x86 quantizer) -> calibrate -> convert_pt2e."""
    import torch
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    inputs = ctx.spec.model.inputs
    args, kwargs = export_args(batch_example(ctx.example, True))
    wrapped = with_signature(model, inputs)
    fixed = ""
    try:
        ep = torch.export.export(wrapped, args, kwargs=kwargs, dynamic_shapes=batch_dims(True, inputs))
    except Exception as e:
        # a layer (nn.GRU, nn.LSTM) specialised a declared dynamic dimension while tracing: quantize
        # at the example's size instead of failing every format; the summary says so, and the
        # dynamic check then tries the sizes the artifact cannot take
        if "specialized it to be a constant" not in str(e):
            raise
        ep = torch.export.export(wrapped, args, kwargs=kwargs, dynamic_shapes=batch_dims(True, inputs, False))
        fixed = ", ".join(
            f"{d.name}={inp.shape[d.dim]}" for _, inp in inputs.items for d in inp.dynamic_dims if d.dim > 0
        )
    gm = ep.module()
    _mark_sources(gm, dict(wrapped.named_modules()))
    quantizer = xiq.X86InductorQuantizer()
    qconfig = xiq.get_default_x86_inductor_quantization_config(reduce_range=cfg.reduce_range)
    if cfg.weight_bits == 7:
        # Weights in [-64, 63]: a pair of u8 x s7 products stays below 2^15, so the 16-bit
        # intermediate of non-VNNI int8 dot products never saturates, in torch or onnxruntime.
        qconfig = dataclasses.replace(qconfig, weight=dataclasses.replace(qconfig.weight, quant_min=-64, quant_max=63))
    quantizer.set_global(qconfig)
    if cfg.skip:  # the modules under a skip glob stay float (each glob must match a module)
        check_skip(model, cfg.skip)
        prefix = "" if wrapped is model else "inner."
        for name, _ in model.named_modules():
            if name and coverage.skipped(name, cfg.skip):
                quantizer.set_module_name_qconfig(prefix + name, None)
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
        f"static int8 (pt2e, x86 quantizer, {bits}), calibrated on {n} samples"
        + (
            f"; traced at {fixed} (a layer specialised that dimension, so the int8 model takes that size only)"
            if fixed
            else ""
        ),
        {
            "fixed_dims": fixed or None,
            "backend": "torchao.pt2e",
            "calibration_samples": n,
            "reduce_range": cfg.reduce_range,
            "weight_bits": cfg.weight_bits,
        },
        requires=("torchao",),
    )


def _mark_sources(gm, modules: dict) -> None:
    """Help pt2e's x86 quantizer find what it quantizes. Under non-strict export it groups a graph's
    operators by the module that produced them and matches that module's exact class, so:

    - a subclass of nn.Conv2d (or Conv1d/3d, Linear) that calls the functional op, as EfficientNet's
      same-padding convolution does, fell through and stayed float: its convolution or linear
      operator is marked as coming from the torch.nn class it derives from;
    - an activation module called several times (one ReLU6 instance shared by a block) made one
      group with several outputs, which the quantizer's conv + activation fusion rejects ("Input
      partition has more than one output node"): each of its calls is marked as a group of its own.
    """
    import torch

    nn = torch.nn
    bases = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d, "linear": nn.Linear}
    activations = (nn.ReLU6, nn.Hardtanh, nn.ReLU, nn.Hardswish, nn.SiLU)  # ReLU6 derives from Hardtanh
    for node in gm.graph.nodes:
        if node.op != "call_function" or "source_fn_stack" in node.meta:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        fqn = list(stack.values())[-1][0]
        mod = modules.get(fqn)
        base = bases.get(str(getattr(node.target, "__name__", "")).split(".")[0])
        if base is not None and isinstance(mod, base) and type(mod) is not base:
            node.meta["source_fn_stack"] = [(fqn, base)]
            continue
        act = next((a for a in activations if isinstance(mod, a)), None)
        if act is not None:
            node.meta["source_fn_stack"] = [(node.name, act)]


def _cast(cfg, model, ctx) -> StepResult:
    import torch

    from ..nn import Cast

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.method]
    return StepResult(Cast(model, dtype), f"cast to {cfg.method} behind a float32 interface", {"dtype": str(dtype)})
