"""What every state-dict format shares: refusing packed or quantized parameters, fp16/bf16 casts,
rebuilding the module from the spec's factory on load, as a training-code host would.
Subclasses (:mod:`.safetensors`, :mod:`.hdf5`) only read and write tensors."""

from __future__ import annotations

from ..loading import call_factory
from . import Format, NoOptions, SaveContext, Unsupported


class StateDictFormat(Format):
    Options = NoOptions

    def needs_code(self, options) -> bool:
        return True

    def write_tensors(self, tensors: dict, path: str) -> None:
        raise NotImplementedError

    def read_tensors(self, path: str) -> dict:
        raise NotImplementedError

    def save(self, model, path, ctx: SaveContext):
        arch = ctx.arch or {}
        import torch

        from ..nn import Cast

        cast = None
        if isinstance(model, Cast):  # fp16 / bf16 recipe: store the inner module's weights
            cast, model = str(model.dtype).removeprefix("torch."), model.inner
        state = model.state_dict()
        bad = [
            k
            for k, v in state.items()
            if not isinstance(v, torch.Tensor) or type(v) not in (torch.Tensor, torch.nn.Parameter) or v.is_quantized
        ]
        if bad:
            raise Unsupported(
                f"state dict holds {len(bad)} entries that are not plain tensors "
                f"(e.g. {bad[0]!r}: {type(state[bad[0]]).__name__}, packed or quantized parameters), "
                f"which {self.name} cannot store"
            )
        if not arch.get("factory"):
            raise Unsupported("the variant has no factory to rebuild its module from")
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
        # Tied weights share storage; state-dict files refuse shared tensors, so store copies.
        self.write_tensors({k: v.detach().contiguous().clone() for k, v in state.items()}, path)
        return {
            "factory": arch["factory"],
            "kwargs": arch["kwargs"],
            "cast": cast,
            "float_dtype": dtypes[0] if len(dtypes) == 1 else None,
        }

    def load(self, path, *, options, manifest):
        import torch

        if not manifest.get("factory"):  # only the spec names it (see integrity.vet_manifest)
            raise Unsupported(
                f"a {self.name} state dict is rebuilt by the model's factory, and no spec named one "
                "(a manifest never chooses the code to run)"
            )
        model = call_factory(manifest["factory"], manifest.get("kwargs") or {})
        state = self.read_tensors(path)
        if manifest.get("float_dtype"):
            model = model.to(getattr(torch, manifest["float_dtype"]))
        model.load_state_dict(state, strict=True)
        if manifest.get("cast"):
            from ..nn import Cast

            model = Cast(model, getattr(torch, manifest["cast"]))
        return model.eval()
