"""What every check shares: the :class:`Check` registry entry, the :class:`Verdict` it returns,
and :class:`Bound`, the one way a threshold becomes ``(ok, formula)``.

A formula shows every number that decided it, e.g.
``accuracy 0.9512 < baseline 0.9722 - max_drop 0.01 = 0.9622``; a check with several thresholds
collects them in a :class:`Gate`, whose formula names the failed ones (or, on a pass, all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..numeric import fmt_num
from ..registry import Registry
from ..target import Target

#: ``decided``: ``passed`` is the verdict; ``inconclusive``: the measurement (noise) decides
#: nothing: the item is skipped, recorded as inconclusive; ``not_compared``: there is nothing
#: meaningful to compare with (a non-finite baseline): the item is skipped, pointing at why;
#: ``not_gated``: measured, but no threshold decided (none set, or every one set was scoped to
#: other machines): nothing was checked, so the item is skipped (never a pass) and recorded as
#: ``not gated`` with its measurement
Outcome = Literal["decided", "inconclusive", "not_compared", "not_gated"]


@dataclass(kw_only=True)
class Verdict:
    passed: bool
    message: str = ""  # the failure message (or a note on success)
    formula: str = ""  # e.g. "accuracy 0.9512 >= baseline 0.9722 - max_drop 0.01 = 0.9622"
    value: Any = None
    threshold: Any = None
    details: dict = field(default_factory=dict)
    outcome: Outcome = "decided"
    #: a timing whose numbers must not be served again (it failed, or a busy machine made it
    #: inconclusive): the item, not the check, drops the cached fresh-process result it came from
    remeasure: bool = False

    @classmethod
    def not_compared(cls, message: str) -> Verdict:
        """No verdict: the comparison would be meaningless; the item is skipped with ``message``."""
        return cls(passed=False, message=message, outcome="not_compared")


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # "format" (per variant and format) or "variant"
    applies: Callable[[Target], bool]
    run: Callable[..., Verdict]  # run(runner, target) -> Verdict
    needs_item: bool = False  # run(..., item=the pytest item): for checks that talk to pytest plugins


CHECKS: Registry[Check] = Registry("check")


def check(
    name: str, *, level: str = "format", applies: Callable[[Target], bool] = lambda t: True, needs_item: bool = False
):
    def deco(fn):
        CHECKS.register(name, Check(name, level, applies, fn, needs_item))
        return fn

    return deco


@dataclass(frozen=True)
class Bound:
    """One threshold: a value must stay at most (``upper``) or at least ``limit``.

    ``shown`` is how the limit reads in the formula: the spec key and its number by default
    (``max_mb 5``), or the derivation of a limit computed from the baseline
    (``baseline 0.9722 - max_drop 0.01 = 0.9622``). ``slack`` absorbs float rounding in
    derived limits, so a value exactly on a limit passes."""

    limit: float
    upper: bool
    shown: str
    slack: float = 0.0

    @classmethod
    def at_most(cls, key: str, limit: float, *, unit: str = "") -> Bound:
        """``max``, ``max_mb``, ``max_ratio``, ``atol``, ``p95_ms`` …: the value must not exceed it."""
        return cls(limit, True, f"{key} {fmt_num(limit)}{unit}")

    @classmethod
    def at_least(cls, key: str, limit: float) -> Bound:
        """``min``, ``min_cosine``, ``min_agreement`` …: the value must reach it."""
        return cls(limit, False, f"{key} {fmt_num(limit)}")

    @classmethod
    def drop(cls, *, baseline: float, max_drop: float, higher: bool) -> Bound:
        """``max_drop``: the value may be worse than the baseline by at most this much."""
        sign = "-" if higher else "+"
        limit = baseline - max_drop if higher else baseline + max_drop
        shown = f"baseline {fmt_num(baseline)} {sign} max_drop {fmt_num(max_drop)} = {fmt_num(limit)}"
        return cls(limit, not higher, shown, slack=1e-12)

    @classmethod
    def relative_drop(cls, *, baseline: float, max_relative_drop: float, higher: bool) -> Bound:
        """``max_relative_drop``: the value may be worse than the baseline by this fraction of it."""
        sign = "-" if higher else "+"
        limit = baseline * (1 - max_relative_drop if higher else 1 + max_relative_drop)
        shown = (
            f"baseline {fmt_num(baseline)} × (1 {sign} max_relative_drop {fmt_num(max_relative_drop)}) "
            f"= {fmt_num(limit)}"
        )
        return cls(limit, not higher, shown, slack=1e-12)

    def ok(self, value: float) -> bool:
        return value <= self.limit + self.slack if self.upper else value >= self.limit - self.slack

    def judge(self, value: float, what: str, *, tail: str = "") -> tuple[bool, str]:
        """``(ok, "<what> <op> <limit as shown><tail>")``; ``what`` reads the value with its name."""
        ok = self.ok(value)
        op = ("<=" if ok else ">") if self.upper else (">=" if ok else "<")
        return ok, f"{what} {op} {self.shown}{tail}"


class Gate:
    """The thresholds of one verdict: each adds its formula to the passed or the failed ones."""

    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.every: list[str] = []  # both, in the order added

    def add(self, ok: bool, formula: str) -> bool:
        (self.passed if ok else self.failed).append(formula)
        self.every.append(formula)
        return ok

    def bound(self, bound: Bound, value: float, what: str, *, tail: str = "") -> bool:
        return self.add(*bound.judge(value, what, tail=tail))

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def empty(self) -> bool:
        return not self.passed and not self.failed

    def formula(self, *, unset: str = "") -> str:
        """The failed formulas, else the passed ones, else ``unset`` (no threshold was set)."""
        return "; ".join(self.failed or self.passed or ([unset] if unset else []))


def unset_words(where: str, *keys: str) -> str:
    """How an ungated measurement says what would gate it: ``no threshold set (thresholds.size:
    max_mb or max_ratio)``."""
    return (
        f"no threshold set ({where}: {', '.join(keys[:-1])} or {keys[-1]})"
        if len(keys) > 1
        else (f"no threshold set ({where}: {keys[0]})")
    )


def given(th: Any, *keys: str) -> dict[str, Any]:
    """The thresholds a spec set, by key (for the report's threshold column)."""
    return {k: getattr(th, k) for k in keys if getattr(th, k) is not None}
