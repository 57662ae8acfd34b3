"""End-to-end verdict quality of the latency ratio gate, through pytest on real spec files.

    python benchmarks/latency_verdicts.py [--quiet-runs 5] [--loaded-runs 4] [--write]

Runs `pytest benchmarks/verdicts/*.yaml -k latency --deploycheck-cache=build` again and again,
the way users run deploycheck: builds are reused, every artifact is reloaded and re-measured in
a fresh process each run. Three models (a tabular MLP, the digits CNN, a GRU), each as a
baseline of 20 chained passes, in torchscript, export, onnx and safetensors. Variants:

- aa-copy (an identical copy) and aa-prune (1% of weights zeroed, same dense compute): A/A
  pairs, every fail is a false fail;
- slow-110 and slow-125: 22 and 25 passes, exactly 1.10x and 1.25x the work in every runtime.

Gate: `max_ratio: 1.05`, stricter than the 1.10 of the A/A report that prompted this, so one
gate must both pass every A/A pair and catch a 1.10x slowdown. "Loaded" runs keep two
processes burning the cores in random bursts, as a shared CI runner does.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine_line, write_section
from latency_gate import burner

SPECS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "verdicts", "*.yaml")))
KIND = {"aa-copy": "A/A", "aa-prune": "A/A", "slow-110": "1.10x", "slow-125": "1.25x"}


def one_run(cache: str, report: str) -> list[dict]:
    cmd = [sys.executable, "-m", "pytest", *SPECS, "-k", "latency", "-q", "-p", "no:cacheprovider",
           "--deploycheck-cache=build", f"--deploycheck-cache-dir={cache}", f"--deploycheck-report-dir={report}"]
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    with open(os.path.join(report, "deploycheck.json")) as fh:
        doc = json.load(fh)
    out = []
    for r in doc["records"]:
        if r["check"] != "latency" or r["variant"] not in KIND:
            continue
        d = r.get("details") or {}
        out.append({"model": r["spec"], "variant": r["variant"], "format": r["format"], "kind": KIND[r["variant"]],
                    "status": r["status"], "ratio": d.get("ratio"), "control": (d.get("control") or {}).get("ratio"),
                    "decision": d.get("ratio_decision")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiet-runs", type=int, default=5)
    ap.add_argument("--loaded-runs", type=int, default=4)
    ap.add_argument("--write", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="dc-verdicts-cache-")
    rows: list[dict] = []
    t0 = time.time()
    for cond, n in (("quiet", args.quiet_runs), ("loaded", args.loaded_runs)):
        stop, procs = mp.Event(), []
        if cond == "loaded":
            procs = [mp.Process(target=burner, args=(stop,), daemon=True) for _ in range(2)]
            for p in procs:
                p.start()
        try:
            for i in range(n):
                rep = tempfile.mkdtemp(prefix="dc-verdicts-report-")
                try:
                    got = one_run(cache, rep)
                finally:
                    shutil.rmtree(rep, ignore_errors=True)
                for g in got:
                    g["condition"] = cond
                rows += got
                fails = sum(g["status"] != "passed" for g in got if g["kind"] == "A/A")
                print(f"{cond} run {i + 1}/{n}: {len(got)} decisions, A/A fails {fails}", flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join()
    shutil.rmtree(cache, ignore_errors=True)
    with open(os.path.join(ROOT, "benchmarks", "verdicts", "last_results.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    md = render(rows, time.time() - t0, args)
    print(md)
    if args.write:
        write_section("latency-verdicts", md)


def render(rows: list[dict], seconds: float, args) -> str:
    from tabulate import tabulate
    lines = [f"Measured on {machine_line()}; {args.quiet_runs} quiet and {args.loaded_runs} loaded runs of "
             f"`python benchmarks/latency_verdicts.py` ({seconds / 60:.0f} min). Gate `max_ratio: 1.05`.", ""]
    table = []
    for cond in ("quiet", "loaded", "all"):
        sel = [r for r in rows if cond == "all" or r["condition"] == cond]
        for kind, want in (("A/A", "passed"), ("1.10x", "failed"), ("1.25x", "failed")):
            k = [r for r in sel if r["kind"] == kind]
            if not k:
                continue
            bad = sum(r["status"] != want for r in k)
            rate = (bad if kind == "A/A" else len(k) - bad) / len(k)
            ratios = sorted(r["ratio"] for r in k if r["ratio"] is not None)
            med = ratios[len(ratios) // 2] if ratios else float("nan")
            table.append([cond, kind, len(k), f"{rate:.1%}", "false fails" if kind == "A/A" else "caught",
                          f"{med:.3f}", f"{ratios[0]:.3f}–{ratios[-1]:.3f}" if ratios else "-"])
    lines.append(tabulate(table, headers=["condition", "pair", "decisions", "rate", "", "median ratio", "range"],
                          tablefmt="github"))
    lines.append("")
    by = {}
    for r in rows:
        by.setdefault((r["kind"], r["format"]), []).append(r)
    t2 = []
    for (kind, fmt), k in sorted(by.items()):
        want = "passed" if kind == "A/A" else "failed"
        t2.append([kind, fmt, len(k), sum(r["status"] == want for r in k)])
    lines.append(tabulate(t2, headers=["pair", "format", "decisions", "right verdicts"], tablefmt="github"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
