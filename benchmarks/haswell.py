"""The shipped specs' artifacts run on an exact Haswell (AVX2, no AVX-512, no VNNI) under qemu.

    apt-get install qemu-user
    python benchmarks/haswell.py [--specs specs/digits_cnn.yaml ...] [--write]

``ATEN_CPU_CAPABILITY`` (benchmarks/cross_isa.py, tests/test_portability.py) lowers only torch's
own kernels; onnxruntime, oneDNN's int8 kernels and MLAS pick their code from the CPU itself, so
on this AVX-512 VNNI machine they never take the saturating AVX2 u8*s8 path a Haswell runner
takes. qemu's user-mode emulation with ``-cpu Haswell`` reports a CPU without AVX-512 and VNNI to
everything in the process, and executes exactly what such a CPU would.

1. The real path: ``pytest SPECS -k "outputs and not aoti" --deploycheck-cache=off`` reloads every
   artifact natively in deploycheck's worker and writes each request next to its outputs.
2. Each request is answered again by ``qemu-x86_64 -cpu Haswell python -I -m deploycheck.worker
   --serve``, the same worker code, with only the evaluation outputs asked for (no latency).
   aoti is left out: its package is machine code compiled for the host's ISA.
3. Per artifact: the largest difference from the native outputs, in quantization steps (output
   range / 255), the top-1 label agreement, and the verdict of the spec's cross-machine snapshot
   rule (``snapshot.cross_machine``: atol, rtol, quant_steps for reduced precision), the rule a
   snapshot approved on this machine is judged by on a Haswell runner.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine_line, pytest_specs, write_section

DEFAULT_SPECS = ["specs/digits_mlp.yaml", "specs/digits_cnn.yaml", "specs/tiny_lm.yaml"]


def native_run(specs: list[str], work: str) -> str:
    run = os.path.join(work, "run")
    cmd = pytest_specs(
        specs,
        "-k",
        "outputs and not aoti",
        "--deploycheck-cache=off",
        "--deploycheck-no-report",
        f"--deploycheck-run-dir={run}",
    )
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(res.stdout.strip().splitlines()[-1])
    if res.returncode != 0:
        raise SystemExit(res.stdout[-4000:] + res.stderr[-2000:])
    return run


def haswell_answer(req_path: str, work: str, qemu: str) -> tuple[str | None, float, str]:
    """Answer a copy of the request under qemu; the path of its outputs, the seconds, the log tail."""
    with open(req_path) as fh:
        req = json.load(fh)
    stem = os.path.join(work, "haswell", req_path.replace(os.sep, "_")[-120:])
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    req.update(
        result=stem + ".result.json",
        outputs=stem + ".outputs.pt",
        latency=None,
        generate=None,
        extra_inputs=None,
        dynamic_inputs=None,
    )
    mine = stem + ".request.json"
    with open(mine, "w") as fh:
        json.dump(req, fh)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DEPLOYCHECK_"))}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [qemu, "-cpu", "Haswell", sys.executable, "-I", "-m", "deploycheck.worker", "--serve"],
        input=mine + "\n",
        capture_output=True,
        text=True,
        cwd=os.path.dirname(stem),
        env=env,
        timeout=3600,
    )
    seconds = time.perf_counter() - t0
    log = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "TCG doesn't support" not in line)
    try:
        with open(req["result"]) as fh:
            ok = json.load(fh).get("ok")
    except (OSError, ValueError):
        ok = False
    return (req["outputs"] if ok else None), seconds, log[-1500:]


def compare(spec, vname: str, native: dict, haswell: dict) -> dict:
    from deploycheck.numeric import compare_arrays
    from deploycheck.snapshots import rule_for

    precision = spec.variant(vname).precision
    worst: dict = {"max_abs": 0.0, "steps": 0.0, "labels": None, "ok": True, "rule": ""}
    for name, a in native.items():
        b = haswell[name]
        span = float(a.max() - a.min()) if a.numel() else 0.0
        rule = rule_for(
            settings=spec.snapshot,
            same_class=False,
            precision=precision,
            approved={"stats": {"min": float(a.min()), "max": float(a.max())}},
        )
        st = compare_arrays(b, a, atol=rule.atol, rtol=rule.rtol)
        diff = float((b.double() - a.double()).abs().max()) if a.numel() else 0.0
        if diff >= worst["max_abs"]:
            worst.update(max_abs=diff, steps=diff / (span / 255) if span else 0.0, output=name)
        worst["ok"] = worst["ok"] and st["mismatched"] == 0
        worst["rule"] = f"atol {rule.atol:.3g}, rtol {rule.rtol:g}"
        if spec.metric.name in ("accuracy", "top_k") and a.dim() == 2 and worst["labels"] is None:
            worst["labels"] = float((a.argmax(1) == b.argmax(1)).double().mean())
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", nargs="*", default=DEFAULT_SPECS)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("needs qemu-user: apt-get install qemu-user")
    import torch
    from tabulate import tabulate

    from deploycheck.spec import parse_file

    specs = {}
    for p in args.specs:
        s = parse_file(os.path.join(ROOT, p))
        specs[s.name] = s
    work = tempfile.mkdtemp(prefix="dc-haswell-")
    run = native_run(args.specs, work)
    rows, slowest = [], 0.0
    for req_path in sorted(glob.glob(os.path.join(run, "**", "*.request.json"), recursive=True)):
        with open(req_path) as fh:
            req = json.load(fh)
        if not req.get("outputs") or req["target"]["format"] == "aoti" or not os.path.exists(req["outputs"]):
            continue
        parts = os.path.relpath(req["outputs"], run).split(os.sep)
        sname, vname, fmt = parts[-3], parts[-2], req["target"]["format"]
        out, seconds, log = haswell_answer(req_path, work, qemu)
        slowest = max(slowest, seconds)
        if out is None:
            rows.append([sname, vname, fmt, "-", "-", "-", "did not answer: " + log.splitlines()[-1][:80]])
            continue
        native = torch.load(req["outputs"], weights_only=True)
        hw = torch.load(out, weights_only=True)
        c = compare(specs[sname], vname, native, hw)
        rows.append(
            [
                sname,
                vname,
                fmt,
                f"{c['max_abs']:.3g}",
                f"{c['steps']:.2f}",
                "-" if c["labels"] is None else f"{c['labels']:.4f}",
                ("pass" if c["ok"] else "FAIL") + f" ({c['rule']})",
            ]
        )
        print(rows[-1], f"{seconds:.0f} s", flush=True)
    table = tabulate(
        rows,
        headers=[
            "spec",
            "variant",
            "format",
            "max abs diff",
            "in quant steps",
            "top-1 agreement",
            "cross-machine rule",
        ],
        tablefmt="github",
    )
    text = (
        f"Measured on {machine_line()} with `python benchmarks/haswell.py` (qemu-x86_64 -cpu Haswell; "
        f"{len(rows)} artifacts, the slowest answered in {slowest:.0f} s under emulation). Each row: the "
        "artifact's evaluation outputs on the emulated Haswell against the same file's outputs on this "
        "machine. `in quant steps` divides by the output range / 255.\n\n" + table
    )
    print(text)
    if args.write:
        write_section("haswell", text)


if __name__ == "__main__":
    main()
