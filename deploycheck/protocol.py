"""What the test process asks of a fresh worker process, and what it answers: typed, and written
as JSON files between the two (see :mod:`deploycheck.isolation`, :mod:`deploycheck.worker`).

:func:`load_request` is the one builder: the runner and ``deploycheck inspect`` both use it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from .outputs import flatten, pick


@dataclass(frozen=True)
class ArtifactRef:
    """One file to load: its path, format name, the format's options and its manifest.

    The manifest is data read from a file (it may come from anywhere); ``code`` is the factory
    and kwargs that rebuild a state dict, and it comes from the spec alone (see
    :func:`deploycheck.formats.integrity.vet_manifest`)."""

    artifact: str
    format: str
    options: dict = field(default_factory=dict)
    manifest: dict | None = None
    code: dict | None = None


@dataclass(frozen=True)
class LatencyPlan:
    """How the worker measures latency; with ``baseline``, side by side with a control."""

    example: str
    warmup: int
    min_rounds: int
    max_time_s: float
    round_ms: float
    confidence: float
    batch_sizes: tuple[int, ...] = ()
    baseline: ArtifactRef | None = None  # None for a variant: the baseline has no artifact in this format
    ratio_limit: float | None = None


@dataclass(frozen=True)
class GeneratePlan:
    """Greedy generation in the worker (causal LMs): each prompt's ids, ``new_tokens`` tokens each."""

    prompts: str  # torch.save'd list of token-id lists
    new_tokens: int
    eos_id: int | None = None
    kv_cache: bool = True  # through the artifact's KV-cache step when its manifest has one
    # prefill/decode timing: warmup, min_rounds, max_time_s, round_ms, confidence, prefill_limit,
    # decode_limit, and the baseline's ArtifactRef as a dict (None: no timing asked)
    timing: dict | None = None


@dataclass(frozen=True)
class WorkerRequest:
    target: ArtifactRef
    inputs: str  # torch.save'd list of evaluation batches
    outputs: str  # where the worker saves its outputs
    result: str  # where it writes its WorkerResult as JSON
    threads: int = 1
    latency: LatencyPlan | None = None
    extra_inputs: str | None = None  # semantic triplets' texts, run after the evaluation batches
    dynamic_inputs: str | None = None  # batches at each declared dynamic dimension's sizes (see runner)
    memory_mb: int | None = None
    python_path: tuple[str, ...] = ()  # only for formats that import the model's code
    generate: GeneratePlan | None = None
    # only the latency measurement: the evaluation it came with is reused from the cache
    timing_only: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> WorkerRequest:
        lat = d.get("latency")
        if lat is not None:
            base = lat.get("baseline")
            lat = LatencyPlan(
                **{
                    **lat,
                    "baseline": ArtifactRef(**base) if base else None,
                    "batch_sizes": tuple(lat.get("batch_sizes", ())),
                }
            )
        gen = d.get("generate")
        return cls(
            **{
                **d,
                "target": ArtifactRef(**d["target"]),
                "latency": lat,
                "python_path": tuple(d.get("python_path", ())),
                "generate": GeneratePlan(**gen) if gen else None,
            }
        )


def _typed(where: str, v: Any, kinds: tuple[type, ...], *, optional: bool = False) -> Any:
    """``v`` when it is one of ``kinds`` (None too with ``optional``); a JSON number read back as an
    int where a float is wanted is fine, a bool is never a number."""
    if v is None and optional:
        return v
    if isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds):
        return v
    raise ValueError(f"worker result: {where}: expected {' or '.join(k.__name__ for k in kinds)}, got {v!r:.60}")


_NUM = (float, int)


@dataclass
class Latency:
    """What the worker measured (see :func:`deploycheck.worker._latency`): the variant's own
    percentiles in ms, and against a baseline the side-by-side verdict of
    :func:`deploycheck.timing.side_by_side` (``ratio``) or why there is none (``ratio_error``).

    A dict only at the JSON edge: :meth:`from_json` checks every field's type, since the worker's
    JSON (and a cached copy of it) is data, not code."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    stdev_ms: float
    rounds: int
    samples_ms: list[float]
    calls_per_round: int
    batch: int
    throughput_per_s: float | None = None  # rows per second at the example's batch
    throughput: dict[str, dict[str, float]] | None = None  # batch size -> p50_ms, samples_per_s
    ratio: dict[str, Any] | None = None  # timing.side_by_side's verdict: ratio, CI, decision, control
    ratio_error: str | None = None  # why there is no side-by-side measurement

    def get(self, key: str) -> Any:
        """A field by name (the report's and checks' ``p50_ms``-style lookups), None if unknown."""
        return getattr(self, key, None) if key in _LATENCY_FIELDS else None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> Latency:
        if not isinstance(d, dict):
            raise ValueError(f"worker result: latency: expected an object, got {d!r:.60}")
        unknown = sorted(set(d) - _LATENCY_FIELDS)
        if unknown:
            raise ValueError(f"worker result: latency: unknown keys {unknown}")
        w = "latency."
        got: dict[str, Any] = {}
        for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "stdev_ms"):
            got[k] = float(_typed(w + k, d.get(k), _NUM))
        for k in ("rounds", "calls_per_round", "batch"):
            got[k] = _typed(w + k, d.get(k), (int,))
        samples = _typed(w + "samples_ms", d.get("samples_ms"), (list,))
        got["samples_ms"] = [float(_typed(f"{w}samples_ms[{i}]", v, _NUM)) for i, v in enumerate(samples)]
        tps = _typed(w + "throughput_per_s", d.get("throughput_per_s"), _NUM, optional=True)
        got["throughput_per_s"] = None if tps is None else float(tps)
        thr = _typed(w + "throughput", d.get("throughput"), (dict,), optional=True)
        if thr is not None:
            thr = {
                str(bs): {
                    k: float(_typed(f"{w}throughput.{bs}.{k}", _typed(f"{w}throughput.{bs}", p, (dict,)).get(k), _NUM))
                    for k in ("p50_ms", "samples_per_s")
                }
                for bs, p in thr.items()
            }
        got["throughput"] = thr
        got["ratio"] = _typed(w + "ratio", d.get("ratio"), (dict,), optional=True)
        if got["ratio"] is not None:
            for k in ("ratio", "ci_low", "ci_high", "confidence"):
                _typed(f"{w}ratio.{k}", got["ratio"].get(k), _NUM)
            _typed(w + "ratio.pairs", got["ratio"].get("pairs"), (int,))
            _typed(w + "ratio.decision", got["ratio"].get("decision"), (str,))
        got["ratio_error"] = _typed(w + "ratio_error", d.get("ratio_error"), (str,), optional=True)
        return cls(**got)


_LATENCY_FIELDS = frozenset(f.name for f in dataclasses.fields(Latency))


@dataclass
class WorkerResult:
    """The worker's answer. ``ok`` False: ``stage`` (load, latency, run), ``kind`` and ``message`` say why."""

    ok: bool = False
    stage: str | None = None
    kind: str | None = None
    message: str = ""
    traceback: str = ""
    threads: int | None = None
    pid: int | None = None
    load_s: float = 0.0
    latency: Latency | None = None
    output_shape: list = field(default_factory=list)
    output_shapes: dict = field(default_factory=dict)  # every output's shape, by name
    dynamic_errors: list = field(default_factory=list)  # per dynamic-size batch: None, or why it failed
    peak_rss_mb: float | None = None
    cached: bool = False  # reused from the cache, not measured in this session
    retimed: bool = False  # the evaluation reused from the cache, its latency measured in this session
    generations: list | None = None  # greedy new-token ids per prompt (a GeneratePlan was given)
    generation_s: float | None = None  # wall time of the whole generation loop
    generation_error: str | None = None  # why the generation loop failed (the evaluation run succeeded)
    generation_path: str | None = None  # "kv-cache" or "full-recompute"
    generation_timing: dict | None = None  # prefill and decode times (and ratios vs the baseline)
    generation_memory: dict | None = None  # peak memory of the generation (see deploycheck.lm_worker)

    def fail(self, stage: str, kind: str, message: str, traceback: str = "") -> WorkerResult:
        self.ok, self.stage, self.kind, self.message, self.traceback = False, stage, kind, message, traceback
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> WorkerResult:
        known = {f.name for f in dataclasses.fields(cls)}
        res = cls(**{k: v for k, v in d.items() if k in known and k != "latency"})
        if d.get("latency") is not None:
            res.latency = Latency.from_json(d["latency"])
        return res


def load_request(
    ref: ArtifactRef,
    *,
    workdir: str,
    stem: str,
    inputs: str,
    threads: int = 1,
    latency: LatencyPlan | None = None,
    extra_inputs: str | None = None,
    memory_mb: int | None = None,
    python_path: tuple[str, ...] | list[str] = (),
    dynamic_inputs: str | None = None,
    generate: GeneratePlan | None = None,
) -> WorkerRequest:
    """A request to load ``ref`` and run it on ``inputs``; its output and result files are
    ``<workdir>/<stem>.outputs.pt`` and ``<workdir>/<stem>.result.json``."""
    return WorkerRequest(
        target=ref,
        inputs=inputs,
        outputs=os.path.join(workdir, f"{stem}.outputs.pt"),
        result=os.path.join(workdir, f"{stem}.result.json"),
        threads=threads,
        latency=latency,
        extra_inputs=extra_inputs,
        memory_mb=memory_mb,
        python_path=tuple(python_path),
        dynamic_inputs=dynamic_inputs,
        generate=generate,
    )


def first_tensor(o: Any) -> Any:
    """The first tensor in what a model or module returns (a tensor as it is; the first one found
    in a tuple, list or dict, depth first, e.g. a Hugging Face output), or None."""
    if hasattr(o, "shape") and hasattr(o, "dtype"):
        return o
    if isinstance(o, dict):
        o = list(o.values())
    if isinstance(o, (tuple, list)):
        for x in o:
            t = first_tensor(x)
            if t is not None:
                return t
    return None


def call(fn: Any, x: Any) -> Any:
    """Run a model on one input batch: a tensor, a tuple of positional inputs, or a dict of
    named inputs (passed by keyword)."""
    if isinstance(x, dict):
        return fn(**x)
    if isinstance(x, (tuple, list)):
        return fn(*x)
    return fn(x)


def forward_output(fn: Any, x: Any, output: str | None = None) -> Any:
    """The one output a recipe trains or calibrates on (``metric.output``, default the first),
    from ``fn`` run on one batch of any structure (a tensor, a tuple, a dict of named inputs):
    quantization calibration, distillation and fine-tuning feed batches through this."""
    return pick(flatten(call(fn, x)), output)


def batch_len(x: Any) -> int:
    """The batch size of one input batch (its first input's first dimension)."""
    t = first_tensor(x)
    return int(t.shape[0])


class BatchDimError(ValueError):
    """An output that does not keep the batch dimension first."""


def run_batch(fn: Any, x: Any, *, index: int | None = None, in_memory: bool = False) -> dict:
    """The named outputs of ``fn`` on one batch (see :func:`deploycheck.outputs.flatten`), each
    checked to keep the batch dimension first (a :class:`BatchDimError` says which did not)."""
    named = flatten(call(fn, x))
    n = batch_len(x)
    for name, o in named.items():
        if tuple(o.shape[:1]) != (n,):
            what = f" output {name!r}" if len(named) > 1 else ""
            if in_memory:
                raise BatchDimError(
                    f"the in-memory model returned{what} shape {tuple(o.shape)} for a batch of {n}: "
                    "outputs must keep the batch dimension first"
                )
            at = f"batch {index}: " if index is not None else ""
            raise BatchDimError(
                f"{at}input batch of {n} gave{what or ' output'} of shape {tuple(o.shape)}: the "
                "artifact was built for a fixed batch size (export with a dynamic batch dimension)"
            )
    return named


def rows(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def concat_inputs(batches: list):
    """Input batches (tensors) joined along the batch dimension, input by input."""
    import torch

    if batches and isinstance(batches[0], dict):
        return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    return torch.cat(batches)


def take(x, index):
    """Rows of one input or of every named input alike."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def describe_batch(b) -> str:
    """``shape (64, 1, 8, 8)``, or each named input's shape and dtype."""
    if b is None:
        return "shape ?"
    if isinstance(b, dict):
        return ", ".join(f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in b.items())
    if isinstance(b, (tuple, list)):
        return ", ".join(f"input {i} {tuple(v.shape)}" for i, v in enumerate(b))
    return f"shape {tuple(b.shape)} {str(b.dtype).replace('torch.', '')}"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (the worker's and the session's); 0 where
    the platform does not say (Windows)."""
    import sys

    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)
