"""Spec boundary: YAML text -> validated, frozen :class:`Spec`, or a :class:`SpecError` with every problem."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..errors import Problem, SpecError
from ..formats import FORMATS, formats_by_name, sniff
from .loader import LMap, is_spec_text, load, read_spec
from .model import NAME, FormatSpec, Spec, Thresholds, VariantSpec
from .schema import Ctx, Invalid, build_fields, finish

__all__ = ["Spec", "VariantSpec", "FormatSpec", "parse", "parse_file", "duplicate_name", "is_spec_text", "SpecError"]


def parse_file(path: str | os.PathLike) -> Spec:
    path = os.fspath(path)
    return parse(read_spec(path), filename=path)


def duplicate_name(spec, other: str) -> SpecError:
    """Two specs of one session with one name would share report rows, run folders and baselines."""
    named = "name" in spec.lines
    how = f"name {spec.name!r}" if named else f"name {spec.name!r} (no 'name:' given, so the file's stem)"
    return SpecError(
        spec.display,
        [
            Problem(
                spec.lines.get("name", 1),
                "name",
                f"{how} is also the name of {other}: two specs with one name would share "
                "report rows, run folders and a baseline; give each spec its own 'name:'",
            )
        ],
    )


def parse(text: str, *, filename: str) -> Spec:
    raw = load(text, filename)
    ctx = Ctx()
    spec = None
    try:
        spec = _parse_spec(raw, filename, ctx)
    except Invalid:
        pass
    if ctx.problems or spec is None:
        raise SpecError(filename, ctx.problems or [Problem(1, "", "invalid spec")])
    return spec


def _parse_spec(raw: Any, filename: str, ctx: Ctx) -> Spec:
    if not isinstance(raw, LMap):
        ctx.error(getattr(raw, "line", 1), "", "a spec is a mapping at the top level")
        raise Invalid
    if "deploycheck" in raw and raw["deploycheck"] != 1:
        ctx.error(
            raw.line_of("deploycheck"),
            "deploycheck",
            f"unsupported spec version {raw['deploycheck']!r}; this deploycheck reads version 1",
        )
    kwargs: dict[str, Any] = {}
    bad = False
    try:
        kwargs = build_fields(Spec, raw, path="", line=raw.line, ctx=ctx, skip=("path", "display", "lines", "variants"))
    except Invalid:
        bad = True
        # Keep going: variants are validated too so that every problem is reported at once.
        kwargs = {}
    for key in ("path", "display", "lines"):
        if key in raw:
            ctx.error(raw.line_of(key), key, "unknown key")
            bad = True
    name = kwargs.get("name") or os.path.splitext(os.path.basename(filename))[0]
    if not NAME.match(name):
        ctx.error(raw.line_of("name"), "name", f"{name!r} may only contain letters, digits, '_', '.' and '-'")
        bad = True
    thresholds = kwargs.get("thresholds", Thresholds())
    formats = kwargs.get("formats", ())
    variants = _parse_variants(raw.get("variants", LMap()), raw.line_of("variants"), thresholds, formats, ctx)
    if variants is not None:
        n_before = len(ctx.problems)
        variants = _resolve_artifacts(variants, raw.get("variants"), filename, ctx)
        bad = bad or len(ctx.problems) > n_before
        model = kwargs.get("model")
        if model is not None and model.factory is None and model.hf is None:
            base = variants.get("baseline")
            if base is None or base.artifact is None:
                ctx.error(
                    raw.line_of("model"),
                    "model.factory",
                    "give exactly one of 'factory' (a python callable) or 'hf' (a Hugging Face folder); "
                    "only a spec whose baseline is an artifact may have neither",
                )
                bad = True
            for vname, v in variants.items():
                if v.artifact is None and vname != "baseline" and not (v.model and v.model.factory):
                    ctx.error(
                        v.line,
                        f"variants.{vname}",
                        "needs a model to build from: model.factory (the baseline is "
                        "an artifact and the spec has no factory)",
                    )
                    bad = True
    gen, model = kwargs.get("generation"), kwargs.get("model")
    if gen is not None and (model is None or model.hf is None or model.hf.task != "causal-lm"):
        ctx.error(
            raw.line_of("generation"),
            "generation",
            "greedy generation needs a causal language model: model.hf with task: causal-lm",
        )
        bad = True
    if bad or variants is None:
        raise Invalid
    if not formats and not any(v.formats for v in variants.values()):
        ctx.error(
            raw.line_of("formats") if "formats" in raw else raw.line,
            "formats",
            "no formats declared: list at least one (e.g. [export, torchscript])",
        )
        raise Invalid
    lines = {k: raw.line_of(k) for k in raw}
    lines.update({f"variants.{k}": v.line for k, v in variants.items()})
    return Spec(**{**kwargs, "name": name}, variants=variants, path=filename, lines=lines)


def _parse_variants(raw: Any, line: int, thresholds: Thresholds, formats: tuple, ctx: Ctx) -> dict | None:
    if raw is None:
        raw = LMap()
    if not isinstance(raw, dict):
        ctx.error(line, "variants", "expected a mapping of variant name -> recipe")
        return None
    out: dict[str, VariantSpec] = {}
    bad = False
    names = list(raw)
    if "baseline" not in raw:
        names = ["baseline"] + names  # the reference always exists
    for vname in names:
        vraw = raw.get(vname) if vname in raw else LMap()
        vline = raw.line_of(vname) if isinstance(raw, LMap) and vname in raw else line
        path = f"variants.{vname}"
        if not NAME.match(str(vname)):
            ctx.error(vline, path, "variant names may only contain letters, digits, '_', '.' and '-'")
            bad = True
            continue
        if vraw is None:
            vraw = LMap()
        if not isinstance(vraw, dict):
            ctx.error(vline, path, "expected a mapping such as {quantize: {method: dynamic_int8}} or {steps: [...]}")
            bad = True
            continue
        try:
            out[str(vname)] = VariantSpec.parse(
                vraw, path=path, line=vline, ctx=ctx, name=str(vname), thresholds=thresholds, formats=formats
            )
        except Invalid:
            bad = True
    if bad:
        return None
    return out


def _resolve_artifacts(variants: dict, raw_variants: Any, filename: str, ctx: Ctx) -> dict:
    """Each artifact variant's one format: declared, else sniffed from its bytes, else (a missing
    file, which its load check will report) guessed from its suffix."""
    base = os.path.dirname(os.path.abspath(filename))
    out = {}
    for name, v in variants.items():
        src = v.artifact
        if src is None:
            out[name] = v
            continue
        vraw = raw_variants.get(name) if isinstance(raw_variants, dict) else None
        line = vraw.line_of("artifact") if isinstance(vraw, LMap) and "artifact" in vraw else v.line
        fname = src.format
        if fname is None:
            found = sniff(os.path.join(base, src.path))
            fname = found if found in FORMATS else next(iter(formats_by_name(src.path)), None)
            if fname is None:
                ctx.error(
                    line,
                    f"variants.{name}.artifact.format",
                    f"cannot tell the format of {src.path!r} from its bytes or its name; give artifact.format "
                    f"(one of {', '.join(FORMATS.names())})",
                )
                continue
        fmt = FORMATS.get(fname)
        try:
            kw = build_fields(fmt.Options, src.options, path=f"variants.{name}.artifact.options", line=line, ctx=ctx)
            opts = finish(
                fmt.Options, kw, path=f"variants.{name}.artifact.options", line=line, ctx=ctx, raw=src.options
            )
        except Invalid:
            continue
        out[name] = dataclasses.replace(
            v, formats=(FormatSpec(fname, opts, line),), artifact=dataclasses.replace(src, format=fname)
        )
    return out
