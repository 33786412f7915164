"""Rules of the dense layers: nn.Linear and transformers' Conv1D (a Linear whose weight is stored [in, out])."""

from __future__ import annotations


import torch
from torch import nn

from lmkan_surgery.nn import LMKANLinear

from .base import LayerRule, narrowed_copy


class LinearRule(LayerRule):
    """nn.Linear -> LMKANLinear, (*, in) -> (*, out)."""

    name = "linear"
    source = (nn.Linear,)
    lmkan = (LMKANLinear,)
    narrowable = True
    linear_like = True

    def features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def to_lmkan(self, module, num_grids, mean, std, table_dtype=None) -> nn.Module:
        return LMKANLinear.from_linear(module, num_grids, mean, std, table_dtype=table_dtype)

    def narrow(self, module, out_idx, in_idx) -> nn.Module:
        new = narrowed_copy(module, out_idx, in_idx)
        new.out_features, new.in_features = new.weight.shape
        return new

    def design_rows(self, module, x) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])


def _is_transformers_conv1d(cls: type) -> bool:
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers.") for c in cls.__mro__)


class TransformersConv1DRule(LayerRule):
    """transformers.pytorch_utils.Conv1D (GPT-2 family): y = x @ W + b with W [in, out] -> LMKANLinear.

    Matched by class name and module, so transformers is never imported here.
    """

    name = "transformers-conv1d"
    linear_like = True

    def matches(self, module: nn.Module) -> bool:
        return _is_transformers_conv1d(type(module))

    def stock_name(self, module: nn.Module) -> str:
        return "Conv1D"

    def plain(self, module: nn.Module) -> bool:
        stock = [c for c in type(module).__mro__ if c.__name__ == "Conv1D" and c.__module__.startswith("transformers.")]
        return bool(stock) and type(module).forward is stock[-1].forward

    def features(self, module: nn.Module) -> tuple[int, int]:
        return module.weight.shape[0], module.weight.shape[1]

    def to_lmkan(self, module, num_grids, mean, std, table_dtype=None) -> nn.Module:
        n_in, n_out = self.features(module)
        view = nn.Linear(n_in, n_out, bias=module.bias is not None, device="meta", dtype=module.weight.dtype)
        view.weight = nn.Parameter(module.weight.detach().t())
        if module.bias is not None:
            view.bias = nn.Parameter(module.bias.detach())
        return LMKANLinear.from_linear(view, num_grids, mean, std, table_dtype=table_dtype)
