"""YAML -> plain Python values that remember their line numbers.

Mappings become :class:`LMap` and sequences :class:`LSeq`; both know their own line and the
line of each key or item, so every later error can name ``file:line``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ..errors import Problem, SpecError

#: A YAML file is a deploycheck spec when a top-level ``deploycheck:`` key declares its version.
MARKER = re.compile(r"^deploycheck\s*:", re.MULTILINE)


class LMap(dict):
    line: int = 0
    key_lines: dict

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LSeq(list):
    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


MARKER_BYTES = re.compile(rb"^deploycheck\s*:", re.MULTILINE)


def is_spec_text(text: str) -> bool:
    """Cheap test used at collection: other YAML in a repository (CI workflows, configs) is ignored.
    A leading byte-order mark does not hide the marker."""
    return MARKER.search(text.removeprefix("\ufeff")) is not None


def may_be_spec(path: str) -> bool:
    """Whether a ``.yaml`` file must be collected as a spec (pytest and ``deploycheck validate``).

    Other YAML is ignored by design, but a file that cannot be judged is never skipped silently:
    an unreadable file, and a file that is not UTF-8 but whose bytes hold a top-level
    ``deploycheck:`` line, are collected so that reading them fails with their path
    (:func:`read_spec`). Undecodable YAML without that line is not a spec of any encoding
    deploycheck reads, and stays ignored like any other YAML."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return True
    if data.startswith(_UTF16_BOMS):
        # Not UTF-8, but a spec saved as UTF-16 by an editor must fail reading, not be skipped.
        try:
            return is_spec_text(data.decode("utf-16"))
        except UnicodeDecodeError:
            return False
    try:
        return is_spec_text(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return MARKER_BYTES.search(data.removeprefix(_UTF8_BOM)) is not None


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_spec(path: str) -> str:
    """A spec file's text (UTF-8), or a SpecError naming the file, and the line of a byte that is not UTF-8."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise SpecError(path, [Problem(1, "", f"cannot read the spec file: {e.strerror or e}")]) from None
    if data.startswith(_UTF16_BOMS):
        raise SpecError(
            path,
            [Problem(1, "", "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save the spec as UTF-8")],
        )
    try:
        # A UTF-8 byte-order mark (some Windows editors write one) is not part of the text.
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(
            path,
            [
                Problem(
                    line,
                    "",
                    f"the file is not UTF-8: byte 0x{data[e.start]:02x} at column {col} "
                    "cannot be decoded; save the spec as UTF-8",
                )
            ],
        ) from None


#: libyaml's parser when present (several times faster; collection of many specs stays cheap).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str, filename: str) -> Any:
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise SpecError(
            filename, [Problem(line, "", f"YAML error: character #x{e.character:04x} is not allowed in YAML")]
        ) from None
    problems: list[Problem] = []
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(filename, [Problem(1, "", "the file is empty")])
        _check_aliases(node, filename)
        return _convert(loader, node, problems, "")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        msg = " ".join(x for x in (e.context, e.problem) if x)
        raise SpecError(filename, [Problem(line, "", f"YAML syntax error: {msg}")]) from None
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        raise SpecError(
            filename, [Problem(line, "", f"YAML error: character #x{e.character:04x} is not allowed in YAML")]
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(filename, [Problem(1, "", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()
        if problems:
            raise SpecError(filename, problems)


#: Bounds on YAML aliases: a spec reuses an anchor a few times, never thousands; a "billion laughs"
#: file (nine levels of nine aliases, 629 bytes) would otherwise expand to 387 million values.
MAX_ALIASES = 1000
MAX_VALUES = 100_000


def _check_aliases(root: yaml.Node, filename: str) -> None:
    """Count alias uses and the values the document expands to, without expanding it: each node's
    expanded size is computed once (memoised by identity), so a bomb is refused in linear time."""
    size: dict[int, int] = {}
    seen: set[int] = set()
    referenced: set[int] = {id(root)}
    aliases = 0
    first_alias_line = 0
    # iterative post-order walk: a deep document must not hit the recursion limit here
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        if not done:
            if id(node) in seen:  # a second visit before the first finished: a recursive alias
                raise SpecError(
                    filename,
                    [
                        Problem(
                            node.start_mark.line + 1, "", "YAML error: a recursive alias (an anchor used inside itself)"
                        )
                    ],
                )
            seen.add(id(node))
            stack.append((node, True))
            for child in _children(node):
                if id(child) in referenced:  # the same node once more: an alias use
                    aliases += 1
                    first_alias_line = first_alias_line or child.start_mark.line + 1
                referenced.add(id(child))
                stack.append((child, False))
            continue
        size[id(node)] = 1 + sum(size[id(c)] for c in _children(node))
        if aliases > MAX_ALIASES:
            raise SpecError(
                filename,
                [
                    Problem(
                        first_alias_line,
                        "",
                        (
                            f"YAML error: {aliases} alias uses (at most {MAX_ALIASES}); a spec never needs this "
                            "(an alias bomb?); write the values out or use fewer anchors"
                        ),
                    )
                ],
            )
        if size[id(node)] > MAX_VALUES:
            raise SpecError(
                filename,
                [
                    Problem(
                        node.start_mark.line + 1,
                        "",
                        (
                            f"YAML error: the aliases here expand to more than {MAX_VALUES} values; a spec never needs "
                            "this (an alias bomb?); write the values out or use fewer anchors"
                        ),
                    )
                ],
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _convert(loader, node: yaml.Node, problems: list[Problem], path: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out = LMap()
        out.line, out.key_lines = node.start_mark.line + 1, {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            kline = knode.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)):
                problems.append(Problem(kline, path, f"mapping keys must be plain scalars, got {type(key).__name__}"))
                continue
            key = str(key) if not isinstance(key, str) else key
            kpath = f"{path}.{key}" if path else key
            if key in out:
                problems.append(Problem(kline, kpath, f"duplicate key (first defined at line {out.key_lines[key]})"))
                continue
            out[key] = _convert(loader, vnode, problems, kpath)
            out.key_lines[key] = kline
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LSeq()
        seq.line, seq.item_lines = node.start_mark.line + 1, []
        for i, item in enumerate(node.value):
            seq.append(_convert(loader, item, problems, f"{path}[{i}]"))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    return loader.construct_object(node, deep=True)
