"""What every lmKAN layer shares: the table parameter, input normalisation, the lookup and the Hessian penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DTypeError, ShapeError
from ..grid import check_num_grids
from ..ops import lmkan_lookup
from .hessian import hessian_penalty

INPUT_NORMS = ("none", "affine", "batchnorm")


class LMKANLayer(nn.Module):
    """Base of LMKANLinear and LMKANConv2d; `table` holds [*, P, G+1, G+1, N_out] in the canonical layout."""

    table: nn.Parameter

    def __init__(self, num_grids: int, input_norm: str, norm_features: int, batchnorm: type[nn.Module],
                 factory: dict) -> None:
        super().__init__()
        self.num_grids = check_num_grids(num_grids)
        if input_norm not in INPUT_NORMS:
            raise ConfigError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        if input_norm == "affine":
            self.register_buffer("input_scale", torch.ones(norm_features, **factory))
            self.register_buffer("input_shift", torch.zeros(norm_features, **factory))
        elif input_norm == "batchnorm":
            self.norm = batchnorm(norm_features, affine=False, **factory)

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store a fixed affine normalisation u = (x - mean) / std (needs input_norm='affine')."""
        if self.input_norm != "affine":
            raise ConfigError("set_input_statistics needs input_norm='affine'")
        std = std.to(self.input_scale)
        if (std <= 0).any():
            raise ConfigError("input std must be positive")
        self.input_scale.copy_(1.0 / std)
        self.input_shift.copy_(-mean.to(self.input_scale) / std)

    @staticmethod
    def _exact_statistics(features: int, input_mean, input_std, device) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """float64 (mean, std) of the inputs (zeros/ones when not given) and whether any was given."""
        mean = torch.zeros(features, dtype=torch.float64, device=device)
        std = torch.ones_like(mean)
        if input_mean is not None:
            mean = input_mean.detach().to(mean)
        if input_std is not None:
            std = input_std.detach().to(std)
        return mean, std, input_mean is not None or input_std is not None

    def _install_exact(self, table: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                       has_stats: bool) -> None:
        """Materialise a layer built on the meta device with a precomputed table and bias (no random fill)."""
        self.to_empty(device=table.device)
        if has_stats:
            self.set_input_statistics(mean, std)
        self.table = nn.Parameter(table)
        self.bias = nn.Parameter(bias.to(table.dtype))

    def _normalize(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.input_norm == "affine":
            shape = [1] * x.dim()
            shape[channel_dim] = -1
            return x * self.input_scale.view(shape) + self.input_shift.view(shape)
        if self.input_norm == "batchnorm":
            return self.norm(x) if channel_dim == 1 else self.norm(x.reshape(-1, x.shape[-1])).view_as(x)
        return x

    @staticmethod
    def _check_floating(x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"{name} expects a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DTypeError(f"{name} expects a floating-point input, got {x.dtype}")

    @staticmethod
    def _lookup(features: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """lmKAN lookup of features[..., K]; an odd K gets a constant-zero partner feature."""
        if features.shape[-1] % 2:
            features = F.pad(features, (0, 1))
        if features.shape[-1] != 2 * table.shape[-4]:
            raise ShapeError(f"features {features.shape[-1]} do not match the table's {table.shape[-4]} pairs")
        return lmkan_lookup(features, table)

    def hessian_penalty(self) -> torch.Tensor:
        """The paper's Hessian regularizer summed over this layer's 2-D functions."""
        return hessian_penalty(self.table)

    def table_bytes(self) -> int:
        """Bytes held by the lookup table."""
        return self.table.numel() * self.table.element_size()
