"""Distribution-aware input placement: a per-feature monotone piecewise-linear map calibrated on data.

Each feature's map sends G+1 calibrated x-knots to the G+1 grid nodes, so the grid cells are the images of data
quantiles; it continues with the edge cells' slopes for one more cell on either side and is constant beyond
(bounded output: a deep stack cannot blow up through the tables' linear extrapolation). The knots are quantiles of
a blended CDF H = (1 - mix) * rank CDF (mid-ranks, so a point mass maps to one value) + mix * value CDF (uniform
over [min, max]), so heavy tails keep some cells where the values are, not only where the samples are. A value
repeated by more than 1/G of the samples (a point mass, e.g. exact zeros) counts as 1/G in the rank CDF: a lookup
cannot split it, so it takes one cell instead of leaving several empty ones.
The map is evaluated as u = v_0 + sum_k s_k * min(relu(x - x_k), L_k): standard ops only (ONNX: Sub, Relu, Min,
Mul, ReduceSum, Add), no search.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch

from ..errors import ConfigError, ShapeError
from ..grid import grid_nodes
from ..ops.dispatch import native_place


def knot_values(num_grids: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The G+3 map values: one tail node, the G+1 grid nodes (ghosts included), one tail node."""
    nodes = grid_nodes(num_grids, torch.float64, device)
    left = nodes[0] - (nodes[1] - nodes[0])
    right = nodes[-1] + (nodes[-1] - nodes[-2])
    return torch.cat([left.view(1), nodes, right.view(1)]).to(dtype)


def with_tails(knots: torch.Tensor) -> torch.Tensor:
    """[..., G+1] grid-node knots -> [..., G+3] with one extra knot each side at the edge cells' spacing."""
    left = knots[..., :1] - (knots[..., 1:2] - knots[..., :1])
    right = knots[..., -1:] + (knots[..., -1:] - knots[..., -2:-1])
    return torch.cat([left, knots, right], dim=-1)


def identity_knots(features: int, num_grids: int, dtype=None, device=None) -> torch.Tensor:
    """Knots [features, G+3] of the map that is the identity inside the extended grid (clamped outside)."""
    return knot_values(num_grids, torch.float64, device).to(dtype or torch.get_default_dtype()).expand(
        features, -1).clone()


def _interp(query: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of (xp, fp) at query (xp strictly increasing, query inside [xp[0], xp[-1]])."""
    idx = torch.searchsorted(xp, query, right=True).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (query - x0) / (x1 - x0) * (f1 - f0)


def quantile_knots(rows: torch.Tensor, num_grids: int, mix: float = 0.25, min_gap: float = 1e-6) -> torch.Tensor:
    """Knots [F, G+1] (float64) for samples rows [n, F]: knot k is where the blended CDF H reaches k/G.

    Knot 0 is the feature's minimum and knot G its maximum. A constant feature gets unit-spaced knots around its
    value. Consecutive knots are at least min_gap * (max - min) apart so that no slope is infinite.
    """
    if rows.dim() != 2 or rows.shape[0] < 2:
        raise ShapeError(f"quantile_knots needs samples [n >= 2, features], got {tuple(rows.shape)}")
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(f"placement mix must be in [0, 1], got {mix!r}")
    rows = rows.detach().to(torch.float64)
    if not torch.isfinite(rows).all():
        raise ConfigError("quantile placement needs finite calibration inputs (found NaN or inf)")
    levels = torch.arange(num_grids + 1, dtype=torch.float64, device=rows.device) / num_grids
    nodes = grid_nodes(num_grids, torch.float64, rows.device)
    knots = torch.empty(rows.shape[1], num_grids + 1, dtype=torch.float64, device=rows.device)
    for f in range(rows.shape[1]):
        values, counts = torch.unique(rows[:, f], sorted=True, return_counts=True)
        if len(values) == 1:
            knots[f] = values[0] + nodes
            continue
        lo, hi = values[0], values[-1]
        capped = counts.to(torch.float64)
        for _ in range(4):  # a capped value's share of the capped total tends to 1/G
            capped = torch.minimum(counts.to(torch.float64), capped.sum() / num_grids)
        rank = (torch.cumsum(capped, 0) - 0.5 * capped) / capped.sum()
        blended = (1.0 - mix) * rank + mix * (values - lo) / (hi - lo)
        blended[0], blended[-1] = 0.0, 1.0
        knots[f] = _interp(levels, blended, values)
        gap = min_gap * float(hi - lo)
        for k in range(1, num_grids + 1):
            knots[f, k] = torch.maximum(knots[f, k], knots[f, k - 1] + gap)
    return knots


@functools.lru_cache(maxsize=None)
def _map_steps(num_grids: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float]:
    """The map's increase over each of its G+2 knot intervals (read-only, cached) and its value at the first knot."""
    values = knot_values(num_grids, torch.float64, device)
    return (values[1:] - values[:-1]).to(dtype), float(values[0])


# Interval tables of knots tensors, by id: (a weak reference to the knots, their version, tables, v0).
_INTERVALS: dict[int, tuple[weakref.ref, int, torch.Tensor, float]] = {}


def placement_intervals(knots: torch.Tensor, num_grids: int) -> tuple[torch.Tensor, float]:
    """The native kernels' form of the maps of knots [F, G+3]: start, length and slope of each knot interval,
    [3, G+2, F] (interval-major, so a kernel's inner loop runs over contiguous features), and the map's value at the
    first knot. Kept per knots tensor until it changes (its version counter), so a call at batch 1 makes none."""
    try:
        version = knots._version
    except RuntimeError:  # an inference-mode tensor counts no versions: not cached
        version = None
    held = _INTERVALS.get(id(knots))
    if version is not None and held is not None and held[0]() is knots and held[1] == version:
        return held[2], held[3]
    rises, v0 = _map_steps(num_grids, knots.dtype, knots.device)
    start = knots[:, :-1]
    length = knots[:, 1:] - start
    tables = torch.stack([start, length, rises / length]).transpose(1, 2).contiguous()
    if version is not None:
        key = id(knots)
        _INTERVALS[key] = (weakref.ref(knots, lambda _, key=key: _INTERVALS.pop(key, None)), version, tables, v0)
    return tables, v0


class _NativePlace(torch.autograd.Function):
    """The native CPU kernel's placement: one pass over x, du/dx kept for the backward (knots are not trained)."""

    @staticmethod
    def forward(ctx, x, intervals, v0, inner, kernel):
        u, dudx = kernel(x, intervals, v0, inner, True)
        ctx.save_for_backward(dudx)
        return u

    @staticmethod
    def backward(ctx, grad_u):
        (dudx,) = ctx.saved_tensors
        return grad_u * dudx, None, None, None, None


def place(x: torch.Tensor, knots: torch.Tensor, num_grids: int, channel_dim: int) -> torch.Tensor:
    """Apply the per-feature maps (knots [F, G+3]) to x along channel_dim: u = v0 + sum_k s_k min(relu(x-x_k), L_k)
    (standard ops: what tracers and exporters see); eager float32 CPU work runs the native kernel's one pass."""
    knots = knots.to(x.dtype)
    kernel = None if knots.requires_grad else native_place(x)
    if kernel is not None:
        intervals, v0 = placement_intervals(knots, num_grids)
        inner = math.prod(x.shape[channel_dim % x.dim() + 1:])
        if torch.is_grad_enabled() and x.requires_grad:
            return _NativePlace.apply(x, intervals, v0, inner, kernel)
        return kernel(x, intervals, v0, inner, False)[0]
    rises, v0 = _map_steps(num_grids, x.dtype, knots.device)
    lengths = knots[:, 1:] - knots[:, :-1]  # [F, K-1]
    slopes = rises / lengths
    shape = [1] * (x.dim() + 1)
    shape[channel_dim] = knots.shape[0]
    shape[-1] = lengths.shape[1]
    rise = torch.minimum(torch.relu(x.unsqueeze(-1) - knots[:, :-1].reshape(shape)), lengths.reshape(shape))
    return (rise * slopes.reshape(shape)).sum(-1) + v0
