"""Errors that carry where they came from: the spec file and line, the stage, the variant and format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a spec file, at a line and a field path."""

    line: int
    path: str
    message: str

    def render(self, filename: str) -> str:
        # one problem, one line: keys and values from the file may hold newlines
        where = f"{_oneline(self.path)}: " if self.path else ""
        return f"{filename}:{self.line}: {where}{_oneline(self.message)}"


def _oneline(text: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class SpecError(Exception):
    """Every problem of one spec file at once, sorted by line. Raised at collection."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(set(problems))
        super().__init__("\n".join(p.render(filename) for p in self.problems))


class StageError(Exception):
    """A runtime failure in one pipeline stage for one spec / variant / format.

    ``where`` is ``file:line`` of the spec entry that declared the failing thing, so the
    message points at what the user wrote, not at deploycheck's internals.
    """

    def __init__(
        self,
        stage: str,
        message: str,
        *,
        spec: str,
        variant: str | None = None,
        fmt: str | None = None,
        where: str | None = None,
        detail: str = "",
    ):
        self.stage, self.message, self.spec = stage, message, spec
        self.variant, self.fmt, self.where, self.detail = variant, fmt, where, detail
        super().__init__(self.headline())

    @classmethod
    def at(
        cls,
        target: Any,
        stage: str,
        message: str,
        *,
        variant: str | None = None,
        where: str | None = None,
        detail: str = "",
    ) -> StageError:
        """The error of ``stage`` for ``target``: a :class:`~deploycheck.target.Target` (its spec,
        variant and format, declared at its spec line unless ``where`` says otherwise), or a spec
        (what a whole spec shares, such as its data; or a model built for ``variant``; ``where``
        names the key)."""
        if hasattr(target, "vname"):
            ident = target.ident()
            return cls(
                stage,
                message,
                spec=ident["spec"],
                variant=ident["variant"],
                fmt=ident["fmt"],
                where=where or ident["where"],
                detail=detail,
            )
        return cls(stage, message, spec=target.name, variant=variant, where=where, detail=detail)

    def headline(self) -> str:
        target = "::".join(x for x in (self.spec, self.variant, self.fmt) if x)
        loc = f" (declared at {self.where})" if self.where else ""
        return f"[{self.stage}] {target}{loc}: {self.message}"

    def render(self) -> str:
        return self.headline() + (f"\n{self.detail.rstrip()}" if self.detail else "")

    def __reduce__(self):
        # keyword-only fields: pickled by value, so a build's error comes back from its child process
        return (_stage_error, (self.stage, self.message, self.spec, self.variant, self.fmt, self.where, self.detail))


def _stage_error(stage, message, spec, variant, fmt, where, detail) -> StageError:
    return StageError(stage, message, spec=spec, variant=variant, fmt=fmt, where=where, detail=detail)


def no_space(e: BaseException) -> bool:
    """A write failed because the disk (or the user's quota) is full; torch's writers say 'file
    write failed' with no errno. The one test, for the save stage and the cache alike."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e) or "file write failed" in str(e)
