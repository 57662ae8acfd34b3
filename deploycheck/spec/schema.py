"""Typed validation: raw YAML values (with lines) -> frozen dataclasses, every problem collected.

The dataclasses in :mod:`deploycheck.spec.model` and the recipe / format option classes are the
single source of truth: this module validates against their type hints and field metadata, and
:func:`json_schema` derives the JSON Schema that ``deploycheck schema`` prints from the same hints.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from ..errors import Problem
from ..registry import did_you_mean, unknown
from ..schema import MISSING, field, import_path_problem  # the bottom layer; re-exported here
from .loader import LMap, LSeq

__all__ = ["MISSING", "field", "import_path_problem"]  # besides this module's own names
_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class Ctx:
    """Where we are while validating: collects problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def error(self, line: int, path: str, message: str) -> None:
        self.problems.append(Problem(line, path, message))


class Invalid(Exception):
    """Internal: the value at hand could not be built; the problem is already recorded."""


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    # The namespace the class was defined in, from its generated __init__: robust when its module
    # is no longer in sys.modules (pytester's in-process runs restore sys.modules afterwards, and
    # registries load plug-in modules lazily, so a class can outlive its sys.modules entry).
    ns = getattr(getattr(cls, "__init__", None), "__globals__", None)
    if ns is None:
        mod = sys.modules.get(cls.__module__)
        ns = vars(mod) if mod is not None else None
    return typing.get_type_hints(cls, globalns=ns)


@functools.cache
def _fields(cls: type) -> tuple:
    return dataclasses.fields(cls)


def describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + repr(list(get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        inner = describe(get_args(tp)[0])
        plural = {"a string": "strings", "an integer": "integers", "a number": "numbers", "a mapping": "mappings"}
        return f"a list of {plural.get(inner, inner)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def build(tp: Any, value: Any, *, path: str, line: int, ctx: Ctx) -> Any:
    """Convert ``value`` to type ``tp``, recording problems in ``ctx``; raises Invalid on failure."""
    parse = getattr(tp, "parse", None)
    if parse is not None and dataclasses.is_dataclass(tp):
        return parse(value, path=path, line=line, ctx=ctx)
    return build_plain(tp, value, path=path, line=line, ctx=ctx)


def build_plain(tp: Any, value: Any, *, path: str, line: int, ctx: Ctx) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return _plain(value)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        tried: list[Ctx] = []
        for a in candidates:
            sub = Ctx()
            try:
                return build(a, value, path=path, line=line, ctx=sub)
            except Invalid:
                tried.append(sub)
        # Report the alternative that matched the value's shape, else a summary.
        for a, sub in zip(candidates, tried, strict=True):
            if _shape_matches(a, value):
                ctx.problems.extend(sub.problems)
                raise Invalid
        ctx.error(line, path, f"expected {describe(tp)}, got {_kind(value)}")
        raise Invalid
    if origin is Literal:
        allowed = list(get_args(tp))
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            hint = did_you_mean(value, allowed).strip()
            ctx.error(line, path, f"{value!r} is not one of {allowed}" + (f" ({hint})" if hint else ""))
            raise Invalid
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            ctx.error(line, path, f"expected {describe(tp)}, got {_kind(value)}")
            raise Invalid
        item_tp = get_args(tp)[0]
        out, bad = [], False
        for i, item in enumerate(value):
            il = value.line_of(i) if isinstance(value, LSeq) else line
            try:
                out.append(build(item_tp, item, path=f"{path}[{i}]", line=il, ctx=ctx))
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        return tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            ctx.error(line, path, f"expected a mapping, got {_kind(value)}")
            raise Invalid
        _, vt = get_args(tp)
        mapping: dict[str, Any] = {}
        bad = False
        for k, v in value.items():
            kl = value.line_of(k) if isinstance(value, LMap) else line
            try:
                mapping[str(k)] = build(vt, v, path=f"{path}.{k}" if path else str(k), line=kl, ctx=ctx)
            except Invalid:
                bad = True
        if bad:
            raise Invalid
        return mapping
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path=path, line=line, ctx=ctx)
    if tp is bool:
        if not isinstance(value, bool):
            ctx.error(line, path, f"expected true or false, got {_kind(value)}")
            raise Invalid
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.error(line, path, f"expected an integer, got {_kind(value)}")
            raise Invalid
        return value
    if tp is float:
        if isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; users mean the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.error(line, path, f"expected a number, got {_kind(value)}")
            raise Invalid
        if value != value or value in (float("inf"), float("-inf")):
            ctx.error(line, path, f"expected a finite number, got {value!r}")
            raise Invalid
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            ctx.error(line, path, f"expected a string, got {_kind(value)}")
            raise Invalid
        return value
    raise TypeError(f"unsupported type in spec schema: {tp!r}")


def _shape_matches(tp: Any, value: Any) -> bool:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) or origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is Literal:
        return isinstance(value, str)
    return not isinstance(value, (dict, list))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _check_bounds(f: dataclasses.Field, value: Any, *, path: str, line: int, ctx: Ctx) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    m = f.metadata
    for key, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = m.get(key)
        if bound is not None and not ok(value, bound):
            ctx.error(line, path, f"must be {word} {bound}, got {value!r}")
            return False
    return True


def build_fields(
    cls: type, value: Any, *, path: str, line: int, ctx: Ctx, partial: bool = False, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate a mapping against ``cls``'s fields; returns the kwargs (only given ones if partial)."""
    if not isinstance(value, dict):
        ctx.error(line, path, f"expected a mapping, got {_kind(value)}")
        raise Invalid
    hints = type_hints(cls)
    fields = {f.name: f for f in _fields(cls) if f.init and f.name not in skip}
    kwargs: dict[str, Any] = {}
    bad = False
    for key in value:
        if key in skip:
            continue
        kl = value.line_of(key) if isinstance(value, LMap) else line
        kpath = f"{path}.{key}" if path else str(key)
        if key not in fields:
            ctx.error(kl, kpath, unknown("key", key, sorted(fields), listed="allowed", named=False))
            bad = True
            continue
        f = fields[key]
        try:
            v = build(hints[key], value[key], path=kpath, line=kl, ctx=ctx)
        except Invalid:
            bad = True
            continue
        if not _check_bounds(f, v, path=kpath, line=kl, ctx=ctx):
            bad = True
            continue
        kwargs[key] = v
    if not partial:
        for name, f in fields.items():
            if name not in value and f.default is MISSING and f.default_factory is MISSING:
                ctx.error(line, f"{path}.{name}" if path else name, "required key is missing")
                bad = True
    if bad:
        raise Invalid
    return kwargs


def build_dataclass(cls: type, value: Any, *, path: str, line: int, ctx: Ctx) -> Any:
    kwargs = build_fields(cls, value, path=path, line=line, ctx=ctx)
    return finish(cls, kwargs, path=path, line=line, ctx=ctx, raw=value)


def finish(cls: type[Any], kwargs: dict[str, Any], *, path: str, line: int, ctx: Ctx, raw: Any = None) -> Any:
    """Instantiate and run the class's cross-field ``check()``, which returns (field, message) pairs.
    A problem is reported at its field's line when the raw mapping is given."""
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    options = getattr(cls, "OPTIONS", None)
    if options and isinstance(raw, dict):
        # Options that belong to another method are errors, never silently ignored.
        key = cls.OPTIONS_BY
        allowed = options.get(getattr(obj, key), ())
        for name in raw:
            if name != key and name not in allowed:
                takes = ", ".join(allowed) if allowed else "no other options"
                fl = raw.line_of(name) if isinstance(raw, LMap) else line
                ctx.error(
                    fl,
                    f"{path}.{name}" if path else name,
                    f"does not apply to {key} {getattr(obj, key)!r}; it takes: {takes}",
                )
        if any(n != key and n not in allowed for n in raw):
            raise Invalid
    if check is not None:
        problems = check()
        for fname, msg in problems:
            fl = raw.line_of(fname) if isinstance(raw, LMap) and fname in raw else line
            ctx.error(fl, f"{path}.{fname}" if (path and fname) else (fname or path), msg)
        if problems:
            raise Invalid
    return obj


# --- JSON Schema ------------------------------------------------------------------------------


def json_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of a type; dataclasses may refine theirs with ``json_schema_hook``."""
    if dataclasses.is_dataclass(tp) and hasattr(tp, "json_schema_hook"):
        return tp.json_schema_hook()
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        alts = [json_schema(a) for a in args if a is not type(None)]
        if type(None) in args:
            alts.append({"type": "null"})
        return alts[0] if len(alts) == 1 else {"anyOf": alts}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if origin in (list, tuple):
        return {"type": "array", "items": json_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(get_args(tp)[1])}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    return {int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}, bool: {"type": "boolean"}}[tp]


def dataclass_schema(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    hints = type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        s = dict(json_schema(hints[f.name]))
        if f.metadata.get("doc"):
            s["description"] = f.metadata["doc"]
        for key, js in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum")):
            if f.metadata.get(key) is not None:
                s[js] = f.metadata[key]
        if f.default is not MISSING and isinstance(f.default, (int, float, str, bool, tuple)):
            s["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(f.name)
        props[f.name] = s
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    if required:
        out["required"] = required
    return out
