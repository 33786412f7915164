"""The lmKAN "sigma" grid: the only Python home of the grid math.

sigma is the Laplace(0, 1) CDF. The G+1 nodes are the G-1 inner points sigma^-1(k/G), k=1..G-1, plus two
ghost nodes extrapolated linearly from the outermost inner spacing. A value x lies in cell
clamp(floor(sigma(x) * G), 0, G-1) and its local coordinate t = (x - g_i) / (g_{i+1} - g_i) is NOT clamped, so the
edge cells extend linearly to +-infinity (the official implementation's behaviour).
"""

from __future__ import annotations

import math

import torch

from .errors import GridSizeError

MIN_NUM_GRIDS = 3
MAX_NUM_GRIDS = 256


def check_num_grids(num_grids: object) -> int:
    """Validate the number of grid intervals G and return it as an int."""
    if isinstance(num_grids, bool) or not isinstance(num_grids, int):
        raise GridSizeError(f"num_grids must be an int in [{MIN_NUM_GRIDS}, {MAX_NUM_GRIDS}], got {num_grids!r}")
    if not MIN_NUM_GRIDS <= num_grids <= MAX_NUM_GRIDS:
        raise GridSizeError(
            f"num_grids={num_grids} is out of range: the grid needs at least {MIN_NUM_GRIDS} intervals (the ghost "
            f"nodes use the first two inner nodes) and at most {MAX_NUM_GRIDS}"
        )
    return num_grids


def sigma(x: torch.Tensor) -> torch.Tensor:
    """Laplace CDF: 0.5 e^x for x <= 0, 1 - 0.5 e^-x otherwise (one exp per element)."""
    half_tail = 0.5 * torch.exp(-x.abs())
    return torch.where(x <= 0, half_tail, 1.0 - half_tail)


def _sigma_inverse(u: float) -> float:
    return math.log(2.0 * u) if u <= 0.5 else -math.log(2.0 * (1.0 - u))


def grid_node_values(num_grids: int) -> list[float]:
    """The G+1 node positions as Python floats (float64), ghosts included, ascending."""
    g = check_num_grids(num_grids)
    inner = [_sigma_inverse(k / g) for k in range(1, g)]
    left_ghost = inner[0] - (inner[1] - inner[0])
    right_ghost = inner[-1] + (inner[-1] - inner[-2])
    return [left_ghost, *inner, right_ghost]


def grid_nodes(num_grids: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """The G+1 node positions as a tensor, ghosts included."""
    return torch.tensor(grid_node_values(num_grids), dtype=dtype, device=device)


def locate(x: torch.Tensor, num_grids: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell index (int64, in [0, G-1]), unclamped local coordinate t and dt/dx of every element of x.

    Node positions and inverse cell lengths are computed in float64 and cast to x's dtype, as the kernels do.
    """
    nodes64 = grid_nodes(num_grids, torch.float64, x.device)
    inv_len = (1.0 / (nodes64[1:] - nodes64[:-1])).to(x.dtype)
    nodes = nodes64.to(x.dtype)
    cell = torch.floor(sigma(x) * num_grids).nan_to_num_(0.0).clamp_(0, num_grids - 1).to(torch.int64)  # NaN -> NaN out
    slope = inv_len[cell]
    t = (x - nodes[cell]) * slope
    return cell, t, slope
