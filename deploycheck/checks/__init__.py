"""Checks: thresholds -> verdicts that carry the formula and numbers that decided them.

One registry (:data:`CHECKS`): each check says when it applies and how it decides. Items in
:mod:`deploycheck.collect` only run a check and show its verdict. Importing this package
registers every built-in check, one module per family: :mod:`.quality` (load, outputs,
dynamic, metric, fidelity, semantic), :mod:`.performance` (latency, size), :mod:`.batch`
(batch invariance), :mod:`.quantized` (what a quantize step converted), :mod:`.snapshot` and :mod:`.lm` (causal language models).
"""

from __future__ import annotations

from . import batch, lm, performance, quality, quantized, snapshot  # noqa: F401 - importing registers the checks
from .base import CHECKS, Check, Verdict
from .snapshot import declared_files

__all__ = ["CHECKS", "Check", "Verdict", "declared_files"]
