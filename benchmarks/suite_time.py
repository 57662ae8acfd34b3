"""Wall time of `pytest specs/`: cold vs warm cache, and -n 2 vs -n 0.

python benchmarks/suite_time.py [--write]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine_line, write_section


def run(*args: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "specs/", "-q", "-p", "no:cacheprovider", "--deploycheck-no-report", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stdout[-3000:])
    return dt


def main() -> None:
    from tabulate import tabulate

    with tempfile.TemporaryDirectory() as d:
        cache = f"--deploycheck-cache-dir={d}"
        cold = run(cache)
        warm = run(cache)
    # the cold run builds and measures everything, as a cache-off run does: it is the -n 0 reference
    parallel = run("--deploycheck-cache=off", "-n", "2")
    rows = [
        ["cold cache, -n 0", f"{cold:.1f}", "1.00"],
        ["warm cache (nothing changed), -n 0", f"{warm:.1f}", f"{warm / cold:.2f}"],
        ["cache off, -n 2 (pytest-xdist)", f"{parallel:.1f}", f"{parallel / cold:.2f}"],
    ]
    text = "\n".join(
        [
            f"Measured on {machine_line()}; `python benchmarks/suite_time.py --write`.",
            "",
            tabulate(rows, headers=["run", "seconds", "vs cold"], tablefmt="github", disable_numparse=True),
        ]
    )
    print(text)
    if "--write" in sys.argv:
        write_section("suite", text)


if __name__ == "__main__":
    main()
