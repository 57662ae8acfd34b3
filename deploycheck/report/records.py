"""One check's outcome as the report sees it: written by each test item (through pytest's
``user_properties``, so xdist workers' records reach the controller), read back by the reports."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypedDict


@dataclass
class Record:
    spec: str
    file: str
    variant: str
    format: str | None
    check: str
    status: str  # passed | failed | error | unsupported | inconclusive (skipped: noise) | not gated (skipped)
    recipe: str = ""
    value: Any = None
    threshold: Any = None
    formula: str = ""
    message: str = ""
    details: dict = field(default_factory=dict)
    stage: str | None = None  # the failed stage, for errors
    variant_info: dict = field(default_factory=dict)
    metric: str | None = None  # the spec's metric, and its direction, so reports and
    higher_is_better: bool | None = None  # `deploycheck compare` never guess it from a name

    @property
    def missing_snapshot(self) -> bool:
        """A snapshot item that failed only because nothing is approved yet (a first run)."""
        return self.check == "snapshot" and self.status == "failed" and self.value == "missing"

    def sort_key(self) -> tuple:
        return (self.spec, self.variant != "baseline", self.variant, self.format or "", self.check)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), default=jsonable, sort_keys=True)

    @classmethod
    def from_json(cls, d: dict) -> Record:
        """From a record in a JSON report (older reports lack the newer fields)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("details", "variant_info"):
            kw[k] = kw.get(k) or {}
        for k in ("formula", "message", "recipe"):
            kw[k] = kw.get(k) or ""
        return cls(**kw)


class Row(TypedDict):
    """One report row per (spec, variant, format), its checks folded in (variant-level ones into
    each of the variant's rows): what the tables, the JSON report's ``rows``, the HTML and
    ``deploycheck compare`` read. A TypedDict, not a dataclass: it is written to JSON as it is and
    read back from reports written earlier, so it stays the dict it is on the wire, now typed."""

    spec: str
    variant: str
    format: str
    recipe: str
    metric_name: str | None
    metric: float | None
    higher_is_better: bool | None
    metric_delta: float | None
    metric_delta_ci: list[float] | None
    max_abs_diff: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    throughput_per_s: float | None
    throughput: dict[str, dict] | None  # throughput mode: batch size -> {p50_ms, samples_per_s}
    latency_ratio: float | None
    latency_ratio_ci: list[float] | None
    peak_rss_mb: float | None
    latency_samples_ms: list[float] | None
    size_mb: float | None
    size_ratio: float | None
    perplexity: float | None
    next_token_top1: float | None
    mean_kl: float | None
    exact_match: float | None
    params: int | None
    state_ratio: float | None
    sparsity: float | None
    build_s: float | None
    build_wall_s: float | None  # this session's build stage (the baseline's load included; ~0 from the cache)
    export_s: float | None  # this session's export of the artifact (0 or absent: from the cache)
    fresh_s: float | None  # the fresh process: load, evaluation, latency and generation
    session_peak_mb: float | None  # the pytest process's peak resident memory after the artifact's build and export
    load: str  # ok | ok (cached) | FAILED | unsupported | -
    verdict: str  # pass | FAIL | new | unsupported | inconclusive
    reason: str
    failing: str  # the failed checks' formulas alone (the terminal's "failing:" list)
    new_snapshots: int
    not_run: int  # checks of the row that did not run (the session did not finish)
    divergence: dict | None  # the first failing check's layer comparison, as in its details


def as_records(items) -> list[Record]:
    return [r if isinstance(r, Record) else Record.from_json(r) for r in items]


def jsonable(o):
    """json.dumps' fallback for values checks record (tuples, numpy and torch scalars, rules)."""
    if isinstance(o, tuple):
        return list(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
