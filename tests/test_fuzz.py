"""Mutated specs always end in a SpecError (file:line), never an internal traceback."""

from __future__ import annotations

import yaml
from conftest import make_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploycheck.errors import SpecError
from deploycheck.spec import parse

VALID = make_spec(
    variants="  baseline: {}\n  q:\n    quantize: {method: dynamic_int8}\n"
    "  c:\n    steps:\n      - prune: {method: l1_unstructured, amount: 0.5}\n"
    "      - quantize: {method: fp16}\n  d:\n    distill: {student: 'm:S', epochs: 2}",
    formats="[torchscript, {onnx: {opset: 18}}]",
    thresholds="  metric: {max_drop: 0.01}\n  latency: {p95_ms: 5.0, max_ratio: 1.1}",
)
DOC = yaml.safe_load(VALID)

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


ALL_PATHS = [p for p in paths(DOC) if p]


def mutate(doc, path, action, value):
    import copy

    d = copy.deepcopy(doc)
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "unknown" and isinstance(parent, dict):
        parent[f"{last}_typo"] = value
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "unknown"]), garbage)
def test_mutations_end_in_spec_errors(path, action, value):
    text = yaml.safe_dump(mutate(DOC, path, action, value), sort_keys=False)
    # A typo'd key in a schema mapping must be an error; free-form mappings (factory kwargs) and
    # the variants mapping (whose keys are names the user chooses) take any key.
    typed = (
        action == "unknown"
        and isinstance(_parent(DOC, path), dict)
        and not any(k in ("kwargs", "student_kwargs") for k in path)
        and tuple(path[:-1]) != ("variants",)
    )
    try:
        parse(text, filename="f.yaml")
    except SpecError as e:
        assert e.problems
        for line in str(e).splitlines():
            assert line.startswith("f.yaml:"), line
        if typed:  # named, or its one-key mapping (a format, a preprocessing step) now has two keys
            assert f"{path[-1]}_typo" in str(e) or "one-key mapping" in str(e) or "one key" in str(e), str(e)
    else:
        assert not typed, f"an unknown key {path[-1]}_typo was accepted silently"


def _parent(doc, path):
    for k in path[:-1]:
        doc = doc[k]
    return doc


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_garbage_text_is_a_spec_error(text):
    try:
        parse("deploycheck: 1\n" + text, filename="f.yaml")
    except SpecError as e:
        assert str(e).startswith("f.yaml:")
