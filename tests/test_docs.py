"""The README is the spec reference users write from: it must match the code and show every key."""

from __future__ import annotations

import json
import os
import re

from deploycheck.spec.model import Spec
from deploycheck.spec.reference import render
from deploycheck.spec.schema import json_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def test_reference_section_is_generated_from_the_code():
    section = README.split("<!-- reference:start -->\n", 1)[1].split("<!-- reference:end -->", 1)[0]
    assert section == render(), "README spec reference is stale: run python -m deploycheck.spec.reference"


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
    missing = sorted(k for k in keys if f"`{k}`" not in README)
    assert missing == []


def test_quick_start_block_holds_exactly_two_commands():
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", README, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("pytest specs/")
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert 'pip install -q -c constraints.txt -e ".[onnx,ao,h5,html,hf,dev]"' in ci


def test_schema_is_valid_json_schema_and_accepts_the_examples():
    import jsonschema
    import yaml

    schema = json_schema(Spec)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in sorted(f for f in os.listdir(os.path.join(ROOT, "specs")) if f.endswith(".yaml")):
        with open(os.path.join(ROOT, "specs", name), encoding="utf-8") as fh:
            jsonschema.validate(yaml.safe_load(fh), schema)
    json.dumps(schema)
