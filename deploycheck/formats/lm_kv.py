"""A causal LM's KV-cache step, saved next to its ``export`` or ``onnx`` artifact.

The one-tensor artifact (ids and mask stacked, logits out) serves the held-out texts; generation
runs through a second program that carries a static KV cache as explicit tensors:

    step(input_ids (1, s), cache_position (s,), past_keys (L, 1, H, M, D), past_values (L, 1, H, M, D))
      -> (logits (1, s, vocab) float32, present_keys, present_values)

``s`` is dynamic (the prompt's length for the prefill, 1 for each decode step); ``M`` is the
static cache length (the declared maximum of the sequence dimension). The cache is updated out
of place (``index_copy`` at ``cache_position``), so ONNX has past key/values inputs and present
key/values outputs, and a decode step can be timed repeatedly from one state. The file is
``<artifact stem>.kv<suffix>`` in the artifact's folder: its name is derived here, never read
from a manifest, and its sha256 is in the artifact's manifest (``kv_cache``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .export import exporter_reason
from .integrity import sha256


def kv_path(artifact: str) -> str:
    """``.../model.onnx`` -> ``.../model.kv.onnx`` (``model.pt2`` -> ``model.kv.pt2``)."""
    stem, suffix = os.path.splitext(artifact)
    return f"{stem}.kv{suffix}"


def find_lm(model: torch.nn.Module):
    """The ``transformers`` causal LM inside a built variant (the ``CausalLM`` wrapper's ``lm``,
    under a ``Cast`` wrapper for fp16/bf16), or None."""
    for m in model.modules():
        inner = getattr(m, "lm", None)
        if isinstance(inner, torch.nn.Module) and hasattr(inner, "config") and hasattr(inner, "get_input_embeddings"):
            return inner
    return None


class _OutOfPlaceStaticCache:
    """The cache object handed to a ``transformers`` decoder: each layer's ``update`` writes the new
    keys and values at ``cache_position`` into a copy of its static tensors and returns them whole
    (the attention mask hides the positions not yet written)."""

    def __init__(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], position: torch.Tensor):
        self.keys, self.values, self.position = list(keys), list(values), position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = self.keys[layer_idx].index_copy(2, self.position, key_states.to(self.keys[layer_idx].dtype))
        v = self.values[layer_idx].index_copy(2, self.position, value_states.to(self.values[layer_idx].dtype))
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v


class KVStep(torch.nn.Module):
    """Prefill or decode one chunk of tokens through a static KV cache (module docstring)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, cache_position, past_keys, past_values):
        s, m = input_ids.shape[1], past_keys.shape[3]
        dtype = past_keys.dtype
        # token i (at cache_position[i]) sees the cache slots up to its own position
        allowed = torch.arange(m, device=input_ids.device)[None, :] <= cache_position[:, None]
        mask = torch.zeros((s, m), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
        cache = _OutOfPlaceStaticCache(past_keys.unbind(0), past_values.unbind(0), cache_position)
        out = self.lm(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=cache_position[None],
            cache=cache,
            use_cache=True,
        )
        return out.logits.float(), torch.stack(cache.keys), torch.stack(cache.values)


def cache_layout(lm, max_len: int) -> dict:
    """What a loader needs to make an empty cache: shape and dtype (plain numbers and a name)."""
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    dtype = str(lm.get_input_embeddings().weight.dtype).replace("torch.", "")
    return {"shape": [int(cfg.num_hidden_layers), 1, heads, int(max_len), head_dim], "dtype": dtype}


def max_cache_len(inputs, lm) -> int:
    """The declared maximum of the sequence dimension (model.inputs), else the model's own limit."""
    for d in inputs.first.dynamic_dims if inputs is not None else ():
        if d.dim == len(inputs.first.shape) - 1 and d.max:
            return int(d.max)
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return int(getattr(cfg, "max_position_embeddings", 0) or 512)


def empty_cache(layout: dict):
    try:
        shape = [int(x) for x in layout["shape"]]
    except (KeyError, TypeError, ValueError):
        shape = []
    dtype = getattr(torch, str(layout.get("dtype")), None)
    if not isinstance(dtype, torch.dtype) or len(shape) != 5 or not all(0 < x <= 1 << 20 for x in shape):
        raise ValueError(f"the manifest's kv_cache layout {layout!r} is not a cache shape and dtype")
    return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)


def example_args(layout: dict, seq: int = 4):
    k, v = empty_cache(layout)
    return (torch.zeros((1, seq), dtype=torch.int64), torch.arange(seq, dtype=torch.int64), k, v)


def save_step(
    model, artifact: str, *, fmt: str, inputs, dynamic_seq: bool, opset: int = 18, max_len: int | None = None
) -> dict:
    """Export the KV-cache step of ``model`` next to ``artifact``; the manifest's ``kv_cache``
    entry (file, sha256, layout), or ``{"error": reason}`` when it cannot be exported (the
    generation check then fails with that reason: a generation path that was never built is
    never reported as checked)."""
    import contextlib
    import io
    import warnings

    lm = find_lm(model)
    if lm is None:
        return {"error": "no transformers causal LM inside the built variant"}
    layout = cache_layout(lm, max_len or max_cache_len(inputs, lm))
    step = KVStep(lm).eval()
    args = example_args(layout)
    seq = torch.export.Dim("seq", min=1, max=layout["shape"][3]) if dynamic_seq else None
    dyn = ({1: seq} if seq else None, {0: seq} if seq else None, None, None)
    path = kv_path(artifact)
    tmp = os.path.join(os.path.dirname(path), "partial-" + os.path.basename(path))  # keeps the suffix
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            ep = _traced(model, step, args, dyn, layout, dynamic_seq)
            if fmt == "export":
                torch.export.save(ep, tmp)
            else:
                with contextlib.redirect_stdout(io.StringIO()):
                    prog = torch.onnx.export(
                        ep,  # the traced program: a spec with both formats traces once
                        args,
                        dynamo=True,
                        dynamic_shapes=dyn,
                        opset_version=opset,
                        external_data=False,
                        # onnxscript's optimizer pass took 6 of this export's 12 s (measured on
                        # the example); onnxruntime applies its own graph optimizations at load
                        optimize=False,
                        input_names=["input_ids", "cache_position", "past_keys", "past_values"],
                        output_names=["logits", "present_keys", "present_values"],
                    )
                if prog is None:
                    raise RuntimeError("torch.onnx.export returned no program")
                prog.save(tmp)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - the reason goes to the generation check
        if os.path.exists(tmp):
            os.unlink(tmp)
        return {"error": f"the KV-cache step did not export as {fmt}: {exporter_reason(e)}"}
    return {
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "size": os.path.getsize(path),
        "dynamic_seq": dynamic_seq,
        **layout,
    }


Step = Callable[[Any, Any, Any, Any], tuple[Any, Any, Any]]

#: built variant -> {(layout, dynamic_seq): its traced KV step}; the export and onnx formats of
#: one variant are saved in one process from the same model object, so the trace is shared
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(model, step, args, dyn, layout: dict, dynamic_seq: bool):
    key = (repr(layout), dynamic_seq)
    memo = _TRACED.setdefault(model, {})
    if key not in memo:
        memo[key] = torch.export.export(step, args, dynamic_shapes=dyn, strict=False)
    return memo[key]


def load_step(artifact: str, *, fmt: str, info: dict) -> Step:
    """The KV-cache step saved next to ``artifact``, its sha256 checked against the manifest's."""
    path = kv_path(artifact)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no KV-cache step {os.path.basename(path)} next to the artifact")
    got = sha256(path)
    if got != info.get("sha256"):
        raise ValueError(
            f"the KV-cache step {os.path.basename(path)} has sha256 {got[:12]}…, its manifest says "
            f"{str(info.get('sha256'))[:12]}…: a changed or corrupted file"
        )
    if fmt == "export":
        mod = torch.export.load(path).module()
        return lambda ids, pos, k, v: tuple(mod(ids, pos, k, v))
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the unoptimized graph's CastLike notes are not findings
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(ids, pos, k, v):
        feed = dict(zip(names, (ids.numpy(), pos.numpy(), k.numpy(), v.numpy()), strict=True))
        return tuple(torch.from_numpy(x) for x in sess.run(None, feed))

    return run


def cached_steps(step: Step, layout: dict):
    """``(prefill, decode)`` for :func:`deploycheck.lm.greedy` through the KV-cache step; the state
    is (keys, values, next position). Each call is a function of its inputs (the cache is updated
    out of place), so one state can be decoded from again and again (timing)."""
    max_len = int(layout["shape"][3])

    def prefill(ids: Sequence[int]):
        if len(ids) >= max_len:
            raise ValueError(f"a prompt of {len(ids)} tokens does not fit the KV cache of {max_len} positions")
        k, v = empty_cache(layout)
        x = torch.tensor([list(ids)], dtype=torch.int64)
        logits, k, v = step(x, torch.arange(len(ids), dtype=torch.int64), k, v)
        _check_logits(logits, len(ids))
        return logits[0, -1].float(), (k, v, len(ids))

    def decode(tok: int, state):
        k, v, n = state
        if n >= max_len:
            raise ValueError(f"the KV cache of {max_len} positions is full")
        logits, k, v = step(torch.tensor([[tok]], dtype=torch.int64), torch.tensor([n], dtype=torch.int64), k, v)
        _check_logits(logits, 1)
        return logits[0, -1].float(), (k, v, n + 1)

    return prefill, decode


def _check_logits(logits, n: int) -> None:
    if logits.ndim != 3 or logits.shape[:2] != (1, n):
        raise ValueError(
            f"the KV-cache step returns (1, tokens, vocab) logits; for {n} tokens it returned shape {tuple(logits.shape)}"
        )
