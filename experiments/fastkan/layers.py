"""Baseline KAN layers for the paper's 4.4 comparison, written from their descriptions (not product code).

* FastKANLayer (Li, "Kolmogorov-Arnold Networks are Radial Basis Function Networks"): LayerNorm, then Gaussian
  RBFs exp(-((x - c_k) / h)^2) on a uniform grid of centres c_k in [grid_min, grid_max] (h = the grid spacing),
  a linear map of all N_in * num_grids basis values, plus a linear "base" branch on SiLU(x).
* LookupKAN1DLayer (the reviewer's fair control): y_o = sum_i f_oi(u_i) with each f_oi piecewise linear on the
  lmKAN sigma grid (G intervals, linear extrapolation), u = BatchNorm(affine=False)(x); evaluated as a lookup of
  the two neighbouring nodes per input (an embedding bag with the hat-function weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery.grid import grid_nodes, locate


class FastKANLayer(nn.Module):
    """LayerNorm -> Gaussian RBF basis on a uniform grid -> Linear, plus Linear(SiLU(x)); (B, in) -> (B, out)."""

    def __init__(self, in_features: int, out_features: int, num_grids: int = 8, grid_min: float = -2.0,
                 grid_max: float = 2.0, spline_init_scale: float = 0.1) -> None:
        super().__init__()
        self.in_features, self.out_features, self.num_grids = in_features, out_features, num_grids
        self.norm = nn.LayerNorm(in_features)
        self.register_buffer("centres", torch.linspace(grid_min, grid_max, num_grids))
        self.inv_width = (num_grids - 1) / (grid_max - grid_min)
        self.spline = nn.Linear(in_features * num_grids, out_features, bias=False)
        nn.init.trunc_normal_(self.spline.weight, std=spline_init_scale)
        self.base = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        basis = torch.exp(-((self.norm(x).unsqueeze(-1) - self.centres) * self.inv_width).square())
        return self.spline(basis.flatten(-2)) + self.base(F.silu(x))

    def macs_per_sample(self) -> int:
        """Dominant multiply-adds: the basis map plus the base branch, (num_grids + 1) * N_in * N_out."""
        return (self.num_grids + 1) * self.in_features * self.out_features

    def params_per_function(self) -> int:
        """Parameters of one edge function: its num_grids RBF weights and its base weight."""
        return self.num_grids + 1


class LookupKAN1DLayer(nn.Module):
    """BatchNorm(affine=False) -> per-edge piecewise-linear functions on the sigma grid; (B, in) -> (B, out)."""

    def __init__(self, in_features: int, out_features: int, num_grids: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.num_grids = in_features, out_features, num_grids
        self.norm = nn.BatchNorm1d(in_features, affine=False)
        # start as a linear layer: f_oi(u) = w_oi * u sampled at the nodes (exact, the grid extrapolates linearly)
        weight = nn.Linear(in_features, out_features).weight.detach().t()  # [in, out]
        nodes = grid_nodes(num_grids, torch.float32)
        self.table = nn.Parameter((nodes.view(1, -1, 1) * weight.unsqueeze(1)).reshape(-1, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.norm(x)
        cell, t, _ = locate(u, self.num_grids)
        base = cell + torch.arange(self.in_features, device=x.device) * (self.num_grids + 1)
        index = torch.stack([base, base + 1], dim=-1).flatten(1)  # [B, 2 * in] rows of the flat table
        weights = torch.stack([1 - t, t], dim=-1).flatten(1)
        return F.embedding_bag(index, self.table, per_sample_weights=weights, mode="sum") + self.bias

    def macs_per_sample(self) -> int:
        """Two table reads per input and output, 2 * N_in * N_out (as the paper counts 1-D lookup KANs)."""
        return 2 * self.in_features * self.out_features

    def params_per_function(self) -> int:
        """G + 1 node values per edge function."""
        return self.num_grids + 1

