"""The native CPU one-pass quantile placement against the standard-op map in float64 (values and gradients), for
features-last and per-channel (NCHW, channels_last) inputs, far-out, infinite and NaN values."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn.placement import place, quantile_knots, with_tails
from lmkan_surgery.ops.dispatch import native_place


def _knots(features: int, num_grids: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(3000, features, generator=g).exp() * (torch.rand(3000, features, generator=g) > 0.4)
    return with_tails(quantile_knots(rows, num_grids)).float()


def _inputs(shape: tuple[int, ...], knots: torch.Tensor, channel_dim: int, seed: int) -> torch.Tensor:
    """Values around the knots, on them exactly, far outside, +-inf and NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).exp() * 4 - 1
    moved = x.movedim(channel_dim, -1).reshape(-1, shape[channel_dim])
    moved[-1] = knots[:, 3]
    if len(moved) > 2:
        moved[1] = knots[:, -1] + 1e6
        moved[0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    return moved.reshape(x.movedim(channel_dim, -1).shape).movedim(-1, channel_dim).contiguous()


def _standard_ops(x: torch.Tensor, knots: torch.Tensor, num_grids: int, channel_dim: int,
                  monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setenv("LMKAN_BACKEND", "reference")
        return place(x, knots, num_grids, channel_dim)


@pytest.mark.parametrize("shape,channel_dim,num_grids", [((257, 24), 1, 8), ((3, 5, 40), 2, 4),
                                                         ((2, 6, 7, 9), 1, 8), ((5, 33), 1, 16)])
def test_native_placement_matches_the_float64_map(shape, channel_dim, num_grids, monkeypatch):
    knots = _knots(shape[channel_dim], num_grids, seed=len(shape))
    x = _inputs(shape, knots, channel_dim, seed=num_grids)
    assert native_place(x) is not None
    x32 = x.clone().requires_grad_(True)
    u = place(x32, knots, num_grids, channel_dim)
    x64 = x.double().requires_grad_(True)
    ref = _standard_ops(x64, knots.double(), num_grids, channel_dim, monkeypatch)
    assert torch.equal(u.isnan(), ref.isnan())
    torch.testing.assert_close(u.double().nan_to_num(0), ref.nan_to_num(0), rtol=0, atol=2e-6)
    weights = torch.randn(shape, dtype=torch.float64)
    (u * weights).nan_to_num(0).sum().backward()
    (ref * weights).nan_to_num(0).sum().backward()
    kink = (x.unsqueeze(-1) == knots.reshape([-1 if d == channel_dim else 1 for d in range(len(shape))] + [knots.shape[1]])).any(-1)
    smooth = ~x.isnan() & ~kink  # the map has no derivative on a knot
    assert torch.isfinite(x32.grad[~x.isnan()]).all() and smooth.float().mean() > 0.6
    torch.testing.assert_close(x32.grad.double()[smooth], x64.grad[smooth], rtol=1e-5, atol=1e-5)


def test_channels_last_and_empty_inputs(monkeypatch):
    knots = _knots(6, 8, seed=1)
    x = _inputs((2, 6, 5, 4), knots, 1, seed=2).to(memory_format=torch.channels_last)
    ref = _standard_ops(x.double(), knots.double(), 8, 1, monkeypatch)
    torch.testing.assert_close(place(x, knots, 8, 1).double().nan_to_num(0), ref.nan_to_num(0), rtol=0, atol=2e-6)
    empty = torch.zeros(0, 6, 3, 3)
    assert native_place(empty) is None and place(empty, knots, 8, 1).shape == empty.shape


def test_tracing_sees_standard_ops():
    knots = _knots(4, 8, seed=3)
    traced = torch.jit.trace(lambda t: place(t, knots, 8, 1), torch.randn(3, 4))
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert "aten::relu" in kinds and not any("PythonOp" in k for k in kinds)
