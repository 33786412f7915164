"""LMKANLinear: a drop-in lmKAN replacement for nn.Linear, with exact init from a Linear and the official layout."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ShapeError
from ..ops.lookup import lookup_inference
from .base import LMKANLayer
from .placement import with_tails
from .table_storage import resolve_table_dtype
from .tables import exact_linear_table, knot_linear_table, random_table, table_shape


class LMKANLinear(LMKANLayer):
    """y = sum_p f_{o,p}(u[2p], u[2p+1]) + bias with u the (optionally normalised) input; (*, in) -> (*, out).

    An odd in_features gets a constant-zero partner for its last feature. ``preconditioning`` adds the paper's
    linear branch, y = gamma * lmKAN(u) + branch(u), with gamma (a buffer, 0 at init) ramped up by the training
    schedule: "relu_first" Linear(ReLU(u)), "relu_last" ReLU(Linear(u)), "linear" Linear(u) (the paper's
    ReLU-first first layer and ReLU-last last layer). ``fold()`` merges "linear" and, for even G, "relu_first"
    exactly into the table; "relu_last" cannot be folded and keeps costing one Linear at inference.
    """

    def __init__(self, in_features: int, out_features: int, num_grids: int = 8, bias: bool = True,
                 input_norm: str = "none", preconditioning: str | None = None, init_scale: float = 0.1,
                 device=None, dtype=None, table_dtype: str | torch.dtype | None = None) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__(num_grids, input_norm, in_features, nn.BatchNorm1d, factory)
        if in_features < 1 or out_features < 1:
            raise ShapeError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        shape = table_shape(in_features, out_features, self.num_grids)
        self._set_table(random_table(shape, in_features, init_scale, device=device,
                                     dtype=resolve_table_dtype(table_dtype, dtype)))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None
        branch = nn.Linear(in_features, out_features, bias=True, **factory) if preconditioning else None
        self._init_preconditioning(preconditioning, branch, factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_floating(x, "LMKANLinear")
        dims = x.dim()  # read once: each tensor property read costs 0.2-0.5 us at batch 1
        if dims < 1 or x.size(-1) != self.in_features:
            raise ShapeError(
                f"LMKANLinear expects input of shape (*, {self.in_features}), got {tuple(x.shape)}"
            )
        input_map = self._input_map() if self.branch is None and self.in_features % 2 == 0 else None
        if input_map is not None:
            rows = x if dims == 2 else x.reshape(-1, self.in_features)
            table, bias = self._table_and_bias()
            y = lookup_inference(rows, table, input_map, bias)
            if y is not None:  # inference: the whole layer in one native call
                return y if dims == 2 else y.view(x.shape[:-1] + (self.out_features,))
        u = self._normalize(x, x.dim() - 1)
        y = self._lookup(u, self.table)
        if self.branch is not None:
            y = self._add_branch(y, u)
        return (y + self.bias if self.bias is not None else y).to(x.dtype)  # nn.Linear: the input dtype

    def _branch_matrix(self) -> torch.Tensor:
        return self.branch.weight

    @classmethod
    def from_linear(cls, linear: nn.Linear, num_grids: int = 8, input_mean: torch.Tensor | None = None,
                    input_std: torch.Tensor | None = None,
                    input_knots: torch.Tensor | None = None,
                    table_dtype: str | torch.dtype | None = None) -> "LMKANLinear":
        """An LMKANLinear computing exactly linear(x) for every x (inputs normalised by the given statistics), or,
        with input_knots [in, G+1] from placement.quantile_knots, exactly linear(x) inside the calibrated range
        plus one edge cell and saturating beyond it (input_norm='quantile'); tables stored as `table_dtype`."""
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"from_linear expects nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if input_knots is not None:
            return cls._from_knots(linear, num_grids, input_knots, table_dtype)
        mean, std = cls._exact_statistics(linear.in_features, input_mean, input_std, weight.device,
                                          resolve_table_dtype(table_dtype, weight.dtype))
        layer = cls(linear.in_features, linear.out_features, num_grids, bias=True,
                    input_norm="affine", device="meta", dtype=weight.dtype,
                    table_dtype=table_dtype)
        bias = weight.to(torch.float64) @ mean
        if linear.bias is not None:
            bias = bias + linear.bias.detach().to(torch.float64)
        table = exact_linear_table(weight, num_grids, std, layer.table.dtype)
        layer._install_exact(table, bias, mean, std)
        return layer

    @classmethod
    def _from_knots(cls, linear: nn.Linear, num_grids: int, knots: torch.Tensor,
                    table_dtype: str | torch.dtype | None = None) -> "LMKANLinear":
        if tuple(knots.shape) != (linear.in_features, num_grids + 1):
            raise ShapeError(f"input_knots must be [{linear.in_features}, {num_grids + 1}] (in_features, G+1), got "
                             f"{tuple(knots.shape)}")
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, num_grids, bias=True, input_norm="quantile",
                    device="meta", dtype=weight.dtype, table_dtype=table_dtype)
        layer.to_empty(device=weight.device)
        layer.input_knots.copy_(with_tails(knots.detach().to(torch.float64)))
        layer._set_table(knot_linear_table(weight, knots, layer.table.dtype))
        bias = linear.bias.detach() if linear.bias is not None else weight.new_zeros(linear.out_features)
        layer.bias = nn.Parameter(bias.clone())
        return layer

    @classmethod
    def from_official(cls, func_parameter: torch.Tensor) -> "LMKANLinear":
        """Build from schwallergroup/lmkan's LMKAN2DLayer.func_parameter [G+1, G+1, out, in/2] (no bias)."""
        if func_parameter.dim() != 4 or func_parameter.shape[0] != func_parameter.shape[1]:
            raise ShapeError(f"func_parameter must be [G+1, G+1, out, in/2], got {tuple(func_parameter.shape)}")
        n, _, out_features, pairs = func_parameter.shape
        layer = cls(2 * pairs, out_features, n - 1, bias=False, device=func_parameter.device,
                    dtype=func_parameter.dtype)
        with torch.no_grad():
            layer.table.copy_(func_parameter.detach().permute(3, 0, 1, 2))
        return layer

    def official_parameter(self) -> torch.Tensor:
        """The table in the official [G+1, G+1, out, in/2] layout (a copy)."""
        if self.in_features % 2 or self.input_norm != "none" or self.branch is not None:
            raise ConfigError("only an even-width layer without normalisation or preconditioning branch has an "
                              "official form")
        return self.table.detach().permute(1, 2, 3, 0).contiguous()

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}",
                 f"num_grids={self.num_grids}", f"bias={self.bias is not None}"]
        if self.input_norm != "none":
            parts.append(f"input_norm={self.input_norm}")
        if self.preconditioning:
            parts.append(f"preconditioning={self.preconditioning}")
        return ", ".join(parts)
