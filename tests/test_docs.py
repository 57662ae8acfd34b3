"""The docs are what users write specs from: the generated spec reference must match the code and
show every key, every link between pages must land, and the Quick start stays two commands."""

from __future__ import annotations

import json
import os
import re
import unicodedata

import pytest

from deploycheck.spec.model import Spec
from deploycheck.spec.reference import render
from deploycheck.spec.schema import json_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
REFERENCE_PAGE = os.path.join(DOCS, "spec-reference.md")
START, END = "<!-- reference:start -->\n", "<!-- reference:end -->"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


README = _read(os.path.join(ROOT, "README.md"))
PAGES = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(DOCS) if f.endswith(".md"))


def generated_section(text: str) -> str:
    """The text between the reference markers; a page without them (or with two) has no reference."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise AssertionError(f"expected one {START.strip()} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0]


def test_reference_section_is_generated_from_the_code():
    section = generated_section(_read(REFERENCE_PAGE))
    assert section == render(), "docs/spec-reference.md is stale: run python -m deploycheck.spec.reference --write"


def test_a_stale_reference_fails(tmp_path):
    """The check above can fail: a page whose block misses a line, or that lost its markers, does."""
    fresh = render()
    page = f"# Spec reference\n\n{START}{fresh}{END}\n"
    assert generated_section(page) == fresh
    lost_a_row = page.replace("| `new_tokens` |", "| `new_tokenz` |", 1)
    assert lost_a_row != page and generated_section(lost_a_row) != fresh
    with pytest.raises(AssertionError):
        generated_section(page.replace(START, ""))
    with pytest.raises(AssertionError):
        generated_section(page + page)


def test_the_reference_lives_on_one_page():
    """One copy: the README links to it instead of keeping a second one that could go stale."""
    holders = [p for p in PAGES if START in _read(os.path.join(ROOT, p))]
    assert holders == [os.path.join("docs", "spec-reference.md")]


def _keys(schema, out):
    if isinstance(schema, dict):
        for k, v in schema.get("properties", {}).items():
            out.add(k)
            _keys(v, out)
        for key in ("anyOf", "items", "additionalProperties"):
            sub = schema.get(key)
            for s in sub if isinstance(sub, list) else [sub]:
                _keys(s, out)
    return out


def test_every_key_of_the_schema_is_documented():
    keys = _keys(json_schema(Spec), set())
    assert len(keys) > 80
    page = _read(REFERENCE_PAGE)
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert missing == []


def test_quick_start_block_holds_exactly_two_commands():
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", README, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("pytest specs/")
    ci = _read(os.path.join(ROOT, ".ci", "run"))
    assert 'pip install -q -c constraints.txt -e ".[onnx,ao,h5,html,hf,dev]"' in ci


def test_readme_stays_short():
    assert len(README.splitlines()) <= 260


def test_schema_is_valid_json_schema_and_accepts_the_examples():
    import jsonschema
    import yaml

    schema = json_schema(Spec)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in sorted(f for f in os.listdir(os.path.join(ROOT, "specs")) if f.endswith(".yaml")):
        with open(os.path.join(ROOT, "specs", name), encoding="utf-8") as fh:
            jsonschema.validate(yaml.safe_load(fh), schema)
    json.dumps(schema)


# -- links ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> str:
    """The text with fenced blocks, HTML comments and inline code removed (links there are not links)."""
    text = _FENCE.sub("", text)
    text = _COMMENT.sub("", text)
    return _CODE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (markup and links reduced to their text),
    lower-cased, punctuation dropped except hyphens and underscores, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>\s][^>]*>", "", text) if "`" not in text else text
    text = text.replace("`", "").replace("*", "").strip().lower()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LNM":
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: one per heading (a repeated heading gets -1, -2 …)."""
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", _FENCE.sub("", text), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", text):
        out.add(m.group(1))
    return out


def broken_links(page: str, root: str = ROOT) -> list[str]:
    """Relative links of one page (path from the root) whose file, or whose #anchor in a Markdown
    file, does not exist. External links (http, mailto) are not checked."""
    text = _read(os.path.join(root, page))
    bad = []
    for m in _LINK.finditer(_prose(text)):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(root, os.path.dirname(page), path)) if path else os.path.join(root, page)
        if not os.path.exists(full):
            bad.append(f"{page}: {target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in anchors(_read(full)):
            bad.append(f"{page}: {target}: no heading #{anchor} in {os.path.relpath(full, root)}")
    return bad


def test_every_link_and_anchor_resolves():
    assert [bad for page in PAGES for bad in broken_links(page)] == []


def test_the_link_check_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    """The check above can fail: a link to a page that is not there, or to a heading that is not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## The `deploycheck` command\n\n## Recipes\n\n## Recipes\n\n"
        "[ok](#the-deploycheck-command) [ok](#recipes-1) [ok](../README.md) [ext](https://example.com)\n"
        "[gone](b.md) [bad](#recipe) [bad](../README.md#nope)\n"
        "`[not a link](nowhere.md)`\n```\n[not a link](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "README.md").write_text("# Readme\n", encoding="utf-8")
    assert broken_links("docs/a.md", str(tmp_path)) == [
        "docs/a.md: b.md: no such file",
        "docs/a.md: #recipe: no heading #recipe in docs/a.md",
        "docs/a.md: ../README.md#nope: no heading #nope in README.md",
    ]


def test_slugs_follow_github():
    assert slug("`thresholds` (and `variants.<name>.thresholds`, which override key by key)") == (
        "thresholds-and-variantsnamethresholds-which-override-key-by-key"
    )
    assert slug("`data.source` schemes") == "datasource-schemes"
    assert slug("Latency on a busy runner (ratios far from 1)") == "latency-on-a-busy-runner-ratios-far-from-1"
    assert slug("1. Have a factory deploycheck can import") == "1-have-a-factory-deploycheck-can-import"


def test_the_contributor_map_covers_every_module():
    arch = _read(os.path.join(DOCS, "architecture.md"))
    pkg = os.path.join(ROOT, "deploycheck")
    modules = sorted(
        os.path.relpath(os.path.join(d, f), pkg).replace(os.sep, "/")
        for d, _, files in os.walk(pkg)
        for f in files
        if f.endswith(".py")
    )
    assert len(modules) > 60
    assert [m for m in modules if f"`{m}`" not in arch] == []
