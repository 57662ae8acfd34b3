"""How far results move between ISA classes: the evidence for the snapshot and example tolerances.

    python benchmarks/cross_isa.py [--specs specs/digits_mlp.yaml ...] [--write]

Copies the example specs (with their committed snapshots) to a scratch folder and runs
`pytest SPEC --snapshot-update --deploycheck-cache=off` there under each emulated ISA setting
(ATEN_CPU_CAPABILITY=default, =avx2 with ONEDNN_MAX_CPU_ISA=AVX2, and, where the CPU has it,
=avx512 with ONEDNN_MAX_CPU_ISA=AVX512_CORE, i.e. no VNNI). Each run adds its class's entry
next to the committed one, so every snapshot file ends up holding one entry per class. Then,
per variant and format: the largest |difference| of the snapshotted values from the committed
(approved) entry, in absolute units and in quantization steps (output range / 255), and the
metric's drift. Only torch's kernels follow these variables; onnxruntime's follow the hardware.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import tempfile

from _common import ROOT, machine_line, pytest_specs, write_section

SETTINGS = {
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512 (no VNNI)": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--specs", nargs="*", default=["specs/digits_mlp.yaml", "specs/digits_cnn.yaml", "specs/minilm.yaml"]
    )
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dc-cross-isa-")
    shutil.copytree(os.path.join(ROOT, "specs"), os.path.join(work, "specs"))
    shutil.copytree(os.path.join(ROOT, "examples"), os.path.join(work, "examples"))
    with open(os.path.join(work, "pytest.ini"), "w") as fh:
        fh.write("[pytest]\n")
    for name, env in SETTINGS.items():
        cmd = pytest_specs(
            args.specs, "-k", "snapshot", "--snapshot-update", "--deploycheck-cache=off", "--deploycheck-no-report"
        )
        r = subprocess.run(cmd, cwd=work, env={**os.environ, **env}, capture_output=True, text=True)
        print(
            f"{name}: exit {r.returncode}; {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}", flush=True
        )
    rows = []
    for path in sorted(glob.glob(os.path.join(work, "specs", "__snapshots__", "*", "*.json"))):
        with open(path) as fh:
            doc = json.load(fh)
        entries = doc["entries"]
        real = [c for c in entries if "emulated" not in c]
        if not real:
            continue
        ref = entries[real[0]]
        span = (ref["stats"]["max"] - ref["stats"]["min"]) or 1.0
        for cls, e in sorted(entries.items()):
            if cls == real[0]:
                continue
            diff = max(
                (
                    abs(a - b)
                    for ra, rb in zip(e["outputs"], ref["outputs"], strict=True)
                    for a, b in zip(ra, rb, strict=True)
                ),
                default=0.0,
            )
            rel = max(
                (
                    abs(a - b) / max(abs(b), 1e-12)
                    for ra, rb in zip(e["outputs"], ref["outputs"], strict=True)
                    for a, b in zip(ra, rb, strict=True)
                    if abs(a - b) > 1e-6
                ),
                default=0.0,
            )
            drift = abs(e["metric"]["value"] - ref["metric"]["value"])
            rows.append(
                [
                    doc["spec"],
                    doc["variant"],
                    doc["format"],
                    cls.split(" (")[0].split("/")[1],
                    f"{diff:.3g}",
                    f"{rel:.3g}",
                    f"{diff / (span / 255):.2f}",
                    f"{drift:.3g}",
                ]
            )
    from tabulate import tabulate

    moved = [r for r in rows if float(r[4]) > 0 or float(r[7]) > 0]
    md = (
        f"Measured on {machine_line()} with `python benchmarks/cross_isa.py`: each emulated class against the "
        f"committed entry (approved on the real hardware). {len(rows) - len(moved)} of {len(rows)} comparisons "
        f"were identical and are not shown. `in quant steps` divides by the output range / 255.\n\n"
        + tabulate(
            moved,
            headers=[
                "spec",
                "variant",
                "format",
                "emulated class",
                "max abs diff",
                "max rel diff",
                "in quant steps",
                "metric drift",
            ],
            tablefmt="github",
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    if args.write:
        write_section("cross-isa", md)


if __name__ == "__main__":
    main()
