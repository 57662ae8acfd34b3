"""A safetensors state dict; loading rebuilds the module from its factory, as a training-code host would."""

from __future__ import annotations

from . import Format, NoOptions, Unsupported, register


@register
class SafetensorsFormat(Format):
    name = "safetensors"
    suffix = ".safetensors"
    Options = NoOptions
    description = "safetensors state dict + factory (the artifact is the weights)"

    def needs_code(self, options) -> bool:
        return True

    def save(self, model, path, *, example, options, arch):
        import torch
        from safetensors.torch import save_file
        from ..nn import Cast
        cast = None
        if isinstance(model, Cast):  # fp16 / bf16 recipe: store the inner module's weights
            cast, model = str(model.dtype).removeprefix("torch."), model.inner
        state = model.state_dict()
        bad = [k for k, v in state.items()
               if not isinstance(v, torch.Tensor) or type(v) not in (torch.Tensor, torch.nn.Parameter) or v.is_quantized]
        if bad:
            raise Unsupported(f"state dict holds {len(bad)} entries that are not plain tensors "
                              f"(e.g. {bad[0]!r}: {type(state[bad[0]]).__name__}, packed or quantized parameters), which safetensors cannot store")
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
        # Tied weights share storage; safetensors refuses shared tensors, so store copies.
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, path)
        return {"factory": arch["factory"], "kwargs": arch["kwargs"], "cast": cast,
                "float_dtype": dtypes[0] if len(dtypes) == 1 else None}

    def load(self, path, *, options, manifest):
        import torch
        from safetensors.torch import load_file
        from ..models import call_factory
        model = call_factory(manifest["factory"], manifest["kwargs"])
        state = load_file(path)
        if manifest.get("float_dtype"):
            model = model.to(getattr(torch, manifest["float_dtype"]))
        model.load_state_dict(state, strict=True)
        if manifest.get("cast"):
            from ..nn import Cast
            model = Cast(model, getattr(torch, manifest["cast"]))
        return model.eval()
