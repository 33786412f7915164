"""Independent float64 per-sample implementation of the lmKAN layer, written from the paper's formulas with plain
Python math (no code shared with the package): the oracle of the core tests."""

from __future__ import annotations

import math

import torch


def naive_nodes(num_grids: int) -> list[float]:
    """Ghost + inner + ghost node positions from sigma^-1(k/G)."""
    inner = []
    for k in range(1, num_grids):
        u = k / num_grids
        inner.append(math.log(2 * u) if u <= 0.5 else -math.log(2 * (1 - u)))
    return [2 * inner[0] - inner[1], *inner, 2 * inner[-1] - inner[-2]]


def naive_cell(value: float, nodes: list[float]) -> tuple[int, float]:
    """Cell index and unclamped local coordinate of one scalar."""
    g = len(nodes) - 1
    s = 0.5 * math.exp(value) if value <= 0 else 1 - 0.5 * math.exp(-value)
    i = min(max(int(math.floor(s * g)), 0), g - 1)
    return i, (value - nodes[i]) / (nodes[i + 1] - nodes[i])


def naive_lookup(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """y[b, o] = sum_p bilinear f_{o,p} with the four corner weights, one sample and pair at a time."""
    x64, t64 = x.double().tolist(), table.double()
    pairs, n, _, outputs = table.shape
    nodes = naive_nodes(n - 1)
    out = torch.zeros(len(x64), outputs, dtype=torch.float64)
    for b, row in enumerate(x64):
        for p in range(pairs):
            i, t1 = naive_cell(row[2 * p], nodes)
            j, t2 = naive_cell(row[2 * p + 1], nodes)
            out[b] += ((1 - t1) * (1 - t2) * t64[p, i, j] + (1 - t1) * t2 * t64[p, i, j + 1]
                       + t1 * (1 - t2) * t64[p, i + 1, j] + t1 * t2 * t64[p, i + 1, j + 1])
    return out


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (the project's relative-error convention)."""
    diff = (actual.double() - expected.double()).abs().max()
    return (diff / expected.double().abs().max().clamp_min(1e-300)).item()
