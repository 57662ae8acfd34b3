"""Helpers shared by the benchmark scripts: write a result section into docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")


def machine_line() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def pytest_specs(specs: list[str], *options: str) -> list[str]:
    """The command the benchmarks measure through: ``pytest SPECS -q -p no:cacheprovider OPTIONS``,
    the way users run deploycheck."""
    return [sys.executable, "-m", "pytest", *specs, "-q", "-p", "no:cacheprovider", *options]


def write_section(name: str, markdown: str) -> None:
    """Replace the text between <!-- NAME:start --> and <!-- NAME:end --> in docs/BENCHMARKS.md."""
    with open(DOC, encoding="utf-8") as fh:
        doc = fh.read()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in doc:
        raise SystemExit(f"{DOC} has no {start} marker")
    new = re.sub(
        re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{markdown.rstrip()}\n{end}", doc, flags=re.S
    )
    tmp = DOC + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(new)
    os.replace(tmp, DOC)
    print(f"updated section {name!r} of {os.path.relpath(DOC, ROOT)}")
