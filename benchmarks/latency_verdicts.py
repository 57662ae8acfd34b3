"""End-to-end verdict quality of the latency ratio gate, through pytest on real spec files.

    python benchmarks/latency_verdicts.py [--quiet-runs 5] [--loaded-runs 4] [--only far] [--load constant] [--write]

Runs `pytest benchmarks/verdicts/*.yaml -k latency --deploycheck-cache=build` again and again,
the way users run deploycheck: builds are reused, every artifact is reloaded and re-measured in
a fresh process each run. Three models (a tabular MLP, the digits CNN, a GRU), each as a
baseline of 20 chained passes, in torchscript, export, onnx and safetensors. Variants:

- aa-copy (an identical copy) and aa-prune (1% of weights zeroed, same dense compute): A/A
  pairs, every fail is a false fail;
- slow-110 and slow-125: 22 and 25 passes, exactly 1.10x and 1.25x the work in every runtime.

Gate: `max_ratio: 1.05`, stricter than the 1.10 of the A/A report that prompted this, so one
gate must both pass every A/A pair and catch a 1.10x slowdown. "Loaded" runs keep two
processes burning the cores in random bursts, as a shared CI runner does (``--load constant``:
two processes spinning without pause, ``python -c 'while 1: pass'``).

Ratios far from 1 (issue 24): far-2x and far-4x (40 and 80 passes) against limits 30% above
their true ratio (2.6, 5.2) must pass, loaded or not; far-4x-caught (80 passes against 2.6) must
fail. ``--only far`` runs just those (and the A/A pairs, the noise reference). Each decision
also records the wall/CPU time of its rounds (how busy the machine was) and the ratio by CPU time.
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
KIND = {
    "aa-copy": "A/A",
    "aa-prune": "A/A",
    "slow-110": "1.10x",
    "slow-125": "1.25x",
    "far-2x": "2x @2.6",
    "far-4x": "4x @5.2",
    "far-4x-caught": "4x @2.6",
    "int8-onnx": "int8 (measured)",
}
#: the verdict each pair must get
WANT = {
    "A/A": "passed",
    "1.10x": "failed",
    "1.25x": "failed",
    "2x @2.6": "passed",
    "4x @5.2": "passed",
    "4x @2.6": "failed",
    "int8 (measured)": "passed",
}
SELECT = {"all": "latency", "far": "latency and (far or aa or int8)"}


def constant_burner(stop):
    while not stop.is_set():
        pass


def one_run(cache: str, report: str, select: str = "latency", specs: list[str] = SPECS) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *specs,
        "-k",
        select,
        "-q",
        "-p",
        "no:cacheprovider",
        "--deploycheck-cache=build",
        f"--deploycheck-cache-dir={cache}",
        f"--deploycheck-report-dir={report}",
    ]
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    with open(os.path.join(report, "deploycheck.json")) as fh:
        doc = json.load(fh)
    out = []
    for r in doc["records"]:
        if r["check"] != "latency" or r["variant"] not in KIND:
            continue
        d = r.get("details") or {}
        out.append(
            {
                "model": r["spec"],
                "variant": r["variant"],
                "format": r["format"],
                "kind": KIND[r["variant"]],
                "status": r["status"],
                "ratio": d.get("ratio"),
                "control": (d.get("control") or {}).get("ratio"),
                "decision": d.get("ratio_decision"),
                "busy": d.get("busy"),
                "cpu_ratio": d.get("cpu_ratio"),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiet-runs", type=int, default=5)
    ap.add_argument("--loaded-runs", type=int, default=4)
    ap.add_argument("--only", choices=sorted(SELECT), default="all", help="far: the far-from-1 pairs and A/A only")
    ap.add_argument(
        "--load", choices=("bursty", "constant"), default="bursty", help="how the loaded runs burn the cores"
    )
    ap.add_argument("--models", nargs="*", default=None, help="spec names to run (default: all), e.g. mlp cnn")
    ap.add_argument("--write", action="store_true", help="write the results into docs/BENCHMARKS.md")
    ap.add_argument("--render", metavar="JSON", help="only render (and --write) the rows of an earlier run")
    ap.add_argument("--minutes", type=float, default=0.0, help="with --render: how long that run took")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as fh:
            md = render(json.load(fh), args.minutes * 60, args)
        print(md)
        if args.write:
            write_section("latency-verdicts" if args.only == "all" else f"latency-verdicts-{args.only}", md)
        return
    cache = tempfile.mkdtemp(prefix="dc-verdicts-cache-")
    rows: list[dict] = []
    t0 = time.time()
    for cond, n in (("quiet", args.quiet_runs), ("loaded", args.loaded_runs)):
        stop, procs = mp.Event(), []
        if cond == "loaded":
            target = constant_burner if args.load == "constant" else burner
            procs = [mp.Process(target=target, args=(stop,), daemon=True) for _ in range(2)]
            for p in procs:
                p.start()
        try:
            for i in range(n):
                rep = tempfile.mkdtemp(prefix="dc-verdicts-report-")
                try:
                    specs = [
                        p
                        for p in SPECS
                        if args.models is None or os.path.splitext(os.path.basename(p))[0] in args.models
                    ]
                    got = one_run(cache, rep, SELECT[args.only], specs)
                finally:
                    shutil.rmtree(rep, ignore_errors=True)
                for g in got:
                    g["condition"] = cond
                rows += got
                wrong = sum(g["status"] != WANT[g["kind"]] for g in got)
                print(f"{cond} run {i + 1}/{n}: {len(got)} decisions, {wrong} wrong", flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join()
    shutil.rmtree(cache, ignore_errors=True)
    name = "last_results.json" if args.only == "all" else f"last_results_{args.only}_{args.load}.json"
    with open(os.path.join(ROOT, "benchmarks", "verdicts", name), "w") as fh:
        json.dump(rows, fh, indent=1)
    md = render(rows, time.time() - t0, args)
    print(md)
    if args.write:
        write_section("latency-verdicts" if args.only == "all" else f"latency-verdicts-{args.only}", md)


def render(rows: list[dict], seconds: float, args) -> str:
    from tabulate import tabulate

    gate = "`max_ratio: 1.05` (far pairs: their own limits)" if args.only == "all" else "each pair's own limit"
    lines = [
        f"Measured on {machine_line()}; {args.quiet_runs} quiet and {args.loaded_runs} loaded ({args.load}) runs "
        f"of `python benchmarks/latency_verdicts.py --only {args.only} --load {args.load}"
        + (f" --models {' '.join(args.models)}" if args.models else "")
        + "` "
        f"({seconds / 60:.0f} min). Gate {gate}.",
        "",
    ]
    table = []
    for cond in ("quiet", "loaded", "all"):
        sel = [r for r in rows if cond == "all" or r["condition"] == cond]
        for kind, want in WANT.items():
            k = [r for r in sel if r["kind"] == kind]
            if not k:
                continue
            # must pass: the rate of false fails; must fail: the rate caught (an inconclusive
            # verdict is neither: it is counted apart)
            fails = sum(r["status"] == "failed" for r in k)
            rate = fails / len(k)
            inconc = sum(r["decision"] == "inconclusive-busy" for r in k)
            ratios = sorted(r["ratio"] for r in k if r["ratio"] is not None)
            cpu = sorted(r["cpu_ratio"] for r in k if r.get("cpu_ratio") is not None)
            busy = sorted(r["busy"] for r in k if r.get("busy") is not None)
            med = ratios[len(ratios) // 2] if ratios else float("nan")
            table.append(
                [
                    cond,
                    kind,
                    len(k),
                    f"{rate:.1%}",
                    "false fails" if want == "passed" else "caught",
                    inconc,
                    f"{med:.3f}",
                    f"{ratios[0]:.3f}–{ratios[-1]:.3f}" if ratios else "-",
                    f"{cpu[len(cpu) // 2]:.3f}" if cpu else "-",
                    f"{busy[len(busy) // 2]:.2f}" if busy else "-",
                ]
            )
    lines.append(
        tabulate(
            table,
            headers=[
                "condition",
                "pair",
                "decisions",
                "rate",
                "",
                "inconclusive (busy)",
                "median ratio",
                "range",
                "median CPU ratio",
                "median wall/CPU",
            ],
            tablefmt="github",
        )
    )
    lines.append("")
    by = {}
    for r in rows:
        by.setdefault((r["kind"], r["format"]), []).append(r)
    t2 = []
    for (kind, fmt), k in sorted(by.items()):
        t2.append([kind, fmt, len(k), sum(r["status"] == WANT[kind] for r in k)])
    lines.append(tabulate(t2, headers=["pair", "format", "decisions", "right verdicts"], tablefmt="github"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
