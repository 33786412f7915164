"""LMKANLinear / LMKANConv2d semantics: official layout, ReLU fold, normalisation, state_dict, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmkan_surgery import (ConfigError, DTypeError, GridSizeError, LMKANConv2d, LMKANLinear, ShapeError,
                           lmkan_lookup)
from oracles import naive_cell, naive_nodes, rel_err


def official_batch_last(x_bl: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The official LMKAN2DLayer formula: x [N_in, B], param [G+1, G+1, N_out, N_in/2] -> y [N_out, B]."""
    n, _, outputs, pairs = param.shape
    nodes = naive_nodes(n - 1)
    y = torch.zeros(outputs, x_bl.shape[1], dtype=torch.float64)
    for b in range(x_bl.shape[1]):
        for p in range(pairs):
            i, t1 = naive_cell(float(x_bl[2 * p, b]), nodes)
            j, t2 = naive_cell(float(x_bl[2 * p + 1, b]), nodes)
            y[:, b] += ((1 - t1) * (1 - t2) * param[i, j, :, p] + (1 - t1) * t2 * param[i, j + 1, :, p]
                        + t1 * (1 - t2) * param[i + 1, j, :, p] + t1 * t2 * param[i + 1, j + 1, :, p]).double()
    return y


def test_from_official_matches_batch_last_formula_and_round_trips():
    param = torch.randn(9, 9, 5, 3, dtype=torch.float64)
    layer = LMKANLinear.from_official(param)
    x = torch.randn(11, 6, dtype=torch.float64) * 2
    assert rel_err(layer(x), official_batch_last(x.t(), param).t()) < 1e-12
    assert torch.equal(layer.official_parameter(), param)


@pytest.mark.parametrize("g", [4, 8, 12])
def test_relu_fold_is_exact_for_even_grids(g):
    layer = LMKANLinear(7, 5, num_grids=g, preconditioning="relu_first", dtype=torch.float64)
    layer.gamma.fill_(0.37)
    x = torch.randn(40, 7, dtype=torch.float64) * 4
    x[0] = 200.0
    x[1] = -200.0
    before = layer(x)
    layer.fold()
    assert layer.branch is None
    assert rel_err(layer(x), before) < 1e-12


def _branch_oracle(layer: LMKANLinear, x: torch.Tensor) -> torch.Tensor:
    """gamma * pure lookup + the branch, each computed independently of the module's forward."""
    lookup = lmkan_lookup(x, layer.table) + layer.bias
    w, b = layer.branch.weight, layer.branch.bias
    branch = {"linear": x @ w.t() + b, "relu_first": x.clamp_min(0) @ w.t() + b,
              "relu_last": (x @ w.t() + b).clamp_min(0)}[layer.preconditioning]
    return layer.gamma * (lookup - layer.bias) + layer.bias + branch


@pytest.mark.parametrize("kind", ["linear", "relu_first", "relu_last"])
def test_preconditioning_branches_follow_the_paper_equations(kind):
    layer = LMKANLinear(6, 4, num_grids=6, preconditioning=kind, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(30, 6, dtype=torch.float64) * 3
    assert layer.gamma.item() == 0.0  # starts as the pure branch (an MLP layer)
    layer.gamma.fill_(0.3)
    assert rel_err(layer(x), _branch_oracle(layer, x)) < 1e-12
    assert f"preconditioning={kind}" in repr(layer)


@pytest.mark.parametrize("g", [5, 8])
def test_linear_branch_folds_exactly_for_any_grid(g):
    layer = LMKANLinear(5, 3, num_grids=g, preconditioning="linear", dtype=torch.float64)
    layer.gamma.fill_(0.3)
    x = torch.randn(50, 5, dtype=torch.float64) * 5
    x[0] = 300.0
    before = layer(x)
    assert layer.foldable
    layer.fold()
    assert layer.branch is None and layer.preconditioning is None
    assert rel_err(layer(x), before) < 1e-12


def test_relu_last_branch_cannot_be_folded():
    layer = LMKANLinear(4, 2, num_grids=8, preconditioning="relu_last")
    assert not layer.foldable
    with pytest.raises(ConfigError, match="relu_last"):
        layer.fold()
    assert layer.branch is not None  # untouched
    with pytest.raises(ConfigError, match="preconditioning"):
        LMKANLinear(4, 2, preconditioning="relu_middle")


@pytest.mark.parametrize("kind", ["linear", "relu_first", "relu_last"])
def test_conv_preconditioning_matches_lookup_plus_a_plain_conv(kind):
    args = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2, num_grids=6,
                dtype=torch.float64)
    layer = LMKANConv2d(**args, preconditioning=kind)
    plain = LMKANConv2d(**args)
    with torch.no_grad():
        plain.table.copy_(layer.table)
        plain.bias.copy_(layer.bias.normal_())
    layer.gamma.fill_(0.3)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64) * 3
    w, b = layer.branch.weight, layer.branch.bias
    conv = dict(stride=2, padding=1, groups=2)
    branch = {"linear": F.conv2d(x, w, b, **conv), "relu_first": F.conv2d(x.clamp_min(0), w, b, **conv),
              "relu_last": F.conv2d(x, w, b, **conv).clamp_min(0)}[kind]
    bias = layer.bias.view(1, -1, 1, 1)
    assert rel_err(layer(x), 0.3 * (plain(x) - bias) + bias + branch) < 1e-12
    if kind != "relu_last":
        before = layer(x * 50)
        layer.fold()
        assert layer.branch is None and rel_err(layer(x * 50), before) < 1e-12


def test_relu_fold_refuses_odd_grids():
    layer = LMKANLinear(4, 2, num_grids=7, preconditioning="relu_first")
    with pytest.raises(ConfigError, match="even"):
        layer.fold()


def test_batchnorm_option_normalises_over_features():
    layer = LMKANLinear(6, 3, input_norm="batchnorm")
    x = torch.randn(8, 4, 6) * 5 + 3
    layer(x)
    assert torch.allclose(layer.norm.running_mean, 0.1 * x.reshape(-1, 6).mean(0), atol=1e-5)


def test_state_dict_round_trip_and_repr():
    layer = LMKANLinear(5, 3, num_grids=6, input_norm="affine", preconditioning="relu_first")
    clone = LMKANLinear(5, 3, num_grids=6, input_norm="affine", preconditioning="relu_first")
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(4, 5)
    assert torch.equal(clone(x), layer(x))
    assert "num_grids=6" in repr(layer) and "in_features=5" in repr(layer)
    conv = LMKANConv2d(4, 6, 3, groups=2, num_grids=5)
    assert "num_grids=5" in repr(conv) and "groups=2" in repr(conv)
    assert conv.table.shape == (2, 9, 6, 6, 3)


def test_linear_takes_any_leading_dims():
    layer = LMKANLinear(4, 3)
    assert layer(torch.randn(2, 3, 5, 4)).shape == (2, 3, 5, 3)
    assert layer(torch.randn(4)).shape == (3,)


def test_bad_inputs_raise_specific_errors():
    layer = LMKANLinear(4, 3)
    with pytest.raises(ShapeError, match=r"\(\*, 4\)"):
        layer(torch.randn(2, 5))
    with pytest.raises(DTypeError, match="floating"):
        layer(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(GridSizeError):
        LMKANLinear(4, 3, num_grids=2)
    with pytest.raises(GridSizeError):
        LMKANLinear(4, 3, num_grids=1000)
    with pytest.raises(ShapeError, match="table"):
        lmkan_lookup(torch.randn(2, 4), torch.randn(2, 5, 6, 3))
    with pytest.raises(ShapeError, match="pairs"):
        lmkan_lookup(torch.randn(2, 6), torch.randn(2, 5, 5, 3))
    conv = LMKANConv2d(3, 4, 3)
    with pytest.raises(ShapeError, match="NCHW"):
        conv(torch.randn(8, 8))  # 2-D; unbatched CHW is accepted, as by nn.Conv2d
    with pytest.raises(ShapeError, match="C=3"):
        conv(torch.randn(1, 2, 8, 8))
    with pytest.raises(ConfigError):
        LMKANConv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ConfigError):
        LMKANLinear(4, 3, input_norm="layernorm")
    with pytest.raises(ConfigError):
        LMKANLinear.from_linear(nn.Conv2d(3, 3, 1))
