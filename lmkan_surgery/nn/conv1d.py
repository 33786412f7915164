"""LMKANConv1d: an lmKAN replacement for nn.Conv1d, computed exactly as LMKANConv2d on a 1 x L view of the input."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from .conv import LMKANConv2d


def _as_2d(value, fill: int):
    """A 1-D conv argument as the (fill, value) pair of the 1 x L view; a pair is taken as it is (saved specs)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == 2 else (fill, value[0])
    return (fill, value)


class LMKANConv1d(LMKANConv2d):
    """(N, C, L) or (C, L) -> like nn.Conv1d: the input is viewed as (N, C, 1, L) and the kernel as 1 x k."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", num_grids: int = 8,
                 input_norm: str = "none", preconditioning: str | None = None, init_scale: float = 0.1,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, _as_2d(kernel_size, 1), _as_2d(stride, 1), _as_2d(padding, 0),
                         _as_2d(dilation, 1), groups, bias, padding_mode, num_grids, input_norm, preconditioning,
                         init_scale, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"LMKANConv1d expects (N, C, L) or (C, L) input, got {shape}")
        batched = x.dim() == 3
        y = super().forward((x if batched else x.unsqueeze(0)).unsqueeze(2)).squeeze(2)
        return y if batched else y.squeeze(0)

    def _source_weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[1])

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, num_grids: int = 8, input_mean: torch.Tensor | None = None,
                    input_std: torch.Tensor | None = None) -> "LMKANConv1d":
        """An LMKANConv1d computing exactly conv(x) (built through the 1 x k Conv2d view of its weight)."""
        if not isinstance(conv, nn.Conv1d):
            raise ConfigError(f"from_conv1d expects nn.Conv1d, got {type(conv).__name__}")
        view = nn.Conv2d(conv.in_channels, conv.out_channels, _as_2d(conv.kernel_size, 1), _as_2d(conv.stride, 1),
                         _as_2d(conv.padding, 0), _as_2d(conv.dilation, 1), conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta", dtype=conv.weight.dtype)
        view.weight = nn.Parameter(conv.weight.detach().unsqueeze(2))
        if conv.bias is not None:
            view.bias = nn.Parameter(conv.bias.detach())
        return cls.from_conv(view, num_grids, input_mean, input_std)
