"""Model loading: import a factory or any "module:attr" callable from the spec's python_path,
instantiate it, load its weights, put it in eval mode; count its parameters and bytes."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .errors import StageError
from .registry import did_you_mean


def search_dirs(spec) -> list[str]:
    base = os.path.dirname(os.path.abspath(spec.path))
    return [os.path.normpath(os.path.join(base, p)) for p in spec.model.python_path]


def use_search_path(search: Iterable[str]) -> None:
    """Put the spec's python_path first on sys.path (as pytest's rootdir insertion does): the
    factory's module, and unpickling a cached model of the user's classes, need it."""
    for d in reversed(list(search)):
        if d not in sys.path:
            sys.path.insert(0, d)


class UnresolvedName(ImportError):
    """An import path ('module:attr') that does not resolve: says which folders were searched, and
    the closest name that exists."""


def import_callable(path: str, search: Iterable[str] = ()) -> Callable[..., Any]:
    """Import ``module:attr`` from the spec's python_path (see :func:`use_search_path`)."""
    search = list(search)
    use_search_path(search)
    mod_name, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        missing = e.name or mod_name
        if mod_name != missing and not mod_name.startswith(missing + "."):
            raise  # the module exists but imports something missing: its own error says what
        raise UnresolvedName(
            f"cannot import {path!r}: No module named {missing!r}; "
            f"{did_you_mean(missing, _modules_near(missing, search))}searched python_path "
            f"{', '.join(search) if search else '(none)'}, then sys.path (installed packages)"
        ) from None
    obj: Any = mod
    done = mod_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            raise UnresolvedName(
                f"cannot import {path!r}: {done} ({getattr(obj, '__file__', None) or type(obj).__name__}) "
                f"has no attribute {part!r}; {did_you_mean(part, names)}".rstrip("; ").rstrip()
            )
        obj = getattr(obj, part)
        done = f"{done}:{part}" if done == mod_name else f"{done}.{part}"
    if not callable(obj):
        raise TypeError(f"{path} is a {type(obj).__name__}, not a callable")
    return obj


def _modules_near(name: str, search: list[str]) -> list[str]:
    """Module names that exist where ``name`` was looked for: its package's folder, or the python_path
    folders (for a did-you-mean)."""
    parent, _, _ = name.rpartition(".")
    if parent:
        try:
            pkg = importlib.import_module(parent)
        except Exception:
            return []
        folders = list(getattr(pkg, "__path__", []))
    else:
        folders = search
    out = []
    for d in folders:
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for e in entries:
            stem = e[:-3] if e.endswith(".py") else e if os.path.isfile(os.path.join(d, e, "__init__.py")) else None
            if stem and stem.isidentifier():
                out.append(f"{parent}.{stem}" if parent else stem)
    return out


def call_factory(factory: str, kwargs: dict, search: Iterable[str] = ()) -> Any:
    import torch

    fn = import_callable(factory, search)
    model = fn(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{factory} returned {type(model).__name__}, not a torch.nn.Module")
    return model


_EXC_LINE = r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception): \S"


def essence(text: str, limit: int = 600) -> str:
    """One line of a library's error message that keeps its cause where torch prints it later:
    TorchScript's interpreter says "The following operation failed" first and the error itself
    after its traceback (which names the user's line); torch.export's constraint violations put
    what specialised the dimension and the suggested fix on the lines after the first."""
    import re

    lines = [ln.rstrip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()]
    if not lines:
        return ""
    head = lines[0]
    if "failed in the TorchScript interpreter" in head:
        cause = next((ln.strip() for ln in reversed(lines) if re.match(_EXC_LINE, ln.strip())), "")
        frames = [ln.strip() for ln in lines[1:] if re.search(r"\(\d+\): \w+$", ln.strip())]
        mine = next((f for f in frames if "site-packages" not in f and "/torch/" not in f), "")
        out = head.rstrip(".") + (f": {cause}" if cause else "") + (f" (traced at {mine})" if mine else "")
        return out[:limit]
    if head.startswith("Constraints violated"):
        why = [ln.strip()[2:].split(" If you're using")[0] for ln in lines[1:] if ln.strip().startswith("- ")][:2]
        fixes: list[str] = []
        if "Suggested fixes:" in lines:
            for ln in lines[lines.index("Suggested fixes:") + 1 :]:
                if not ln.strip():
                    break
                fixes.append(ln.strip())
        out = " ".join([head.split(" For more information")[0], *why])
        if fixes:
            out += f" Suggested fixes: {'; '.join(fixes[:3])}"
        return out[:limit]
    return head[:limit]


def describe_exc(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def baseline_arch(spec) -> dict:
    """The factory and kwargs that rebuild the baseline's architecture (state-dict formats load with it)."""
    m = spec.model
    if m.hf is not None:
        from .hf import model_folder

        path = model_folder(m.hf, os.path.dirname(os.path.abspath(spec.path)))
        if m.hf.task == "causal-lm":
            return {"factory": "deploycheck.hf:causal_lm", "kwargs": {"path": path}}
        return {
            "factory": "deploycheck.hf:encoder",
            "kwargs": {"path": path, "pooling": m.hf.pooling, "normalize": m.hf.normalize},
        }
    return {"factory": m.factory, "kwargs": dict(m.kwargs)}


def build_baseline(spec) -> Any:
    """Instantiate the spec's model with its weights; every failure names the spec line."""
    return build_model(
        spec, arch=baseline_arch(spec), weights=spec.model.weights, variant="baseline", where=spec.where("model")
    )


def variant_arch(spec, variant) -> dict:
    """The factory and kwargs of a variant's own model (``model:``), else the baseline's."""
    o = variant.model
    if o is None:
        return baseline_arch(spec)
    factory = o.factory or spec.model.factory
    kwargs = o.kwargs if o.kwargs is not None else (dict(spec.model.kwargs) if factory == spec.model.factory else {})
    return {"factory": factory, "kwargs": dict(kwargs)}


def build_variant_model(spec, variant) -> Any:
    """A ``model:`` variant's starting point: its factory, kwargs and weights (a QAT checkpoint, a student)."""
    return build_model(
        spec,
        arch=variant_arch(spec, variant),
        weights=variant.model.weights,
        variant=variant.name,
        where=spec.at(variant.line),
    )


def build_model(spec, *, arch: dict, weights: str | None, variant: str, where: str) -> Any:
    import torch

    m = spec.model
    torch.manual_seed(0)
    try:
        model = call_factory(arch["factory"], arch["kwargs"], search_dirs(spec))
    except Exception as e:
        what = f"Hugging Face model {m.hf.path!r}" if m.hf and variant == "baseline" else f"factory {arch['factory']!r}"
        raise StageError.at(
            spec, "build", f"cannot create the model from {what}: {describe_exc(e)}", variant=variant, where=where
        ) from e
    if weights:
        path = os.path.join(os.path.dirname(os.path.abspath(spec.path)), weights)
        state = _read_weights(spec, path, variant=variant, where=where)
        _load_state(spec, model, state, path, factory=arch["factory"], variant=variant, where=where)
    return model.eval()


def _read_weights(spec, path: str, *, variant: str, where: str) -> dict:
    import torch

    if not os.path.exists(path):
        raise StageError.at(spec, "build", f"weights file not found: {path}", variant=variant, where=where)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StageError.at(
            spec, "build", f"cannot read weights {path}: {describe_exc(e)}", variant=variant, where=where
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StageError.at(
            spec,
            "build",
            f"weights {path} hold a {type(state).__name__}, not a state dict",
            variant=variant,
            where=where,
        )
    return state


def _load_state(spec, model, state: dict, path: str, *, factory: str, variant: str, where: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}")
        if shapes:
            parts.append(f"shape mismatch ({len(shapes)}): {'; '.join(shapes[:5])}")
        raise StageError.at(
            spec,
            "build",
            f"weights {os.path.basename(path)} do not match the architecture of {factory}: " + " | ".join(parts),
            variant=variant,
            where=where,
        )
    model.load_state_dict(state, strict=True)


def count_params(model) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting quantized packed weights too."""
    import torch

    total = nonzero = 0
    for t in _weight_tensors(model):
        total += t.numel()
        nonzero += int(torch.count_nonzero(t).item())
    return total, nonzero


def _own_state(mod) -> list:
    """A module's own parameters: buffers apart (BatchNorm's running statistics are not parameters),
    except in a graph module (pt2e, torch.export), which holds its weights as buffers."""
    import torch.fx

    tensors = list(mod.parameters(recurse=False))
    if isinstance(mod, torch.fx.GraphModule):
        tensors += list(mod.buffers(recurse=False))
    return tensors


def _packed_rnn(mod) -> list:
    """The weights and biases of a torch.ao dynamic-quantized LSTM/GRU (packed, not parameters)."""
    wb = getattr(mod, "_weight_bias", None)
    if not callable(wb) or not type(mod).__module__.startswith("torch.ao.nn.quantized"):
        return []
    try:
        d = wb()
    except Exception:
        return []
    if not isinstance(d, dict):  # a quantized Linear's (weight, bias): counted through its weight() method
        return []
    return [t for group in ("weight", "bias") for t in (d.get(group) or {}).values()]


def _weight_tensors(model):
    import torch

    seen = set()
    for _, mod in model.named_modules():
        for t in _own_state(mod):
            if id(t) not in seen and t.is_floating_point():
                seen.add(id(t))
                yield _plain(t)
        for t in _packed_rnn(mod):
            yield t.dequantize() if t.is_quantized else t
        w = getattr(mod, "weight", None)
        if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao quantized modules: weight() method
            try:
                wt = w()
            except Exception:
                continue
            if isinstance(wt, torch.Tensor) and id(mod) not in seen:
                seen.add(id(mod))
                yield wt.dequantize() if wt.is_quantized else wt
                b = getattr(mod, "bias", None)
                bt = b() if callable(b) else b
                if isinstance(bt, torch.Tensor):
                    yield bt


def _plain(t):
    """A tensor subclass (torchao quantized weights) as a plain tensor of the same element count."""
    import torch

    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return t.detach()
    try:
        return t.dequantize()
    except Exception:
        return t.detach()


def state_bytes(model) -> int:
    """Bytes of the model's weights at the dtype they are stored in (int8 packed weights count one
    byte per element, plus their scales): the honest size of the state, without file overheads."""
    return sum(n for _, _, n in state_tensors(model))


def state_tensors(model) -> list[tuple[str, str, int]]:
    """Every tensor of the model's state as ``(name, dtype, bytes)``, a tensor shared by several
    modules (tied weights) once: parameters, buffers, torch.ao's packed weights and torchao's
    quantized tensors (named by the dtype of their largest inner tensor, e.g. int8)."""
    import torch

    out, seen = [], set()
    for mname, mod in model.named_modules():
        named = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        named += [(f"<packed {i}>", t) for i, t in enumerate(_packed_rnn(mod))]
        try:
            w = getattr(mod, "weight", None)
        except Exception:  # noqa: BLE001 - a weight property that raises holds nothing to count
            w = None
        if callable(w) and not isinstance(w, torch.Tensor):  # torch.ao packed modules
            try:
                packed = w()
                b = mod.bias() if callable(getattr(mod, "bias", None)) else None
                named += [(n, t) for n, t in (("weight", packed), ("bias", b)) if isinstance(t, torch.Tensor)]
            except Exception:
                pass
        for pname, t in named:
            if id(t) in seen:
                continue
            seen.add(id(t))
            out.append((f"{mname}.{pname}" if mname else pname, _dtype_name(t), _tensor_bytes(t)))
    return out


def describe_state(tensors: list[tuple[str, str, int]], limit: int = 3) -> str:
    """``float32 4.19 MB in 3 tensors (largest embed.weight 4.1 MB); int8 1.05 MB in 24 tensors (…)``,
    largest dtype first."""
    by: dict[str, list[tuple[str, int]]] = {}
    for name, dtype, n in tensors:
        by.setdefault(dtype, []).append((name, n))
    parts = []
    for dtype, items in sorted(by.items(), key=lambda kv: -sum(n for _, n in kv[1]))[:limit]:
        big = max(items, key=lambda x: x[1])
        parts.append(
            f"{dtype} {sum(n for _, n in items) / 1e6:.3g} MB in {len(items)} tensors "
            f"(largest {big[0]} {big[1] / 1e6:.3g} MB)"
        )
    return "; ".join(parts)


def _dtype_name(t) -> str:
    import torch

    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names]
        if inner:
            return _dtype_name(max(inner, key=_tensor_bytes))
    return str(t.dtype).replace("torch.", "")


def _tensor_bytes(t) -> int:
    import torch

    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()  # tensor subclasses (torchao): their inner tensors
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    n = t.numel() * t.element_size()
    if t.is_quantized:
        q = t.qscheme()
        if q in (torch.per_channel_affine, torch.per_channel_symmetric):
            n += t.q_per_channel_scales().numel() * 8 + t.q_per_channel_zero_points().numel() * 8
        else:
            n += 16
    return n
