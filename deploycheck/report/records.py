"""One check's outcome as the report sees it: written by each test item (through pytest's
``user_properties``, so xdist workers' records reach the controller), read back by the reports."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    spec: str
    file: str
    variant: str
    format: str | None
    check: str
    status: str  # passed | failed | error | unsupported | inconclusive (skipped: noise)
    recipe: str = ""
    value: Any = None
    threshold: Any = None
    formula: str = ""
    message: str = ""
    details: dict = field(default_factory=dict)
    stage: str | None = None  # the failed stage, for errors
    variant_info: dict = field(default_factory=dict)
    metric: str | None = None  # the spec's metric, and its direction, so reports and
    higher_is_better: bool | None = None  # `deploycheck compare` never guess it from a name

    @property
    def missing_snapshot(self) -> bool:
        """A snapshot item that failed only because nothing is approved yet (a first run)."""
        return self.check == "snapshot" and self.status == "failed" and self.value == "missing"

    def sort_key(self) -> tuple:
        return (self.spec, self.variant != "baseline", self.variant, self.format or "", self.check)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), default=jsonable, sort_keys=True)

    @classmethod
    def from_json(cls, d: dict) -> Record:
        """From a record in a JSON report (older reports lack the newer fields)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("details", "variant_info"):
            kw[k] = kw.get(k) or {}
        for k in ("formula", "message", "recipe"):
            kw[k] = kw.get(k) or ""
        return cls(**kw)


def as_records(items) -> list[Record]:
    return [r if isinstance(r, Record) else Record.from_json(r) for r in items]


def jsonable(o):
    """json.dumps' fallback for values checks record (tuples, numpy and torch scalars, rules)."""
    if isinstance(o, tuple):
        return list(o)
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)
