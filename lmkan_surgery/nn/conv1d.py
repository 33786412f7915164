"""LMKANConv1d: an lmKAN replacement for nn.Conv1d, computed exactly by an inner LMKANConv2d on a 1 x L view.

The module keeps nn.Conv1d's public attributes (kernel_size=(k,), stride=(s,), padding, dilation, in/out channels,
groups) so that code reading them (e.g. an encoder computing its expected input length from conv.stride[0]) keeps
working; the table and the input normalisation live in the inner `lookup` layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from .conv import LMKANConv2d
from .metadata import MetadataTensor


def _single(value):
    """A 1-D conv argument as a 1-tuple (strings such as 'same' stay as they are)."""
    if isinstance(value, str):
        return value
    return (value[-1],) if isinstance(value, (tuple, list)) else (value,)


class LMKANConv1d(nn.Module):
    """(N, C, L) or (C, L) -> like nn.Conv1d; the inner LMKANConv2d sees (N, C, 1, L) and a 1 x k kernel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", num_grids: int = 8,
                 input_norm: str = "none", preconditioning: str | None = None, init_scale: float = 0.1,
                 device=None, dtype=None, table_dtype: str | torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _single(kernel_size), _single(stride), _single(dilation)
        self.padding, self.padding_mode = _single(padding), padding_mode
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        self.lookup = LMKANConv2d(in_channels, out_channels, (1, self.kernel_size[0]), (1, self.stride[0]), pad,
                                  (1, self.dilation[0]), groups, bias, padding_mode, num_grids, input_norm,
                                  preconditioning, init_scale, device, dtype, table_dtype)

    @property
    def num_grids(self) -> int:
        return self.lookup.num_grids

    @property
    def input_norm(self) -> str:
        return self.lookup.input_norm

    @property
    def table_dtype(self) -> str | None:
        return self.lookup.table_dtype

    @property
    def bias(self) -> nn.Parameter | None:
        return self.lookup.bias

    @property
    def weight(self) -> torch.Tensor:
        """Metadata of the source Conv1d weight [out, in/groups, k] (see LMKANLayer.weight)."""
        return MetadataTensor((self.out_channels, self.in_channels // self.groups, self.kernel_size[0]),
                              self.lookup.table.dtype, self.lookup.table.device, f"LMKANConv1d({self.extra_repr()})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"LMKANConv1d expects (N, C, L) or (C, L) input, got {shape}")
        batched = x.dim() == 3
        y = self.lookup((x if batched else x.unsqueeze(0)).unsqueeze(2)).squeeze(2)
        return y if batched else y.squeeze(0)

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, num_grids: int = 8, input_mean: torch.Tensor | None = None,
                    input_std: torch.Tensor | None = None,
                    table_dtype: str | torch.dtype | None = None) -> "LMKANConv1d":
        """An LMKANConv1d computing exactly conv(x) (the inner layer built from the 1 x k Conv2d view), its table
        stored as table_dtype."""
        if not isinstance(conv, nn.Conv1d):
            raise ConfigError(f"from_conv1d expects nn.Conv1d, got {type(conv).__name__}")
        pad = conv.padding if isinstance(conv.padding, str) else (0, conv.padding[0])
        view = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]), (1, conv.stride[0]), pad,
                         (1, conv.dilation[0]), conv.groups, conv.bias is not None, conv.padding_mode,
                         device="meta", dtype=conv.weight.dtype)
        view.weight = nn.Parameter(conv.weight.detach().unsqueeze(2))
        if conv.bias is not None:
            view.bias = nn.Parameter(conv.bias.detach())
        with torch.device("meta"):
            layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, True, conv.padding_mode, num_grids, dtype=conv.weight.dtype)
        layer.lookup = LMKANConv2d.from_conv(view, num_grids, input_mean, input_std, table_dtype)
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, num_grids={self.num_grids}")
