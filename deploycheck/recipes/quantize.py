"""Quantization: dynamic int8, weight-only int8 and int4, static int8 (pt2e), fp16 / bf16 casts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..schema import field

Method = Literal["dynamic_int8", "weight_only_int8", "weight_only_int4", "static_int8", "fp16", "bf16"]
ModuleType = Literal["Linear", "LSTM", "GRU", "Conv1d", "Conv2d"]


@dataclass(frozen=True)
class QuantizeConfig:
    """Quantize the model's weights (and, for dynamic/static int8, activations)."""

    recipe_name: ClassVar[str] = "quantize"

    method: Method = field(doc="dynamic_int8 | weight_only_int8 | weight_only_int4 | static_int8 | fp16 | bf16")
    backend: Literal["auto", "torch.ao", "torchao"] = field(
        "auto",
        doc="implementation; auto picks the measured-faster one on CPU: torch.ao for "
        "dynamic_int8, torchao for weight_only_int8, torchao pt2e for static_int8",
    )
    modules: tuple[ModuleType, ...] = field(
        ("Linear", "LSTM", "GRU"), doc="module types to quantize (dynamic_int8, weight_only_int8)"
    )
    skip: tuple[str, ...] = field((), doc="module name globs left in float (each must match a module)")
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
    per_channel: bool = field(
        False,
        doc="dynamic_int8 (torch.ao): one weight scale per output channel instead of per "
        "tensor: more accurate, slightly larger",
    )

    OPTIONS_BY = "method"
    OPTIONS = {
        "dynamic_int8": ("backend", "modules", "skip", "engine", "per_channel"),
        "weight_only_int8": ("backend", "modules", "skip"),
        "weight_only_int4": ("backend", "modules", "skip", "group_size"),
        "static_int8": ("backend", "calibration_batches", "weight_bits", "reduce_range"),
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
        return []

    def imports(self) -> tuple[str, ...]:
        """Libraries the handler imports. A build runs in a forked child, whose imports die with it;
        the session imports these first (it needs them to unpickle the result anyway), so a build
        does not pay for them twice."""
        if self.backend == "torchao" or (self.backend == "auto" and self.method in ("weight_only_int8", "static_int8")):
            return ("torchao.quantization",) + (("torch.export",) if self.method == "static_int8" else ())
        return ()

    def short(self) -> str:
        return f"quantize:{self.method}" + (f"({self.backend})" if self.backend != "auto" else "")
