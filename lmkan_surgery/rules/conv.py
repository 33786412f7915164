"""Rules of the convolutions: nn.Conv2d -> LMKANConv2d and nn.Conv1d -> LMKANConv1d (channels on dim 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery.nn import LMKANConv1d, LMKANConv2d

from .base import LayerRule, narrowed_copy


class _ConvRule(LayerRule):
    """What Conv1d and Conv2d share: channels on dim 1, patches of in_channels/groups * prod(kernel)."""

    channel_dim = 1

    def features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_channels, module.out_channels

    def geometry(self, module: nn.Module) -> tuple[int, int, int]:
        g = module.groups
        return module.in_channels // g * math.prod(module.kernel_size), module.out_channels // g, g

    def positions(self, in_shape, out_shape, batch) -> int:
        return math.prod(out_shape[2:]) if len(out_shape) > 2 else math.prod(out_shape[1:])

    def feature_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).reshape(x.shape[1], -1).t()


class Conv2dRule(_ConvRule):
    """nn.Conv2d (any stride, padding, dilation, groups, padding mode) -> LMKANConv2d."""

    name = "conv2d"
    source = (nn.Conv2d,)
    lmkan = (LMKANConv2d,)
    narrowable = True

    def to_lmkan(self, module, num_grids, mean, std, table_dtype=None) -> nn.Module:
        return LMKANConv2d.from_conv(module, num_grids, mean, std, table_dtype)

    def narrow(self, module, out_idx, in_idx) -> nn.Module:
        if module.groups != 1:
            raise ValueError(f"only groups=1 convolutions are narrowed, got groups={module.groups}")
        new = narrowed_copy(module, out_idx, in_idx)
        new.out_channels, new.in_channels = new.weight.shape[:2]
        return new

    def design_rows(self, module, x) -> torch.Tensor:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        x = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return x.transpose(1, 2).reshape(-1, x.shape[1])

    def output_rows(self, y: torch.Tensor) -> torch.Tensor:
        return y.movedim(1, -1).reshape(-1, y.shape[1])


class Conv1dRule(_ConvRule):
    """nn.Conv1d -> LMKANConv1d (exact, through the 1 x k view of LMKANConv2d)."""

    name = "conv1d"
    source = (nn.Conv1d,)
    lmkan = (LMKANConv1d,)

    def to_lmkan(self, module, num_grids, mean, std, table_dtype=None) -> nn.Module:
        return LMKANConv1d.from_conv1d(module, num_grids, mean, std, table_dtype)
