"""Every recipe on the example models: metric delta, size ratios and latency ratio vs the baseline.

    python benchmarks/recipes.py [--write]

Runs `pytest specs/` with the cache off (everything is built and measured now, on this machine)
and tabulates its JSON report. Latency ratios are deploycheck's interleaved side-by-side
measurements (variant / baseline, same format, same process, median with 95% interval).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from _common import ROOT, machine_line, write_section


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "specs/",
            "-q",
            "-p",
            "no:cacheprovider",
            "--deploycheck-cache=off",
            f"--deploycheck-report-dir={d}",
            "--snapshot-warn-unused",
        ]
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(d, "deploycheck.json")) as fh:
            doc = json.load(fh)
    from tabulate import tabulate

    out = [f"Measured {doc['created']} on {machine_line()}; `python benchmarks/recipes.py --write`.", ""]
    for spec in sorted({r["spec"] for r in doc["rows"]}):
        rows = []
        for r in doc["rows"]:
            if r["spec"] != spec:
                continue
            ci = r.get("latency_ratio_ci")
            lat = "-" if r.get("latency_ratio") is None else f"{r['latency_ratio']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            rows.append(
                [
                    r["variant"],
                    r["format"],
                    r["recipe"],
                    "-" if r.get("metric_delta") is None else f"{r['metric_delta']:+.4f}",
                    "-" if r.get("state_ratio") is None else f"{r['state_ratio']:.3f}",
                    "-" if r.get("size_ratio") is None else f"{r['size_ratio']:.3f}",
                    lat,
                    "-" if r.get("p50_ms") is None else f"{r['p50_ms']:.4f}",
                    r["verdict"],
                ]
            )
        out += [
            f"**{spec}**",
            "",
            tabulate(
                rows,
                headers=[
                    "variant",
                    "format",
                    "recipe",
                    "Δ metric",
                    "state ratio",
                    "file ratio",
                    "latency ratio [95% CI]",
                    "p50 ms",
                    "verdict",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    text = "\n".join(out)
    print(text)
    if "--write" in sys.argv:
        write_section("recipes", text)


if __name__ == "__main__":
    main()
