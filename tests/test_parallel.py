"""`pytest specs/` on every core (the project's ini sets ``deploycheck_workers = "auto"``): variants build,
export and evaluate side by side, while a latency measurement runs alone; the verdicts are those
of one process. No assertion here depends on how fast anything ran: the models record when each
of their calls began and ended, and the verdicts use limits no timing can meet or miss."""

from __future__ import annotations

import json

from conftest import make_spec

RECORDER = '''
import os
import time
import traceback

from tinymodels import Tiny


class Slow(Tiny):
    """Tiny that takes a few milliseconds a call (so evaluations last) and appends, per call: its
    process, whether deploycheck's timing made the call, and when the call began and ended."""

    def __init__(self, log: str = ""):
        super().__init__()
        self.log = log

    def forward(self, x):
        t0 = time.time()
        time.sleep(0.004)
        out = super().forward(x)
        if self.log:
            with open(self.log, "a") as fh:
                timed = any(f.filename.endswith("timing.py") for f in traceback.extract_stack())
                fh.write(f"{os.getpid()} {int(timed)} {t0!r} {time.time()!r}\\n")
        return out
'''

LATENCY = "latency: {warmup: 5, min_rounds: 20, max_time_s: 1.0, round_ms: 1.0}"


def _spec(log) -> str:
    variants = "\n".join(
        ["  baseline: {}"] + [f"  p{i}:\n    prune: {{method: l1_unstructured, amount: 0.0{i}}}" for i in range(1, 5)]
    )
    return (
        make_spec(
            formats="[safetensors]",
            variants=variants,
            thresholds="  latency: {max_ratio: 1.0e6}\n  metric: {max_drop: 1.0}",
        )
        .replace("factory: tinymodels:Tiny", f"factory: recorder:Slow\n  kwargs: {{log: '{log}'}}")
        .replace("latency: {warmup: 1, min_rounds: 5, max_time_s: 0.5, round_ms: 0.2}", LATENCY)
        .replace("  split: {test_fraction: 0.25, seed: 0}", "  split: {test_fraction: 0.25, seed: 0}\n  batch_size: 4")
    )


def _calls(log) -> list[tuple[int, int, float, float]]:
    out = []
    for line in log.read_text().splitlines():
        pid, timed, t0, t1 = line.split()
        out.append((int(pid), int(timed), float(t0), float(t1)))
    return out


def _verdicts(project) -> dict:
    doc = json.loads((project.path / "reports" / "deploycheck.json").read_text())
    return {(r["variant"], r["format"], r["check"]): r["status"] for r in doc["records"]}


def test_two_workers_give_one_process_verdicts_and_latency_runs_alone(project):
    project.tester.makepyfile(recorder=RECORDER)
    log = project.path / "calls.log"
    project.write(_spec(log))
    project.tester.makeini("[pytest]\ndeploycheck_workers = 2\n")  # as the project's own ini has "auto"
    res = project.run_subprocess("-v")  # the cache on: workers share the baseline through it
    assert res.ret == 0
    assert "created: 2/2 workers" in res.stdout.str()
    calls = _calls(log)
    timed = [c for c in calls if c[1]]  # latency rounds
    heavy = [c for c in calls if not c[1]]  # builds, evaluations
    assert len(timed) >= 4 * 3 * 20 and heavy  # 4 variants x (variant, baseline, control) x rounds
    assert len({c[0] for c in heavy}) >= 3  # evaluations in several processes (both workers' children)
    # while one process measures, no other process runs a batch
    overlaps = [(t, h) for t in timed for h in heavy if h[0] != t[0] and h[2] < t[3] and t[2] < h[3]]
    assert not overlaps, f"{len(overlaps)} evaluation calls ran during a latency round, e.g. {overlaps[0]}"
    parallel = _verdicts(project)
    latency = {k: v for k, v in parallel.items() if k[2] == "latency" and k[0] != "baseline"}
    assert len(latency) == 4 and set(latency.values()) == {"passed"}

    # one process (-n 0, or without the xdist plugin at all): the same verdicts
    for args in (["-n", "0"], ["-p", "no:xdist"]):
        log.unlink()
        one = project.run_subprocess(*args, "--deploycheck-cache=off")
        assert one.ret == 0 and "created: " not in one.stdout.str()  # no xdist workers
        # latency verdicts aside: a busy machine may make one inconclusive in either run
        assert {k: v for k, v in _verdicts(project).items() if k[2] != "latency"} == {
            k: v for k, v in parallel.items() if k[2] != "latency"
        }
