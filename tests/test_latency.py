"""The latency gate inside the real pipeline: both sides in the same state, an A/A control, and
the formula. No assertion here depends on how fast anything ran: the state is read from what the
models record about their own calls, and the verdicts use limits no timing can meet or miss."""

from __future__ import annotations

import json

import pytest
from conftest import make_spec

LATENCY = "latency: {warmup: 5, min_rounds: 20, max_time_s: 2.0, round_ms: 1.0}"

RECORDER = '''
import os

import torch

from tinymodels import Tiny


class Records(Tiny):
    """Tiny that appends, per call: its process, its batch size, and whether its weights are
    inference tensors (made inside torch.inference_mode(), which skips autograd bookkeeping)."""

    def __init__(self, log: str = ""):
        super().__init__()
        self.log = log

    def forward(self, x):
        if self.log:
            with open(self.log, "a") as fh:
                fh.write(f"{os.getpid()} {id(self)} {x.shape[0]} {int(self.fc.weight.is_inference())}\\n")
        return super().forward(x)
'''


def latency_record(project, variant: str) -> dict:
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    return next(r for r in doc["records"] if r["check"] == "latency" and r["variant"] == variant)


def test_every_side_is_measured_fresh_and_loaded_alike_before_any_evaluation_batch(project):
    # The variant's evaluation runs batches of 16 (and a ragged 6); a runtime that specialises
    # on what it has seen slows down after that, and weights loaded inside inference_mode run
    # faster. Neither may bias the ratio: in the worker that measures, the variant, the baseline
    # and the control are three models that see only the example input (batch 1) until the
    # measurement is over, and none holds inference tensors.
    project.tester.makepyfile(recorder=RECORDER)
    log = project.path / "calls.log"
    spec = (
        make_spec(
            factory="Tiny",
            formats="[safetensors]",
            variants="  baseline: {}\n  aa:\n    prune: {method: l1_unstructured, amount: 0.01}",
            thresholds="  latency: {max_ratio: 1.0e6}",
        )
        .replace("factory: tinymodels:Tiny", f"factory: recorder:Records\n  kwargs: {{log: '{log}'}}")
        .replace("latency: {warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}", LATENCY)
        .replace("  split: {test_fraction: 0.25, seed: 0}", "  split: {test_fraction: 0.25, seed: 0}\n  batch_size: 16")
    )
    project.write(spec)
    project.run("-k", "aa and latency", "--deploycheck-cache=off").assert_outcomes(passed=1)
    calls = [line.split() for line in log.read_text().splitlines()]
    by_pid: dict[str, list] = {}
    for pid, model, batch, inference in calls:
        by_pid.setdefault(pid, []).append((model, int(batch), inference == "1"))
    # the worker that measured: three models called with batch 1 many times
    worker = max(by_pid.values(), key=lambda cs: len({m for m, b, _ in cs if b == 1}))
    models = {m for m, _, _ in worker}
    assert len(models) == 3, "variant, baseline and control: three separately loaded models"
    first_batch = next((i for i, (_, b, _) in enumerate(worker) if b > 1), len(worker))
    measured = worker[:first_batch]
    assert {m for m, _, _ in measured} == models
    counts = {m: sum(1 for mm, _, _ in measured if mm == m) for m in models}
    assert len(set(counts.values())) == 1 and min(counts.values()) > 20, counts  # the same call history
    assert not any(inf for _, _, inf in worker), "a side was loaded inside inference_mode"
    d = latency_record(project, "aa")["details"]
    assert d["control"] is not None and d["ratio_pairs"] >= 20


def test_a_variant_that_cannot_meet_its_limit_fails_with_the_control_in_the_formula(project):
    # min_speedup 1e6: no variant is a million times faster than its baseline, so this fails on
    # any machine, quiet or busy; what is tested is the verdict's wording and numbers
    spec = make_spec(
        formats="[torchscript]",
        variants="  baseline: {}\n  slow:\n    custom: {callable: 'tinymodels:repeat', kwargs: {times: 4}}",
        thresholds="  latency: {min_speedup: 1.0e6}",
    ).replace("latency: {warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}", LATENCY)
    project.write(spec)
    res = project.run("-k", "slow and latency")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*check] latency failed for tiny::slow::torchscript*",
            "speedup * (95% CI *, * rounds) < min_speedup 1e+06 / control * = *; "
            "control: baseline reloaded vs baseline * (CI *)",
            "  (not kept in the cache: the next run measures again)",
        ]
    )
    d = latency_record(project, "slow")["details"]
    assert d["ratio_decision"] == "fail" and set(d) >= {"busy", "cpu_ratio", "ratio_ci", "control"}


def test_a_ratio_within_a_generous_limit_passes_with_its_interval(project):
    spec = make_spec(
        formats="[torchscript]",
        variants="  baseline: {}\n  aa:\n    prune: {method: l1_unstructured, amount: 0.01}",
        thresholds="  latency: {max_ratio: 1.0e6}",
    ).replace("latency: {warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}", LATENCY)
    project.write(spec)
    project.run("-k", "aa and latency").assert_outcomes(passed=1)
    rec = latency_record(project, "aa")
    assert rec["formula"].startswith("latency ratio ") and "<= max_ratio 1e+06 × control" in rec["formula"]
    assert rec["details"]["ratio_decision"] == "pass"


def _latency_json() -> dict:
    from deploycheck.protocol import Latency

    return Latency(
        p50_ms=1.0, p95_ms=2.0, p99_ms=3, mean_ms=1.5, min_ms=0.9, stdev_ms=0.1, rounds=3,
        samples_ms=[0.9, 1.0, 3.0], calls_per_round=4, batch=2, throughput_per_s=2000.0,
        throughput={"8": {"p50_ms": 2.0, "samples_per_s": 4000.0}},
        ratio={"ratio": 1.02, "ci_low": 1.0, "ci_high": 1.04, "confidence": 0.95, "pairs": 20, "decision": "pass"},
    ).to_json()  # fmt: skip


def test_latency_is_typed_and_round_trips_through_the_workers_json():
    import json

    from deploycheck.protocol import Latency, WorkerResult

    res = WorkerResult.from_json(
        json.loads(json.dumps(WorkerResult(ok=True, latency=Latency.from_json(_latency_json())).to_json()))
    )
    assert isinstance(res.latency, Latency)
    assert res.latency.p99_ms == 3.0 and isinstance(res.latency.p99_ms, float)
    assert res.latency.throughput == {"8": {"p50_ms": 2.0, "samples_per_s": 4000.0}}
    assert res.to_json()["latency"] == _latency_json()
    assert WorkerResult.from_json({"ok": True}).latency is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("p50_ms", "1.0", "worker result: latency.p50_ms: expected float or int, got '1.0'"),
        ("rounds", True, "worker result: latency.rounds: expected int, got True"),
        ("samples_ms", [1.0, None], "worker result: latency.samples_ms[1]: expected float or int, got None"),
        ("throughput", {"8": {"p50_ms": "x"}}, "worker result: latency.throughput.8.p50_ms: expected float or int"),
        ("ratio", {"ratio": 1.0}, "worker result: latency.ratio.ci_low: expected float or int, got None"),
        ("ratio_error", 3, "worker result: latency.ratio_error: expected str, got 3"),
        ("made_up", 1, "worker result: latency: unknown keys ['made_up']"),
    ],
)
def test_latency_from_the_workers_json_is_type_checked(key, value, message):
    from deploycheck.protocol import WorkerResult

    d = {**_latency_json(), key: value}
    with pytest.raises(ValueError) as e:
        WorkerResult.from_json({"ok": True, "latency": d})
    assert str(e.value).startswith(message)
