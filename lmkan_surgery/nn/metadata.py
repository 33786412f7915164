"""What a converted layer serves as its old `weight`: a storage-less tensor with the source weight's shape, dtype
and device. Metadata reads (x.dtype, x.device, x.shape, x.size()...) work, so code written for the source layer
keeps running; any use as data raises, naming the layer (the lmKAN function lives in `table`)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConversionError

METADATA_ATTRS = frozenset({"dtype", "device", "shape", "ndim", "layout", "requires_grad", "is_cuda", "is_meta",
                            "is_sparse", "is_quantized", "is_nested", "is_cpu", "names", "grad_fn", "is_leaf", "grad"})
METADATA_METHODS = frozenset({"size", "dim", "numel", "element_size", "is_floating_point", "is_complex",
                              "is_contiguous", "get_device", "nelement", "ndimension", "__len__", "type",
                              "__repr__", "__format__"})


def is_metadata_func(func: Any) -> bool:
    """Whether a __torch_function__ `func` only reads tensor metadata (a property getter or a shape method)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "") in METADATA_ATTRS
    return name in METADATA_METHODS


class MetadataTensor(torch.Tensor):
    """Shape, dtype and device without data; `owner` names the layer in the error a data read raises."""

    owner: str = "an lmKAN layer"

    @staticmethod
    def __new__(cls, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, owner: str):
        tensor = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)
        tensor.owner = owner
        return tensor

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"MetadataTensor(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if is_metadata_func(func):
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        owner = next((a.owner for a in args if isinstance(a, MetadataTensor)), cls.owner)
        raise ConversionError(
            f"the weight of {owner} was used as data ({getattr(func, '__name__', func)}), but after conversion it "
            f"only serves metadata (dtype, device, shape); the lmKAN function lives in `table`. Exclude the layer "
            f"(LMKANConfig.exclude) or run lmkanify with example_inputs so the read is detected and the layer kept")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise ConversionError(f"the weight of a converted lmKAN layer was used as data ({func}); it only serves "
                              f"metadata (dtype, device, shape)")
