"""Quantile input placement: a monotone, bounded map exact at its calibration quantiles, folded into from_linear,
through lmkanify, save/load and ONNX, and no divergence of a heavy-tailed regression."""

from __future__ import annotations

import bisect

import pytest
import torch
from torch import nn

import lmkan_surgery
from lmkan_surgery import ConfigError, LMKANConfig, LMKANLinear, ShapeError, lmkanify
from lmkan_surgery.nn.placement import place, quantile_knots, with_tails
from oracles import naive_nodes, rel_err

G = 8


def heavy_tailed(n: int, features: int, seed: int) -> torch.Tensor:
    """Log-normal-squared features (max ~ hundreds of sigma), one with 60% exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64).exp() ** 2
    x[: int(0.6 * n), 1] = 0.0
    return x


def naive_place(value: float, knots: list[float], nodes: list[float]) -> float:
    """Independent piecewise-linear interpolation through (knot, node) with clamping: one scalar at a time."""
    if value <= knots[0]:
        return nodes[0]
    if value >= knots[-1]:
        return nodes[-1]
    k = bisect.bisect_right(knots, value) - 1
    return nodes[k] + (value - knots[k]) / (knots[k + 1] - knots[k]) * (nodes[k + 1] - nodes[k])


def test_quantile_map_is_monotone_bounded_and_exact_at_the_knots():
    x = heavy_tailed(3000, 4, 0)
    knots = quantile_knots(x, G)
    nodes = naive_nodes(G)
    assert (knots[:, 1:] > knots[:, :-1]).all()
    at_knots = place(knots.t().contiguous(), with_tails(knots), G, channel_dim=1)
    assert rel_err(at_knots.t(), torch.tensor(nodes, dtype=torch.float64).expand(4, -1)) < 1e-12
    probe = torch.cat([torch.linspace(-50, 1000, 4001, dtype=torch.float64).view(-1, 1).expand(-1, 4), x])
    u = place(probe, with_tails(knots), G, channel_dim=1)
    sorted_u = place(probe[:4001], with_tails(knots), G, channel_dim=1)
    assert (sorted_u[1:] >= sorted_u[:-1]).all()
    tails = with_tails(knots)
    ext = [2 * nodes[0] - nodes[1], *nodes, 2 * nodes[-1] - nodes[-2]]
    for f in range(4):
        expected = torch.tensor([naive_place(v, tails[f].tolist(), ext) for v in probe[::37, f].tolist()], dtype=torch.float64)
        assert rel_err(u[::37, f], expected) < 1e-12
    assert u.min() >= ext[0] - 1e-12 and u.max() <= ext[-1] + 1e-12  # bounded: no extrapolation blow-up


def test_rank_placement_fills_cells_evenly_and_a_point_mass_takes_one_cell():
    x = heavy_tailed(4000, 3, 1)
    u = place(x, with_tails(quantile_knots(x, G, mix=0.0)), G, channel_dim=1)
    nodes = torch.tensor(naive_nodes(G), dtype=torch.float64)
    counts = torch.stack([torch.bucketize(u[:, f].contiguous(), nodes[1:-1], right=True).bincount(minlength=G) for f in range(3)])
    assert counts[0].tolist() == [500] * G and counts[2].tolist() == [500] * G
    assert counts[1, 0] == 2400 and (counts[1, 1:] > 150).all(), counts  # zeros in one cell, the rest spread out


def test_from_linear_with_knots_is_exact_inside_and_saturates_outside():
    torch.manual_seed(0)
    x = heavy_tailed(2000, 7, 2)
    linear = nn.Linear(7, 5).double()
    layer = LMKANLinear.from_linear(linear, G, input_knots=quantile_knots(x, G))
    assert layer.input_norm == "quantile"
    with torch.no_grad():
        assert rel_err(layer(x), linear(x)) < 1e-12
        far = x * 1e6
        assert torch.isfinite(layer(far)).all() and layer(far).abs().max() < 10 * linear(x).abs().max() * 1e2
    with pytest.raises(ShapeError, match="input_knots"):
        LMKANLinear.from_linear(linear, G, input_knots=quantile_knots(x, G)[:3])


def test_calibrated_from_scratch_layer_equals_unfolded_map_then_lookup():
    torch.manual_seed(1)
    x = heavy_tailed(500, 6, 3).float()
    layer = LMKANLinear(6, 4, G, input_norm="quantile", init_scale=1.0)
    with pytest.raises(ShapeError):
        layer.calibrate_placement(x[:, :5])
    layer.calibrate_placement(x)
    plain = LMKANLinear(6, 4, G, input_norm="none")
    with torch.no_grad():
        plain.table.copy_(layer.table)
        plain.bias.copy_(layer.bias)
        u = place(x, layer.input_knots, G, channel_dim=1)
        assert rel_err(layer(x), plain(u)) < 1e-6
    with pytest.raises(ConfigError, match="quantile"):
        LMKANLinear(6, 4, G).calibrate_placement(x)


def _teacher() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 16), nn.CELU(), nn.Linear(16, 16), nn.CELU(), nn.Linear(16, 1))


def test_lmkanify_quantile_save_load_roundtrip(tmp_path):
    teacher = _teacher()
    x = heavy_tailed(600, 6, 4).float()
    config = LMKANConfig(num_grids=G, input_norm="quantile", skip_defaults=False)
    student, _ = lmkanify(teacher, config, example_inputs=x[:8], calibration=list(x.split(200)))
    converted = [m for m in student.modules() if isinstance(m, LMKANLinear)]
    assert len(converted) == 3 and all(m.input_norm == "quantile" for m in converted)
    with torch.no_grad():
        assert rel_err(student(x), teacher(x)) < 1e-4  # exact within the calibrated range
    path = tmp_path / "q.lmkan"
    lmkan_surgery.save(student, path)
    restored = lmkan_surgery.load(path, _teacher)
    with torch.no_grad():
        assert torch.equal(student(x * 3), restored(x * 3))


def test_onnx_export_of_quantile_layer(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lmkan_surgery.onnx import FUNCTION_BODY, export_onnx, validate_onnx

    x = heavy_tailed(400, 6, 5).float()
    model = nn.Sequential(LMKANLinear(6, 8, G, input_norm="quantile", init_scale=1.0), nn.Tanh(),
                          LMKANLinear(8, 3, 6, input_norm="quantile", init_scale=1.0)).eval()
    model[0].calibrate_placement(x)
    with torch.no_grad():
        model[2].calibrate_placement(torch.tanh(model[0](x)))
    result = export_onnx(model, tmp_path / "q.onnx", (x[:4],), validate=False)
    assert result.lmkan_nodes == 2
    report = validate_onnx(model, result.path, (x[:64],), runtime_path=FUNCTION_BODY)
    assert report.max_rel <= 1e-4, str(report)


def test_heavy_tailed_regression_does_not_diverge():
    """A 3-layer lmKAN with quantile placement trained on heavy-tailed inputs: every validation RMSE finite, none
    after the first epoch above 2x the best before it, and the last well below the target's std."""
    from lmkan_surgery.distill import TrainConfig, train_lmkan

    gen = torch.Generator().manual_seed(6)
    x = heavy_tailed(3000, 8, 6).float()
    y = (torch.log1p(x[:, :4]).sum(1, keepdim=True) + torch.tanh(x[:, 4:5] * x[:, 5:6])).float()
    y = (y - y.mean()) / y.std()
    torch.manual_seed(3)
    model = nn.Sequential(LMKANLinear(8, 16, G, input_norm="quantile"), LMKANLinear(16, 16, G, input_norm="quantile"),
                          LMKANLinear(16, 1, G, input_norm="quantile"))
    with torch.no_grad():
        h = x[:2000]
        for layer in model:
            layer.calibrate_placement(h)
            h = layer(h) + 0.1 * torch.randn(h.shape[0], layer.out_features, generator=gen)
    cfg = TrainConfig(epochs=5, batch_size=128, lr=3e-3, task="regression", hessian_start=1e-3, progress=False)
    result = train_lmkan(model, (x[:2400], y[:2400]), (x[2400:], y[2400:]), cfg)
    curve = [r.val_metric for r in result.history]
    assert all(torch.isfinite(torch.tensor(curve))), curve
    assert all(curve[i] <= 2 * min(curve[:i]) for i in range(1, len(curve))) and curve[-1] < 0.6, curve


def test_conv_quantile_placement_is_applied_per_channel_after_padding():
    from lmkan_surgery import LMKANConv2d

    torch.manual_seed(4)
    x = torch.randn(3, 2, 6, 6).exp() ** 2
    conv = LMKANConv2d(2, 4, 3, padding=1, num_grids=6, input_norm="quantile", init_scale=1.0)
    conv.calibrate_placement(x, channel_dim=1)
    plain = LMKANConv2d(2, 4, 3, padding=0, num_grids=6, input_norm="none")
    with torch.no_grad():
        plain.table.copy_(conv.table)
        plain.bias.copy_(conv.bias)
        placed = place(nn.functional.pad(x, (1, 1, 1, 1)), conv.input_knots, 6, channel_dim=1)
        assert rel_err(conv(x), plain(placed)) < 1e-5
    rows = x.transpose(0, 1).reshape(2, -1).t()
    assert torch.allclose(conv.input_knots[:, 1:-1], quantile_knots(rows, 6).float())
