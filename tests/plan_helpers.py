"""Shared by the planner tests: calibration batches, the planner with a short candidate list, MACs by hand."""

from __future__ import annotations

import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.planning.planner import plan as plan_model


def batches(n: int = 4, rows: int = 96, d_in: int = 8, seed: int = 1) -> list[torch.Tensor]:
    """n seeded standard-normal calibration batches [rows, d_in]."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d_in, generator=gen) for _ in range(n)]


def plan(model, data, budget, **kwargs):
    """The planner with a short candidate list (test speed)."""
    return plan_model(model, data, budget, fractions=(0.5, 0.25, 0.125), grids=(4,), **kwargs)


def hand_macs(model: nn.Module) -> int:
    """Per-sample MACs counted from the layers: in x out for Linear, 2 x even(in) x out for lmKAN, 0 otherwise."""
    total = 0
    for m in model.modules():
        if isinstance(m, LMKANLinear):
            total += 2 * (m.in_features + m.in_features % 2) * m.out_features
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total
