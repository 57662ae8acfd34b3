"""Acceptance thresholds: what each check gates, per spec and per variant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..registry import unknown
from .loader import LMap
from .schema import (
    Ctx,
    Invalid,
    build_fields,
    dataclass_schema,
    field,
    type_hints,
)


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
