"""Spec boundary: YAML text -> validated, frozen :class:`Spec`, or a :class:`SpecError` with every problem."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..errors import Problem, SpecError
from .loader import LMap, LSeq, is_spec_text, load
from .model import NAME, ArtifactSource, FormatSpec, ModelOverride, Spec, Thresholds, VariantSpec
from .schema import Ctx, Invalid, build, build_fields, finish

__all__ = ["Spec", "VariantSpec", "FormatSpec", "parse", "parse_file", "is_spec_text", "SpecError"]


def parse_file(path: str | os.PathLike) -> Spec:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(path, [Problem(1, "", f"cannot read spec: {e}")]) from None
    return parse(text, filename=path)


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
        ctx.error(raw.line_of("deploycheck"), "deploycheck", f"unsupported spec version {raw['deploycheck']!r}; this deploycheck reads version 1")
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
                ctx.error(raw.line_of("model"), "model.factory",
                          "give exactly one of 'factory' (a python callable) or 'hf' (a Hugging Face folder); "
                          "only a spec whose baseline is an artifact may have neither")
                bad = True
            for vname, v in variants.items():
                if v.artifact is None and vname != "baseline" and not (v.model and v.model.factory):
                    ctx.error(v.line, f"variants.{vname}", "needs a model to build from: model.factory (the baseline is "
                                                            "an artifact and the spec has no factory)")
                    bad = True
    if bad or variants is None:
        raise Invalid
    if not formats and not any(v.formats for v in variants.values()):
        ctx.error(raw.line_of("formats") if "formats" in raw else raw.line, "formats",
                  "no formats declared: list at least one (e.g. [export, torchscript])")
        raise Invalid
    lines = {k: raw.line_of(k) for k in raw}
    lines.update({f"variants.{k}": v.line for k, v in variants.items()})
    return Spec(**{**kwargs, "name": name}, variants=variants, path=filename, lines=lines)


def _parse_variants(raw: Any, line: int, thresholds: Thresholds, formats: tuple, ctx: Ctx) -> dict | None:
    from ..recipes import RECIPES
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
            out[str(vname)] = _parse_variant(str(vname), vraw, vline, path, thresholds, formats, ctx)
        except Invalid:
            bad = True
    if bad:
        return None
    return out


def _recipe_step(key: str, value: Any, *, path: str, line: int, ctx: Ctx) -> Any:
    from ..recipes import load_plugin
    try:
        cls = load_plugin(key)
    except Exception as e:  # a plug-in that cannot be imported is this spec's error, at its line
        ctx.error(line, path, f"recipe {key!r} cannot be loaded: {type(e).__name__}: {e}")
        raise Invalid from None
    kw = build_fields(cls, {} if value is None else value, path=path, line=line, ctx=ctx)
    return finish(cls, kw, path=path, line=line, ctx=ctx, raw=value)


def _parse_variant(name: str, raw: Any, line: int, path: str, thresholds: Thresholds, formats: tuple,
                   ctx: Ctx) -> VariantSpec:
    from ..recipes import RECIPES
    import difflib
    steps: list[Any] = []
    bad = False
    recipe_keys = [k for k in raw if k not in VariantSpec.RESERVED]
    for k in recipe_keys:
        kl = raw.line_of(k) if isinstance(raw, LMap) else line
        if k not in RECIPES:
            allowed = RECIPES.names() + list(VariantSpec.RESERVED)
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            ctx.error(kl, f"{path}.{k}", f"unknown key; {hint}allowed: {', '.join(allowed)}")
            bad = True
    if len(recipe_keys) > 1 and not bad:
        ctx.error(line, path, f"a variant names one recipe ({', '.join(recipe_keys)} given); chain several with steps: [...]")
        bad = True
    if recipe_keys and "steps" in raw and not bad:
        ctx.error(line, path, "use either one recipe key or steps: [...], not both")
        bad = True
    if not bad and recipe_keys:
        k = recipe_keys[0]
        kl = raw.line_of(k) if isinstance(raw, LMap) else line
        try:
            steps.append(_recipe_step(k, raw[k], path=f"{path}.{k}", line=kl, ctx=ctx))
        except Invalid:
            bad = True
    if "steps" in raw:
        sraw = raw["steps"]
        sl = raw.line_of("steps")
        if not isinstance(sraw, list) or not sraw:
            ctx.error(sl, f"{path}.steps", "expected a non-empty list of one-key mappings such as [{prune: {...}}, {quantize: {...}}]")
            bad = True
        else:
            for i, item in enumerate(sraw):
                il = sraw.line_of(i) if isinstance(sraw, LSeq) else sl
                ip = f"{path}.steps[{i}]"
                if not isinstance(item, dict) or len(item) != 1:
                    ctx.error(il, ip, f"a step is a one-key mapping, one of {RECIPES.names()}")
                    bad = True
                    continue
                (k, v), = item.items()
                if k not in RECIPES:
                    close = difflib.get_close_matches(str(k), RECIPES.names(), n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    ctx.error(il, f"{ip}.{k}", f"unknown recipe; {hint}available: {', '.join(RECIPES.names())}")
                    bad = True
                    continue
                try:
                    steps.append(_recipe_step(k, v, path=f"{ip}.{k}", line=il, ctx=ctx))
                except Invalid:
                    bad = True
    artifact = model = None
    if "artifact" in raw:
        al = raw.line_of("artifact")
        try:
            artifact = _artifact(raw["artifact"], path=f"{path}.artifact", line=al, ctx=ctx)
        except Invalid:
            bad = True
        for k in [k for k in raw if k in ("formats", "model", "steps") or k in recipe_keys]:
            why = {"formats": "an artifact variant is gated as the one file it is; 'formats' does not apply "
                              "(its format is artifact.format, or sniffed)",
                   "model": "give either 'artifact' (a file made elsewhere) or 'model' (a model to serialize), not both"}
            ctx.error(raw.line_of(k), f"{path}.{k}", why.get(k, "an artifact variant is not built: recipes do not apply "
                                                                 "(make a variant with model: and the recipe instead)"))
            bad = True
    if "model" in raw and "artifact" not in raw:
        ml = raw.line_of("model")
        try:
            kw = build_fields(ModelOverride, raw["model"], path=f"{path}.model", line=ml, ctx=ctx)
            model = finish(ModelOverride, kw, path=f"{path}.model", line=ml, ctx=ctx, raw=raw["model"])
        except Invalid:
            bad = True
    if name == "baseline" and (recipe_keys or "steps" in raw or "model" in raw):
        ctx.error(line, path, "the baseline is the unmodified model and takes no recipe; name the variant differently")
        bad = True
    th = thresholds
    if "thresholds" in raw:
        try:
            th = thresholds.override(raw["thresholds"], path=f"{path}.thresholds", line=raw.line_of("thresholds"), ctx=ctx)
        except Invalid:
            bad = True
    fmts = formats
    if "formats" in raw:
        try:
            fmts = build(tuple[FormatSpec, ...], raw["formats"], path=f"{path}.formats", line=raw.line_of("formats"), ctx=ctx)
        except Invalid:
            bad = True
    desc = ""
    if "description" in raw:
        try:
            desc = build(str, raw["description"], path=f"{path}.description", line=raw.line_of("description"), ctx=ctx)
        except Invalid:
            bad = True
    if bad:
        raise Invalid
    if artifact is not None:
        fmts = ()  # resolved by _resolve_artifacts, which knows the spec's folder
    return VariantSpec(name=name, steps=tuple(steps), thresholds=th, formats=tuple(fmts), line=line, description=desc,
                       artifact=artifact, model=model)


def _artifact(value: Any, *, path: str, line: int, ctx: Ctx):
    """An artifact source; its format is checked (and resolved) by :func:`_resolve_artifacts`."""
    from ..formats import FORMATS
    from ..registry import UnknownName
    kw = build_fields(ArtifactSource, value, path=path, line=line, ctx=ctx)
    src = finish(ArtifactSource, kw, path=path, line=line, ctx=ctx, raw=value)
    if src.format is not None and src.format not in FORMATS:
        fl = value.line_of("format") if isinstance(value, LMap) and "format" in value else line
        ctx.error(fl, f"{path}.format", str(UnknownName("format", src.format, FORMATS.names())))
        raise Invalid
    return src


def _resolve_artifacts(variants: dict, raw_variants: Any, filename: str, ctx: Ctx) -> dict:
    """Each artifact variant's one format: declared, else sniffed from its bytes, else (a missing
    file, which its load check will report) guessed from its suffix."""
    from ..formats import FORMATS, formats_by_name, sniff
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
                ctx.error(line, f"variants.{name}.artifact.format",
                          f"cannot tell the format of {src.path!r} from its bytes or its name; give artifact.format "
                          f"(one of {', '.join(FORMATS.names())})")
                continue
        fmt = FORMATS.get(fname)
        try:
            kw = build_fields(fmt.Options, src.options, path=f"variants.{name}.artifact.options", line=line, ctx=ctx)
            opts = finish(fmt.Options, kw, path=f"variants.{name}.artifact.options", line=line, ctx=ctx, raw=src.options)
        except Invalid:
            continue
        out[name] = dataclasses.replace(v, formats=(FormatSpec(fname, opts, line),),
                                        artifact=dataclasses.replace(src, format=fname))
    return out
