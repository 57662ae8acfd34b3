"""Where a variant departs from its reference: per-layer comparison on the failing probes.

Run only when a check fails (outputs, metric, fidelity, snapshot), so it costs nothing while
checks pass. Activations are captured per module, by name:

- eager models: forward hooks on every module;
- a reloaded ``export`` artifact: its graph nodes, mapped to the modules they came from by their
  ``nn_module_stack`` (a module's activation is its last node's output);
- a reloaded ``onnx`` artifact: every node's output made a graph output, run by onnxruntime, and
  mapped to modules by the exporter's ``name_scopes`` metadata.

Other formats (TorchScript, AOTInductor, state dicts) do not expose their layers; the table then
describes the in-memory variant and says so. Modules are matched by name (a wrapper's prefix such
as the fp16 cast's ``inner.`` is stripped) and listed in the order they finish, so a container
(an LM wrapper around the whole model) comes after what it holds and is never named before the
layer that departed; a module called several times (one activation module shared by a block) is
compared at its last call on both sides; a module with several outputs (a rotary embedding's cos
and sin) is not compared with a graph, whose last node for it need not be its first output. Per matched module, in execution order: the largest
absolute difference, the mean cosine similarity to the reference activation, and the relative
error ``||x - reference|| / ||reference||`` as a share of the final output's. The first module whose
relative error is beyond tolerance is where it departs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .formats.integrity import runtime_libraries
from .loading import describe_exc
from .protocol import batch_len, call, first_tensor

#: a layer departs when its relative error exceeds this, or 10% of the final output's
MIN_REL = 1e-3


#: formats whose reloaded artifact exposes per-module activations here
EXPOSES_LAYERS = ("export", "onnx")

#: evaluation samples the table is computed on
PROBES = 16


@dataclass
class Layer:
    """One matched module: how far the variant's activation is from the reference's."""

    module: str
    max_abs: float
    rel: float  # ||x - reference|| / ||reference||
    cosine: float  # mean over the probes
    share: float = 0.0  # rel as a share of the final output's
    kl: float | None = None  # a language model's residual stream: next-token KL through the lens (see Lens)


@dataclass
class Lens:
    """A causal LM's next-token distributions read from a hidden state of its residual stream (a
    decoder block's output) through the reference's own final norm and ``lm_head`` (the "logit
    lens"): the walk then ranks the blocks by the quantity ``next_token`` and ``perplexity`` gate,
    KL(reference || subject) in nats over the probes' real positions, instead of a relative error."""

    layers: frozenset[str]  # the reference's module names whose output is the residual stream
    head: Any  # hidden state -> logits
    mask: Any = None  # (probes, positions): which positions are scored (padding is not)


@dataclass
class Divergence:
    """Where ``subject`` departs from ``reference``, layer by layer (see the module doc)."""

    probes: int
    subject: str = "the variant"
    reference: str = "the baseline"
    source: str = "in memory"  # where the subject's layers were read
    rows: list[Layer] = field(default_factory=list)
    first: str | None = None  # the first module beyond ``limit``
    limit: float | None = None
    final: dict | None = None  # the final output's statistics
    note: str = ""
    made_elsewhere: bool = False  # a side is a file made elsewhere: no in-memory model to compare
    measure: str = "relative error"  # or "next-token KL" (a language model's blocks, see Lens)
    final_kl: float | None = None
    block: str | None = None  # by next-token KL: the first block beyond; ``first`` is then its first departing part

    def render(self, *, limit_rows: int = 10) -> str:
        """The message's continuation: where it departs, then a short per-layer table."""
        if self.made_elsewhere:
            return "  where: an artifact made elsewhere has no in-memory model here to compare layer by layer"
        rows = self.rows
        lines = []
        kl = self.measure == "next-token KL"
        if self.first and kl and self.block is not None:
            row = next(r for r in rows if r.module == self.block)
            inside = (
                f"at module {self.first!r}, in block {self.block!r}"
                if self.first != self.block
                else (f"at block {self.block!r}")
            )
            lines.append(
                f"  where: {self.subject} first departs from {self.reference} {inside}: the block's next-token KL "
                f"through the baseline's final norm and lm_head is {row.kl:.3g} nats > {self.limit:.2g} (a tenth "
                f"of the output's {self.final_kl:.3g}; earlier blocks stay below), on {self.probes} probes, {self.source}"
            )
        elif self.first:
            lines.append(
                f"  where: {self.subject} first departs from {self.reference} at module {self.first!r} "
                f"(relative error > {self.limit:.2g}), on {self.probes} probes, {self.source}"
            )
        elif rows:
            unit = " nats of next-token KL" if kl else ""
            lines.append(
                f"  where: no module departs beyond {self.limit:.2g}{unit}; the difference appears at the output"
            )
        if self.note:
            lines.append(f"  note: {self.note}")
        if rows:
            start = 0
            if self.first:
                start = max(0, next(i for i, r in enumerate(rows) if r.module == self.first) - 1)
            shown = rows[start : start + limit_rows]
            width = max(len("module"), *(len(r.module) for r in shown))
            head = f"    {'module':<{width}}  {'max abs diff':>12}  {'cosine':>9}  {'share of final error':>20}"
            lines.append(head + (f"  {'next-token KL':>13}" if kl else ""))
            for r in shown:
                line = f"    {r.module:<{width}}  {r.max_abs:>12.4g}  {r.cosine:>9.5f}  {r.share:>19.1%}"
                if kl:
                    line += f"  {r.kl:>13.4g}" if r.kl is not None else f"  {'-':>13}"
                lines.append(line)
            if len(rows) > start + limit_rows:
                lines.append(f"    … {len(rows) - start - limit_rows} more modules in the JSON report")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """The JSON report's form (the HTML report's table reads it)."""
        return dataclasses.asdict(self)


def compare(
    reference, variant, probes, *, fmt: str | None, artifact=None, against: str = "baseline", lens: Lens | None = None
) -> Divergence:
    """Where ``variant`` departs from ``reference`` (in-memory models; None for a file made
    elsewhere) on ``probes``: in the reloaded ``artifact``'s own layers where its format ``fmt``
    exposes them, else in the in-memory variant's, said so. ``against`` names the reference:
    "baseline", or "in-memory" for an artifact held to its own in-memory model (only its own
    layers say anything new then)."""
    n = batch_len(probes)
    reference_words = "the baseline" if against == "baseline" else "the in-memory variant"
    if reference is None:
        return Divergence(n, reference=reference_words, note="artifact made elsewhere", made_elsewhere=True)
    captured, note = None, ""
    if fmt in EXPOSES_LAYERS and artifact is not None:
        try:
            captured = capture_artifact(artifact.path, fmt, probes, manifest=artifact.manifest)
        except Exception as e:  # noqa: BLE001 - localisation explains a failure; it never adds one
            note = f"the {fmt} artifact's layers could not be read ({describe_exc(e)}); in memory instead"
    if captured is not None:
        how = "graph nodes mapped to modules" if fmt == "export" else "intermediate outputs from onnxruntime"
        subject, source = f"the reloaded {fmt} artifact", f"in its own layers ({how})"
    elif against != "baseline":
        return Divergence(
            n,
            reference=reference_words,
            note=note
            or f"a {fmt} artifact does not expose its layers here (layer tables read {' and '.join(EXPOSES_LAYERS)})",
        )
    elif variant is None:
        return Divergence(n, reference=reference_words, note="artifact made elsewhere", made_elsewhere=True)
    else:
        subject = "the variant"
        source = "in memory" + (f" (a reloaded {fmt} artifact does not expose its layers)" if fmt else "")
    res = localise(reference, variant, probes, captured=captured, lens=lens)
    res.probes, res.subject, res.reference, res.source = n, subject, reference_words, source
    res.note = res.note or note
    return res


def _capture(model, probes) -> tuple[dict[str, Any], list[str], Any, set[str]]:
    """Every module's output tensor on ``probes`` at its last call, by name; the modules in the
    order they finish (a container after what it holds, as a graph's last node for it comes); the
    final output; and the modules whose output is a tuple or mapping (a rotary embedding's cos and
    sin, attention's output and weights), whose graph counterpart need not be their first part."""
    import torch

    acts: dict[str, Any] = {}
    done: dict[str, int] = {}
    multi: set[str] = set()
    tick = [0]
    hooks = []
    named = dict(model.named_modules()) if hasattr(model, "named_modules") else {}
    for name, mod in named.items():
        if not name:
            continue

        def hook(_m, _inp, out, _name=name):
            t = first_tensor(out)
            if t is None:
                return
            try:
                # the last call: a module called several times (one activation module shared by a
                # block) is compared at its last call on both sides, as a graph's nodes for it end
                acts[_name] = t.detach().dequantize() if t.is_quantized else t.detach()
            except Exception:  # noqa: BLE001 - an activation we cannot read is just not compared
                return
            tick[0] += 1
            done[_name] = tick[0]
            if not isinstance(out, torch.Tensor):
                multi.add(_name)

        try:
            hooks.append(mod.register_forward_hook(hook))
        except Exception:  # noqa: BLE001 - scripted or exported modules may refuse hooks
            pass
    try:
        with torch.inference_mode():
            final = first_tensor(call(model, probes))
    finally:
        for h in hooks:
            h.remove()
    return acts, sorted(acts, key=lambda n: done[n]), final, multi


def _strip(names, other: set[str]) -> dict[str, str]:
    """Map the variant's module names onto the baseline's (a wrapper adds a prefix)."""
    out = {}
    for n in names:
        cand = n
        while cand and cand not in other:
            cand = cand.partition(".")[2]
        if cand:
            out[n] = cand
    return out


def _stats(a, b) -> dict | None:
    import torch

    if a.shape != b.shape:
        return None
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    diff = a - b
    denom = b.norm().item()
    rel = diff.norm().item() / denom if denom > 0 else float(diff.norm().item() > 0)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).mean().item()
    return {"max_abs": diff.abs().max().item() if diff.numel() else 0.0, "rel": rel, "cosine": cos}


def capture_artifact(path: str, fmt: str, probes, *, manifest: dict | None = None):
    """Per-module activations of a reloaded artifact (see the module doc), or None where the
    format does not expose its layers."""
    if fmt not in EXPOSES_LAYERS:
        return None
    for lib in runtime_libraries(manifest):
        __import__(lib)  # libraries that register the artifact's operators (torchao for pt2e int8)
    return _capture_export(path, probes) if fmt == "export" else _capture_onnx(path, probes)


def _finish_order(done: dict[str, int]) -> list[str]:
    """Modules in the order they finish: by their last node; a container, which ends on the same
    node as its last child, after it."""
    return sorted(done, key=lambda n: (done[n], -n.count(".")))


def _capture_export(path: str, probes):
    import torch
    import torch.fx

    gm = torch.export.load(path).module()
    acts: dict[str, Any] = {}
    done: dict[str, int] = {}
    tick = [0]

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            stack = n.meta.get("nn_module_stack") if n.op == "call_function" else None
            t = first_tensor(out) if stack else None
            if stack and t is not None and t.is_floating_point():
                tick[0] += 1
                for name, _type in stack.values():
                    if name:
                        acts[name] = t.detach()  # the module's last node so far: its output at the end
                        done[name] = tick[0]
            return out

    with torch.inference_mode():
        args = list(probes.values()) if isinstance(probes, dict) else [probes]
        final = first_tensor(Recorder(gm).run(*args))
    return acts, _finish_order(done), final


def _capture_onnx(path: str, probes):
    import ast

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    model = onnx.load(path)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - outputs without inferred types still run
        pass
    typed = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    last: dict[str, str] = {}  # module -> the output of its last node (its activation)
    done: dict[str, int] = {}  # module -> the index of its last node: the order modules finish
    for i, node in enumerate(model.graph.node):
        meta = {p.key: p.value for p in node.metadata_props}
        if "pkg.torch.onnx.name_scopes" not in meta or not node.output or not node.output[0]:
            continue
        try:
            names = [n for n in ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])[:-1] if n]
        except (ValueError, SyntaxError):
            continue
        for name in names:
            last[name] = node.output[0]
            done[name] = i
    # Only the activations the table needs become graph outputs (a transformer's every node
    # output, on 16 probes, would not fit in memory).
    existing = {o.name for o in model.graph.output}
    for out in dict.fromkeys(last.values()):
        if out not in existing:
            model.graph.output.append(typed.get(out) or onnx.ValueInfoProto(name=out))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every node's output
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = (
        {k: v.numpy() for k, v in probes.items()}
        if isinstance(probes, dict)
        else {sess.get_inputs()[0].name: probes.numpy()}
    )
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(names, feed), strict=True))
    acts: dict[str, Any] = {}
    order = _finish_order(done)
    for name in list(order):
        v = values.get(last[name])
        if v is None or not np.issubdtype(np.asarray(v).dtype, np.floating):
            order.remove(name)
            continue
        acts[name] = torch.from_numpy(np.asarray(v))
    final = torch.from_numpy(np.asarray(values[names[0]]))
    return acts, order, final


def _kl(ref_logits, logits, mask) -> float | None:
    """Mean KL(reference || subject) of the next-token distributions over the scored positions."""
    import torch

    if ref_logits.shape != logits.shape or ref_logits.ndim != 3:
        return None
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    if mask is not None and mask.shape == kl.shape:
        kl = kl[mask.bool()]
    return float(kl.mean().item()) if kl.numel() else None


#: a block departs, by next-token KL, beyond this or a tenth of the output's KL
MIN_KL = 1e-4


def lm_lens(model, probes) -> Lens | None:
    """The :class:`Lens` of a causal LM wrapper (deploycheck.hf.CausalLM: ``model.lm`` a
    transformers model with a decoder's ``layers`` and final ``norm``), or None for other models."""
    import torch

    lm = getattr(model, "lm", None)
    if lm is None or not hasattr(lm, "get_output_embeddings"):
        return None
    head = lm.get_output_embeddings()
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    norm = getattr(decoder, "norm", None) or getattr(decoder, "final_layernorm", None)
    blocks = getattr(decoder, "layers", None)
    if head is None or norm is None or blocks is None:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    layers = frozenset(names[id(b)] for b in blocks if id(b) in names)

    def read(h):
        with torch.inference_mode():
            return head(norm(h.to(next(head.parameters()).dtype))).float()

    mask = probes[:, 1] if isinstance(probes, torch.Tensor) and probes.ndim == 3 and probes.shape[1] == 2 else None
    return Lens(layers, read, mask)


def localise(reference, variant, probes, *, captured=None, lens: Lens | None = None) -> Divergence:
    """Per-layer comparison of ``variant`` with ``reference`` on ``probes`` (see module doc);
    ``captured`` replaces the variant's eager capture with an artifact's; ``lens`` ranks a
    language model's blocks by next-token KL (see :class:`Lens`)."""
    n = batch_len(probes)
    try:
        b_acts, _, b_final, b_multi = _capture(reference, probes)
        v_acts, v_order, v_final = (captured if captured is not None else _capture(variant, probes))[:3]
    except Exception as e:  # noqa: BLE001 - localisation explains a failure; it never adds one
        return Divergence(n, note=f"could not run the layer comparison: {type(e).__name__}: {e}")
    names = _strip(v_order, set(b_acts))
    if captured is not None:  # a graph's last node for a module with several outputs is not its first one
        names = {v: b for v, b in names.items() if b not in b_multi}
    final = _stats(v_final.float(), b_final.float()) if v_final is not None and b_final is not None else None
    final_rel = final["rel"] if final else 0.0
    rows, skipped = [], 0
    for vn in v_order:
        bn = names.get(vn)
        if bn is None:
            continue
        st = _stats(v_acts[vn].float(), b_acts[bn].float())
        if st is None:
            skipped += 1  # the recipe changed this layer's shape (structured pruning, a student)
            continue
        row = Layer(bn, **st, share=st["rel"] / final_rel if final_rel > 0 else 0.0)
        if lens is not None and bn in lens.layers:
            try:
                row.kl = _kl(lens.head(b_acts[bn].float()), lens.head(v_acts[vn].float()), lens.mask)
            except Exception:  # noqa: BLE001 - a block the lens cannot read keeps its relative error
                row.kl = None
        rows.append(row)
    limit = max(MIN_REL, 0.1 * final_rel)
    first = next((r.module for r in rows if r.rel > limit), None)
    measure, final_kl, block = "relative error", None, None
    if lens is not None and any(r.kl is not None for r in rows) and v_final is not None and b_final is not None:
        final_kl = _kl(b_final.float(), v_final.float(), lens.mask)
        if final_kl is not None:
            measure, kl_limit = "next-token KL", max(MIN_KL, 0.1 * final_kl)
            block = next((r.module for r in rows if r.kl is not None and r.kl > kl_limit), None)
            # inside that block, its first part beyond the relative-error limit (the damaged layer)
            inner = block and next((r.module for r in rows if r.module.startswith(block + ".") and r.rel > limit), None)
            first, limit = inner or block, kl_limit
    note = ""
    if not rows:
        note = (
            "no module of the variant matches the baseline's by name and shape (an exported graph, a "
            "student or a restructured model): no layer table"
        )
    elif skipped:
        note = f"{skipped} modules changed shape and are not compared"
    return Divergence(
        n,
        rows=rows,
        first=first,
        limit=limit,
        final=final,
        note=note,
        measure=measure,
        final_kl=final_kl,
        block=block,
    )
