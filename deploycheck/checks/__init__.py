"""Checks: thresholds -> verdicts that carry the formula and numbers that decided them.

One registry (:data:`CHECKS`): each check says when it applies and how it decides. Items in
:mod:`deploycheck.collect` only run a check and show its verdict. Importing this package
registers every built-in check, one module per family.
"""

from __future__ import annotations

from . import lm, quality  # noqa: F401 - importing registers the checks
from .quality import CHECKS, declared_files

__all__ = ["CHECKS", "declared_files"]
