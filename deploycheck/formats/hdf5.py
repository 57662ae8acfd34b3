"""An HDF5 state dict (h5py, the optional extra ``deploycheck[h5]``); loading rebuilds from the factory."""

from __future__ import annotations

from . import Unsupported
from .state_dict import StateDictFormat


class Hdf5Format(StateDictFormat):
    name = "hdf5"
    suffix = ".h5"
    description = "HDF5 state dict + factory (needs h5py: pip install 'deploycheck[h5]')"

    def write_tensors(self, tensors, path):
        try:
            import h5py
        except ImportError as e:
            raise Unsupported("h5py is not installed: pip install 'deploycheck[h5]'", lasting=False) from e
        import torch

        with h5py.File(path, "w") as f:
            for k, v in tensors.items():
                if v.dtype == torch.bfloat16:
                    raise Unsupported(f"HDF5 (numpy) has no bfloat16 type (tensor {k!r})")
                d = f.create_dataset(k, data=v.cpu().numpy())
                d.attrs["dtype"] = str(v.dtype).removeprefix("torch.")

    def read_tensors(self, path):
        import h5py
        import torch

        out = {}
        with h5py.File(path, "r") as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    out[name] = torch.from_numpy(obj[()]).to(getattr(torch, obj.attrs.get("dtype", "float32")))

            f.visititems(visit)
        return out
