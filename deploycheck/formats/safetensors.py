"""A safetensors state dict; loading rebuilds the module from its factory (see :mod:`.state_dict`)."""

from __future__ import annotations

from .state_dict import StateDictFormat


class SafetensorsFormat(StateDictFormat):
    name = "safetensors"
    suffix = ".safetensors"
    description = "safetensors state dict + factory (the artifact is the weights)"

    def write_tensors(self, tensors, path):
        from safetensors.torch import save_file

        save_file(tensors, path)

    def read_tensors(self, path):
        from safetensors.torch import load_file

        return load_file(path)
