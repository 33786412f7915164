"""Table construction shared by the lmKAN modules: random init and the exact function-preserving init.

A pairwise linear form w_a x_a + w_b x_b is bilinear, and the grid extrapolates linearly, so sampling it at the
nodes reproduces it for every input. The node values are rounded to a per-function power-of-two step so that
T[i,j] = A[i] + B[j] holds exactly in the table's dtype: the cross difference T11 - T10 - T01 + T00 is then exactly
zero and the cancellation-free evaluation stays exact far outside the grid.
"""

from __future__ import annotations

import math

import torch

from ..grid import grid_nodes


NO_DATA_INPUT_STD = 2.0**-40  # also the smallest std ever used: inputs scale by at most 2^40
MIN_RELATIVE_STD = 1e-2  # a feature's std is at least this fraction of the layer's RMS spread


def safe_input_std(std: torch.Tensor | None, features: int, mean: torch.Tensor | None = None,
                   rms: torch.Tensor | None = None) -> torch.Tensor:
    """The per-feature std an exact layer normalises by, float64, always finite and positive.

    An exact table is exact wherever the normalised input u = (x - mean) / std lands, but a float evaluation loses
    eps * |node| / |u| relative precision when |u| is far below the grid nodes; the scale must therefore follow the
    data. Without data (std None) u = x * 2^40 keeps |x| >= 1e-12 off the inner nodes and |x| < 1e26 finite.
    With data, every std is at least max(2^-40, 1e-2 * the layer's RMS spread) (its RMS feature magnitude when
    nothing varies): a degenerate feature (constant, all-zero, denormal, non-finite or under-sampled spread) would
    otherwise get a 1/std that is inf in the table dtype, or a |u| so large on new data that the rounding of its
    pair partner's table values (eps * |partner| * |u|) dominates; a constant feature gets |mean| when larger.
    """
    if std is None:
        return torch.full((features,), NO_DATA_INPUT_STD, dtype=torch.float64)
    std = std.detach().to(torch.float64)
    floor = NO_DATA_INPUT_STD
    for scale in (std, rms.detach().to(std) if rms is not None else std):
        finite = scale[torch.isfinite(scale)]
        spread = float(finite.square().mean().sqrt()) if finite.numel() else 0.0
        if spread > 0:
            floor = max(floor, MIN_RELATIVE_STD * spread)
            break
    centre = mean.detach().to(std).abs() if mean is not None else torch.zeros_like(std)
    centre = torch.where(torch.isfinite(centre), centre, torch.zeros_like(centre))
    fallback = centre.clamp_min(floor)
    good = torch.isfinite(std) & (std >= floor) & (std > MIN_RELATIVE_STD * centre)
    return torch.where(good, std, fallback)


def table_shape(in_features: int, out_features: int, num_grids: int) -> tuple[int, int, int, int]:
    """Canonical table shape [P, G+1, G+1, N_out] for in_features inputs (odd counts get a zero partner)."""
    pairs = (in_features + 1) // 2
    return (pairs, num_grids + 1, num_grids + 1, out_features)


def random_table(shape: tuple[int, ...], in_features: int, init_scale: float, dtype=None, device=None) -> torch.Tensor:
    """The official initialisation: i.i.d. U(-s, s) with s = init_scale / sqrt(in_features)."""
    bound = init_scale / math.sqrt(max(1, in_features))
    return torch.empty(shape, dtype=dtype, device=device).uniform_(-bound, bound)


def _quantum(magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A power of two q per function so that |A|, |B| <= 2^(m-2) q (m: significand bits of dtype), making sums and
    differences exact; q is at least dtype's smallest normal number, so all-zero functions stay finite."""
    shift = _mantissa_bits(dtype) - 2
    floor = torch.finfo(dtype).tiny * 2.0**shift
    exponent = torch.ceil(torch.log2(magnitude.clamp_min(floor)))
    return torch.exp2(exponent - shift)


def _mantissa_bits(dtype: torch.dtype) -> int:
    """Significand bits (implicit bit included) of a floating dtype: 24 for float32, 53 for float64."""
    return round(-math.log2(torch.finfo(dtype).eps)) + 1


def _pad_pairs(w: torch.Tensor) -> torch.Tensor:
    """Append a zero input column when the input count is odd (the constant-zero partner feature)."""
    return torch.cat([w, w.new_zeros(*w.shape[:-1], 1)], dim=-1) if w.shape[-1] % 2 else w


def exact_linear_table(weight: torch.Tensor, num_grids: int, input_std: torch.Tensor | None,
                       dtype: torch.dtype) -> torch.Tensor:
    """Table [..., P, G+1, G+1, N_out] reproducing x -> weight @ (std * x) exactly (no bias) in `dtype`.

    weight is [..., N_out, N_in]; input_std [..., N_in] rescales the normalised grid coordinate back to the original
    input. Leading dims (conv groups) are built in one vectorised pass.
    """
    w = weight.detach().to(torch.float64)
    if input_std is not None:
        w = w * input_std.detach().to(torch.float64).unsqueeze(-2)
    w = _pad_pairs(w)
    nodes = grid_nodes(num_grids, torch.float64, w.device)
    w_a = w[..., 0::2].transpose(-1, -2)  # [..., P, N_out]
    w_b = w[..., 1::2].transpose(-1, -2)
    magnitude = torch.maximum(w_a.abs(), w_b.abs()) * nodes.abs().max()  # max over nodes of |w g|
    q = _quantum(magnitude, dtype).unsqueeze(-2).to(dtype)  # [..., P, 1, N_out]
    nodes = nodes.to(dtype).view(-1, 1)
    # multiples of q below 2^(m-2) q: exact in dtype, and so are their sums and differences
    part_a = torch.round(w_a.to(dtype).unsqueeze(-2) * nodes / q) * q  # [..., P, G+1, N_out]
    part_b = torch.round(w_b.to(dtype).unsqueeze(-2) * nodes / q) * q
    table = torch.empty(*part_a.shape[:-1], part_a.shape[-2], part_a.shape[-1], dtype=dtype, device=w.device)
    return torch.add(part_a.unsqueeze(-2), part_b.unsqueeze(-3), out=table)  # [..., P, G+1, G+1, N_out]


def branch_table(weight: torch.Tensor, num_grids: int, relu_inputs: bool) -> torch.Tensor:
    """Table [..., P, G+1, G+1, N_out] of x -> weight @ x (or weight @ relu(x)) in float64, for weight
    [..., N_out, N_in]; the ReLU form is exact only for even G (0 is then a grid node), the linear form for every G."""
    w = _pad_pairs(weight.detach().to(torch.float64))
    nodes = grid_nodes(num_grids, torch.float64, w.device)
    if relu_inputs:
        nodes = nodes.clamp_min(0.0)
    nodes = nodes.view(-1, 1)
    part_a = w[..., 0::2].transpose(-1, -2).unsqueeze(-2) * nodes  # [..., P, G+1, N_out]
    part_b = w[..., 1::2].transpose(-1, -2).unsqueeze(-2) * nodes
    return part_a.unsqueeze(-2) + part_b.unsqueeze(-3)


def knot_linear_table(weight: torch.Tensor, knots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Table [..., P, G+1, G+1, N_out] of x -> weight @ x for inputs placed by per-feature knots [..., N_in, G+1]
    (grid node k pulls back to x = knots[..., k]); exact wherever the placement map is linear between nodes."""
    w = _pad_pairs(weight.detach().to(torch.float64))
    k = knots.detach().to(torch.float64)
    if k.shape[-2] % 2:
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], 1, k.shape[-1])], dim=-2)
    part_a = w[..., 0::2].transpose(-1, -2).unsqueeze(-2) * k[..., 0::2, :].unsqueeze(-1)  # [..., P, G+1, N_out]
    part_b = w[..., 1::2].transpose(-1, -2).unsqueeze(-2) * k[..., 1::2, :].unsqueeze(-1)
    return (part_a.unsqueeze(-2) + part_b.unsqueeze(-3)).to(dtype)
