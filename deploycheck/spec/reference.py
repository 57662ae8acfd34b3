"""The spec reference in Markdown, rendered from the same dataclasses that validate specs.

docs/spec-reference.md embeds the output between ``<!-- reference:start -->`` and
``<!-- reference:end -->``; tests/test_docs.py fails when they drift apart. Regenerate the page with
``python -m deploycheck.spec.reference --write`` (without ``--write`` it prints the block).
"""

from __future__ import annotations

import dataclasses

from ..data import PREPROCESS, SOURCES
from ..data.ops import Image, Normalize, Tokenize
from ..formats import FORMATS
from ..recipes import RECIPES
from ..recipes.prune import FineTune
from .inputs import InputSpec
from .model import (
    ArtifactSource,
    CrossMachineRule,
    DataSpec,
    GenerationSpec,
    HFSource,
    IsolationSettings,
    LatencySettings,
    MetricSpec,
    ModelOverride,
    ModelSpec,
    SemanticSpec,
    SnapshotSettings,
    Spec,
    SplitSpec,
)
from .schema import MISSING, describe, type_hints
from .thresholds import (
    BatchInvariance,
    FidelityThreshold,
    GenerationThreshold,
    LatencyThreshold,
    MachineScope,
    MetricThreshold,
    NextTokenThreshold,
    OutputThreshold,
    PerplexityThreshold,
    QuantizedThreshold,
    SizeThreshold,
    Thresholds,
)


def _default(f: dataclasses.Field) -> str:
    if f.default is MISSING and f.default_factory is MISSING:
        return "**required**"
    if f.default is not MISSING:
        v = f.default
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, tuple):
            return "[" + ", ".join(str(x) for x in v) + "]"
        if v == "":
            return '""'
        return str(v)
    v = f.default_factory()  # type: ignore[operator]  # typeshed: MISSING | factory; MISSING is ruled out above
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, tuple):
        return "[]"
    return "see below"


def table(cls: type, skip: tuple[str, ...] = ()) -> str:
    hints = type_hints(cls)
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or not f.metadata.get("doc"):
            continue
        tp = describe(hints[f.name]).replace("|", "\\|")
        bounds = ", ".join(
            f"{w} {f.metadata[k]}"
            for k, w in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
            if f.metadata.get(k) is not None
        )
        if bounds:
            tp += f" ({bounds})"
        doc = f.metadata["doc"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | {tp} | {_default(f)} | {doc} |")
    return "\n".join(rows)


INPUTS_DOC = """One input (today's form), or a mapping of named inputs passed to the model by keyword, in order:

```yaml
inputs: {shape: [1, 64]}                                  # one float32 input: model(x)
inputs: {shape: [1, 3, 32, 32], dtype: float16}           # one input of another dtype
inputs:                                                   # named inputs: model(input_ids=..., attention_mask=...)
  input_ids: {shape: [2, 16], dtype: int64, dynamic: {0: batch, 1: {name: seq, min: 4, max: 128}}}
  attention_mask: {shape: [2, 16], dtype: bool, dynamic: {0: batch, 1: {name: seq, min: 4, max: 128}}}
  positions: {shape: [2, 16], dtype: int32, dynamic: {1: {name: seq, min: 4, max: 128}}}  # same seq
  feats: {shape: [2, 4], dtype: float16}                  # a fixed-size input next to them
```

The data give named inputs as a dict by name or a tuple in the declared order (`python:` returns
`({"input_ids": ids, "attention_mask": mask}, y)` or `((ids, mask), y)`; an `npz:` file or a built-in
dataset gives one array, so one input). Each input is cast to its declared dtype; an integer or bool
input given fractional values (or bool given values other than 0/1) is an error naming the input,
the dtype found and the one declared. Every format carries the signature: TorchScript traces by
keyword, torch.export and AOTInductor take `kwargs` with a `Dim` per dynamic dimension (inputs that
name the same dimension share it), ONNX names its graph inputs and makes those axes dynamic, and
state-dict formats rebuild the module. A dynamic dimension with `min` and `max` (other than the batch)
is tried in every reloaded artifact at its min, middle and max size against the in-memory variant
(the `dynamic` item); an artifact that specialised it fails naming the input and dimension
(`seq traced at 16; at 4 (input_ids[1], attention_mask[1]) the reloaded export artifact …`).
A model that takes each sample's valid length beside a padded sequence (a speech model's `lengths`
beside `feats`) declares it with `lengths_of`, so the sizes the `dynamic` item cuts to come with
consistent lengths (clamped to the cut; otherwise a 64-frame probe would carry lengths of 164):

```yaml
  inputs:
    feats: {shape: [1, 300, 80], dynamic: {1: {name: frames, min: 32, max: 300}}}
    lengths: {shape: [1], dtype: int64, lengths_of: frames}
```

torch.export and the ONNX exporter cannot keep a time axis dynamic through `nn.GRU` / `nn.LSTM`
(they specialise it while tracing): those formats report `unsupported` with torch's constraint
message and suggested fix; give the format `dynamic_seq: false` to export at the example's size, or
ship TorchScript.

Outputs need no declaration: whatever the model returns is read as named tensors, each checked,
snapshotted and selectable by `metric.output` and `thresholds.outputs`:

| the model returns | output names |
| --- | --- |
| a tensor | `0` |
| a tuple or list `(logits, emb)` | `0`, `1` |
| a dict `{"logits": …, "emb": …}` (or a Hugging Face output) | `logits`, `emb` |
| nested: `{"logits": …, "aux": (pooled, {"norm": …})}` | `logits`, `aux.0`, `aux.1.norm` |

What each format does with each form, as `tests/test_signatures.py` runs them end to end (✅ carried
and checked, at every declared size where a dimension is dynamic; ➖ unsupported, the item skipped
with the reason shown; ❌ the load fails with the reason; never a pass; · not run by the suite):

| form | torchscript | export | onnx | aoti | safetensors | hdf5 | pickle |
| --- | --- | --- | --- | --- | --- | --- | --- |
| one float32 input, a tensor output (`tests/test_formats.py`) | ✅ | ✅ | ✅ | ✅ | ✅ | ✅ | ✅ |
| one float32 input, a tuple or a dict of outputs | ✅ | ✅ | ✅ | · | · | · | · |
| named int64, bool, int32, float16 and bfloat16 inputs (dict data), a dynamic `seq`, a tuple holding a dict of outputs | ✅ | ✅ | ✅ (bfloat16 fed as an `OrtValue`: numpy has none) | ✅ | ✅ | ✅ | ✅ |
| named inputs from tuple data; an artifact that specialised `seq` | ✅ caught (the trace baked it in) | ✅ caught (`dynamic_seq: false`) | · | · | · | · | · |
| fp16 variant of the named-input model | ✅ | ✅ (under onnx) | ✅ | · | · | · | · |
| bf16 variant of the named-input model | · | · | ❌ onnxruntime's CPU provider has no bfloat16 kernels (`unsupported-type`) | · | · | ➖ numpy has no bfloat16 | · |
| distillation then static int8 on the named inputs | · | ✅ | · | · | · | · | · |

TorchScript's tracer cannot return a dict whose values differ in type (a tensor next to a tuple):
such a model is ➖ in `torchscript` with the tracer's reason (`Tracer cannot infer type of …`) and
runs in the other formats. A format that cannot export the model at all (a torch.ao packed int8
module through torch.export, a dynamic dimension the model's code specialises under torch.export)
is ➖ with the exporter's reason."""


VARIANT_DOC = """\
A variant is the baseline changed one way: one recipe key (below), or `steps`, a chain of them;
or a file made elsewhere (`artifact`), or a model of its own (`model`). `baseline` is the
unmodified model and takes no recipe. Besides that, every variant takes:

| key | type | default | meaning |
| --- | --- | --- | --- |
| `steps` | a list of one-key mappings | - | recipes applied in order, e.g. `[{prune: {...}}, {quantize: {...}}]` |
| `thresholds` | a mapping | the spec's | overrides the spec's `thresholds` key by key |
| `formats` | a list | the spec's | replaces the spec's `formats` for this variant |
| `description` | a string | "" | free text shown in reports |
| `cadence` | one of ['commit', 'nightly', 'weekly'] | the spec's | this variant's run tier (see the top-level `cadence`) |
| `artifact` | a mapping | - | a file made elsewhere, gated against the baseline (below) |
| `model` | a mapping | - | the variant's own model (below) |"""


IMAGE_EXAMPLE = """An image classifier over a folder with one subfolder per class (`pip install 'deploycheck[vision]'`;
a runnable one: `examples/images/pics.yaml`):

```yaml
data:
  source: images:val_images            # val_images/<class>/<image>.jpg; labels: sorted class indices
  split: {test_fraction: 0.5, seed: 0}
  preprocess:
    - image: {resize: 256, crop: 224, interpolation: bilinear, channels: rgb}
    - normalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
```
"""


def render() -> str:
    out = []

    def sec(title: str, body: str) -> None:
        out.append(f"#### {title}\n\n{body}\n")

    sec("Top level", table(Spec, skip=("path", "display", "lines")))
    sec("`model`", table(ModelSpec))
    sec("`model.inputs`", INPUTS_DOC + "\n\nEach input takes:\n\n" + table(InputSpec))
    sec("`model.hf`", (HFSource.__doc__ or "").strip() + "\n\n" + table(HFSource))
    sec("`data`", table(DataSpec))
    sec("`data.split`", table(SplitSpec))
    sources = ["| source | what it reads |", "| --- | --- |"] + [
        f"| `{SOURCES.get(k).form}` | {SOURCES.get(k).doc} |" for k in SOURCES.in_order()
    ]
    sec("`data.source` schemes", "\n".join(sources))
    steps = ["| step | argument |", "| --- | --- |"] + [
        f"| `{k}` | {PREPROCESS.get(k).doc} |" for k in PREPROCESS.in_order()
    ]
    sec(
        "`data.preprocess` steps (each a one-key mapping, applied in order)",
        "\n".join(steps)
        + "\n\n`normalize` takes:\n\n"
        + table(Normalize)
        + "\n\n`tokenize` takes:\n\n"
        + table(Tokenize)
        + "\n\n`image` takes (Pillow decodes; the same resize and centre crop as torchvision's `Resize(n)` "
        "and `CenterCrop(n)` on PIL images, so an ImageNet model reads what it was trained on):\n\n"
        + table(Image)
        + "\n\n"
        + IMAGE_EXAMPLE,
    )
    sec("`metric` (a name, or a mapping)", table(MetricSpec))
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        opts = table(fmt.Options)
        body = fmt.description + ("\n\n" + opts if opts.count("\n") > 1 else "\n\nNo options.")
        sec(f"`formats`: `{name}`", body)
    sec("`variants.<name>` (one variant)", VARIANT_DOC)
    for name in RECIPES.names():
        cls = RECIPES.get(name)
        body = (cls.__doc__ or "").strip() + "\n\n" + table(cls)
        options = getattr(cls, "OPTIONS", None)
        if options:
            body += (
                f"\n\nEach `{cls.OPTIONS_BY}` takes only its own options; any other is a spec error.\n\n"
                f"| `{cls.OPTIONS_BY}` | options it takes |\n| --- | --- |\n"
                + "\n".join(f"| `{m}` | {', '.join(f'`{o}`' for o in opts) or '-'} |" for m, opts in options.items())
            )
        sec(f"`variants.<name>.{name}` (recipe)", body)
    sec("`variants.<name>.prune.finetune`", table(FineTune))
    sec(
        "`variants.<name>.artifact` (a file made elsewhere)",
        (ArtifactSource.__doc__ or "").strip() + "\n\n" + table(ArtifactSource),
    )
    sec(
        "`variants.<name>.model` (the variant's own model)",
        (ModelOverride.__doc__ or "").strip() + "\n\n" + table(ModelOverride),
    )
    sec("`thresholds` (and `variants.<name>.thresholds`, which override key by key)", table(Thresholds))
    for title, cls in (
        ("metric", MetricThreshold),
        ("outputs", OutputThreshold),
        ("fidelity", FidelityThreshold),
        ("latency", LatencyThreshold),
        ("size", SizeThreshold),
        ("batch_invariance", BatchInvariance),
        ("quantized", QuantizedThreshold),
        ("perplexity", PerplexityThreshold),
        ("next_token", NextTokenThreshold),
        ("generation", GenerationThreshold),
    ):
        sec(f"`thresholds.{title}`", (cls.__doc__ or "").strip() + "\n\n" + table(cls))
        if cls is LatencyThreshold:
            sec("`thresholds.latency.machines`", (MachineScope.__doc__ or "").strip() + "\n\n" + table(MachineScope))
    sec("`latency`", table(LatencySettings))
    sec("`isolation`", table(IsolationSettings))
    sec("`snapshot`", table(SnapshotSettings))
    sec("`snapshot.cross_machine`", (CrossMachineRule.__doc__ or "").strip() + "\n\n" + table(CrossMachineRule))
    sec("`semantic`", (SemanticSpec.__doc__ or "").strip() + "\n\n" + table(SemanticSpec))
    sec("`generation`", (GenerationSpec.__doc__ or "").strip() + "\n\n" + table(GenerationSpec))
    return "\n".join(out).rstrip() + "\n"


def write(path: str) -> bool:
    """Replace the block between the reference markers of the page at ``path``; True when it changed."""
    start, end = "<!-- reference:start -->\n", "<!-- reference:end -->"
    with open(path, encoding="utf-8") as fh:
        page = fh.read()
    if page.count(start) != 1 or page.count(end) != 1:
        raise SystemExit(f"{path}: expected one {start.strip()} ... {end} block")
    head, rest = page.split(start, 1)
    new = head + start + render() + end + rest.split(end, 1)[1]
    if new != page:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != page


if __name__ == "__main__":
    import os
    import sys

    if sys.argv[1:] == ["--write"]:
        page = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "spec-reference.md")
        print("updated" if write(os.path.normpath(page)) else "up to date", os.path.normpath(page))
    else:
        print(render(), end="")
