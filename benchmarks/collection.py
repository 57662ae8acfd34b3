"""Collection time of 200 generated specs: deploycheck's own share of `pytest --collect-only`.

python benchmarks/collection.py [--write]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine_line, write_section


def timed(args, cwd) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        best = min(best, time.perf_counter() - t0)
    return best, p.stdout


def profiled_own_time(d: str) -> float:
    """Seconds spent in functions defined in deploycheck/ during collection (cProfile tottime)."""
    import cProfile
    import io
    import pstats
    from contextlib import redirect_stdout

    import pytest

    prof = cProfile.Profile()
    cwd = os.getcwd()
    os.chdir(d)
    try:
        with redirect_stdout(io.StringIO()):
            prof.runcall(pytest.main, ["--collect-only", "-q", "-p", "no:cacheprovider", "specs"])
    finally:
        os.chdir(cwd)
    st = pstats.Stats(prof)
    pkg = os.path.join(ROOT, "deploycheck")
    return sum(v[2] for k, v in st.stats.items() if k[0].startswith(pkg))


def main() -> None:
    from tabulate import tabulate

    src = open(os.path.join(ROOT, "specs", "digits_mlp.yaml"), encoding="utf-8").read()
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "pytest.ini"), "w").write("[pytest]\n")
        os.makedirs(os.path.join(d, "empty"))
        os.makedirs(os.path.join(d, "specs"))
        for i in range(200):
            with open(os.path.join(d, "specs", f"spec_{i:03d}.yaml"), "w") as fh:
                fh.write(src.replace("name: digits-mlp", f"name: spec-{i:03d}"))
        empty, _ = timed(["empty"], d)
        full, out = timed(["specs"], d)
        n_items = sum(1 for line in out.splitlines() if "::" in line)
        t0 = time.perf_counter()
        from deploycheck.spec import parse_file

        for i in range(200):
            parse_file(os.path.join(d, "specs", f"spec_{i:03d}.yaml"))
        parse = time.perf_counter() - t0
        own = profiled_own_time(d)
    rows = [
        ["pytest --collect-only, no specs (startup)", f"{empty:.2f}"],
        [f"pytest --collect-only, 200 specs ({n_items} items)", f"{full:.2f}"],
        ["difference: deploycheck + pytest's per-item work", f"{full - empty:.2f}"],
        ["time inside deploycheck's own code (cProfile, in-process)", f"{own:.2f}"],
        ["parsing + validating 200 specs alone", f"{parse:.2f}"],
    ]
    text = "\n".join(
        [
            f"Measured on {machine_line()}, best of 3; `python benchmarks/collection.py --write`.",
            "",
            tabulate(rows, headers=["run", "seconds"], tablefmt="github", disable_numparse=True),
        ]
    )
    print(text)
    if "--write" in sys.argv:
        write_section("collection", text)


if __name__ == "__main__":
    main()
