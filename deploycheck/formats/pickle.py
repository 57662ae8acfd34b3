"""``torch.save`` of a whole module. Refused unless the spec opts in: loading a pickle runs arbitrary code."""

from __future__ import annotations

from dataclasses import dataclass

from ..schema import field
from . import Format, SaveContext


@dataclass(frozen=True)
class PickleOptions:
    """Options of the pickle format."""

    allow: bool = field(False, doc="must be true: loading a pickle executes code from the file")
    with_code: bool = field(
        False,
        doc="the deployment host has the model's code importable "
        "(false: reload in a process without it, as most hosts are)",
    )

    def check(self) -> list[tuple[str, str]]:
        if not self.allow:
            return [
                (
                    "allow",
                    "the pickle format runs arbitrary code when loaded; opt in with "
                    "{pickle: {allow: true}} or ship export / torchscript / onnx / safetensors instead",
                )
            ]
        return []


class PickleFormat(Format):
    name = "pickle"
    suffix = ".pkl.pt"
    Options = PickleOptions
    description = "torch.save of the whole module (opt-in)"
    unpickles = True

    def needs_code(self, options) -> bool:
        return options.with_code

    def save(self, model, path, ctx: SaveContext):
        import torch

        torch.save(model, path)
        return {}

    def load(self, path, *, options, manifest):
        import torch

        return torch.load(path, weights_only=False, map_location="cpu").eval()
