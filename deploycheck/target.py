"""What one test item works on: a spec, one of its variants and (for format-level checks) one of
its formats. Made once at collection and handed to the runner and the checks, so the spec line
and the test id are worked out in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: target.py sits below spec/ in the import graph
    from .spec.model import FormatSpec, Spec, VariantSpec


@dataclass(frozen=True, eq=False)
class Target:
    spec: Spec
    variant: VariantSpec
    fspec: FormatSpec | None = None  # None for variant-level checks

    @property
    def vname(self) -> str:
        return self.variant.name

    @property
    def fmt(self) -> str | None:
        return self.fspec.name if self.fspec is not None else None

    @property
    def is_baseline(self) -> bool:
        return self.variant.name == "baseline"

    @property
    def made_elsewhere(self) -> bool:
        """An ``artifact:`` variant: a file gated as it is, with no model built here."""
        return self.variant.artifact is not None

    @property
    def line(self) -> int:
        return self.fspec.line if self.fspec is not None and self.fspec.line else self.variant.line

    @property
    def where(self) -> str:
        """``file:line`` of the spec entry that declared this item (the format, else the variant)."""
        return self.spec.at(self.line)

    @property
    def id(self) -> str:
        return "::".join([self.spec.name, self.vname] + ([self.fmt] if self.fmt else []))

    def key(self, stage: str) -> tuple:
        """A memo key: stages that do not depend on the format leave it out."""
        return (stage, self.spec.path, self.vname) + ((self.fmt,) if self.fmt else ())

    def of(self, vname: str) -> Target:
        """Another variant of the same spec, in the same format."""
        return Target(self.spec, self.spec.variant(vname), self.fspec)

    def baseline(self) -> Target:
        return self.of("baseline")

    def without_format(self) -> Target:
        return Target(self.spec, self.variant)

    def with_format(self, fspec: FormatSpec) -> Target:
        return Target(self.spec, self.variant, fspec)

    def ident(self) -> dict:
        """Keyword arguments naming this item in a StageError."""
        return dict(spec=self.spec.name, variant=self.vname, fmt=self.fmt, where=self.where)
