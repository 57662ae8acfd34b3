"""Static int8 and the 16-bit saturation of non-VNNI CPUs: which option keeps results portable.

    python benchmarks/int8_saturation.py [--write]

The digits CNN with pt2e static int8 three ways: 8-bit weights and activations (the pt2e
default), `reduce_range: true` (7-bit activations) and `weight_bits: 7`, in export, TorchScript
and ONNX, run through pytest on the real hardware and under emulated ISAs (torch's kernels only
follow ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA; onnxruntime's follow the hardware). Reports
accuracy, the reloaded-vs-in-memory difference (ONNX Runtime vs torch's reference int8) and
the latency ratio to the fp32 baseline in the same format.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from _common import ROOT, machine_line, write_section

SPEC = """\
deploycheck: 1
name: cnn-int8
model:
  factory: examples.digits:CNN
  kwargs: {channels: 16}
  weights: %(root)s/specs/models/digits_cnn.safetensors
  inputs: {shape: [1, 1, 8, 8]}
  python_path: ["%(root)s"]
data:
  source: sklearn:digits
  split: {test_fraction: 0.25, seed: 0}
  preprocess:
    - scale: 0.0625
    - reshape: [1, 8, 8]
    - normalize: {mean: 0.3, std: 0.4}
  batch_size: 128
metric: accuracy
formats: [export, torchscript, onnx]
snapshot: {enabled: false}
variants:
  baseline: {}
  w8a8:
    quantize: {method: static_int8, calibration_batches: 8}
  reduce-range:
    quantize: {method: static_int8, calibration_batches: 8, reduce_range: true}
  weight-bits-7:
    quantize: {method: static_int8, calibration_batches: 8, weight_bits: 7}
thresholds:
  latency: {max_ratio: 100}
  outputs: {atol: 0.2, rtol: 1.0e-2}
"""

SETTINGS = {
    "hardware": {},
    "ATEN=avx2, oneDNN=AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ATEN=default": {"ATEN_CPU_CAPABILITY": "default"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dc-int8-")
    with open(os.path.join(work, "cnn_int8.yaml"), "w") as fh:
        fh.write(SPEC % {"root": ROOT})
    with open(os.path.join(work, "pytest.ini"), "w") as fh:
        fh.write("[pytest]\n")
    table = []
    for name, env in SETTINGS.items():
        rep = os.path.join(work, "rep-" + str(len(table)))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "cnn_int8.yaml",
                "-q",
                "-p",
                "no:cacheprovider",
                "--deploycheck-cache=off",
                f"--deploycheck-report-dir={rep}",
            ],
            cwd=work,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(os.path.join(rep, "deploycheck.json")) as fh:
            doc = json.load(fh)
        for r in doc["rows"]:
            if r["variant"] == "baseline":
                continue
            table.append(
                [
                    name,
                    r["variant"],
                    r["format"],
                    f"{r['metric']:.4f}" if r["metric"] is not None else "-",
                    f"{r['max_abs_diff']:.3g}" if r["max_abs_diff"] is not None else "-",
                    f"{r['latency_ratio']:.2f}" if r["latency_ratio"] else "-",
                    r["verdict"],
                ]
            )
    from tabulate import tabulate

    md = (
        f"Measured on {machine_line()} with `python benchmarks/int8_saturation.py`; baseline accuracy 0.9889.\n\n"
        + tabulate(
            table,
            headers=[
                "kernels",
                "variant",
                "format",
                "accuracy",
                "max |reloaded - in-memory|",
                "latency ratio",
                "verdict (outputs atol 0.2)",
            ],
            tablefmt="github",
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    print(md)
    if args.write:
        write_section("int8-saturation", md)


if __name__ == "__main__":
    main()
