"""Wall and CPU time of the main job, `pytest specs/` as the README runs it (every core through
pytest-xdist, reports written): a cold cache, then a warm rerun with nothing changed, on a quiet
machine and with CPU burner processes running beside it.

python benchmarks/suite_time.py [--burners N] [--write]

The warm/cold ratio is the number that matters (the goal: at most 8% quiet, 12% with 2 burners);
seconds depend on the machine. CPU is the children's user+system time over the wall time (200%
is both cores of a 2-core machine busy all the time).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine_line, write_section


def run(env: dict) -> tuple[float, float, str]:
    before = os.times()
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "specs/", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    if p.returncode != 0:
        raise SystemExit(p.stdout[-3000:])
    summary = next((ln for ln in reversed(p.stdout.splitlines()) if " passed" in ln), "")
    return wall, cpu, summary.strip("= ")


def _burn() -> None:
    while True:
        pass


def main() -> None:
    from tabulate import tabulate

    burners = int(sys.argv[sys.argv.index("--burners") + 1]) if "--burners" in sys.argv else 0
    procs = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(burners)]
    for p in procs:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as d:
            env = {**os.environ, "DEPLOYCHECK_CACHE_DIR": d}
            cold = run(env)
            warm = run(env)
    finally:
        for p in procs:
            p.terminate()
    rows = [
        ["cold cache", f"{cold[0]:.1f}", f"{cold[1] / cold[0]:.0%}", "1.00", cold[2]],
        [
            "warm cache (nothing changed)",
            f"{warm[0]:.1f}",
            f"{warm[1] / warm[0]:.0%}",
            f"{warm[0] / cold[0]:.3f}",
            warm[2],
        ],
    ]
    load = f"{burners} CPU burner processes running beside it" if burners else "a quiet machine"
    text = "\n".join(
        [
            f"Measured on {machine_line()}, {load}; `python benchmarks/suite_time.py"
            + (f" --burners {burners}" if burners else "")
            + " --write`.",
            "",
            tabulate(
                rows,
                headers=["`pytest specs/`", "seconds", "CPU", "vs cold", "outcome"],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    )
    print(text)
    if "--write" in sys.argv:
        write_section("suite-burners" if burners else "suite", text)


if __name__ == "__main__":
    main()
