"""from_linear / from_conv reproduce the original layer exactly, far outside the grid too."""

import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANConv2d, LMKANLinear
from oracles import rel_err

SCALES = (1.0, 30.0, 1e3)


@pytest.mark.parametrize("in_f,out_f", [(8, 5), (7, 3), (1, 4), (64, 33)])
@pytest.mark.parametrize("g", [3, 8, 28])
@pytest.mark.parametrize("with_stats", [False, True])
def test_from_linear_float32(in_f, out_f, g, with_stats):
    linear = nn.Linear(in_f, out_f)
    stats = dict(input_mean=torch.randn(in_f), input_std=torch.rand(in_f) + 0.2) if with_stats else {}
    layer = LMKANLinear.from_linear(linear, g, **stats)
    for scale in SCALES:
        x = torch.randn(4, 5, in_f) * scale
        assert rel_err(layer(x), linear(x)) < 1e-5, scale


@pytest.mark.parametrize("g", [4, 12])
def test_from_linear_float64(g):
    linear = nn.Linear(10, 6).double()
    layer = LMKANLinear.from_linear(linear, g, input_mean=torch.randn(10), input_std=torch.rand(10) + 0.5)
    assert layer.table.dtype == torch.float64
    for scale in SCALES:
        x = torch.randn(50, 10, dtype=torch.float64) * scale
        assert rel_err(layer(x), linear(x)) < 1e-12


def test_from_linear_without_bias_and_original_untouched():
    linear = nn.Linear(6, 4, bias=False)
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    layer = LMKANLinear.from_linear(linear, 8)
    x = torch.randn(9, 6) * 100
    assert rel_err(layer(x), linear(x)) < 1e-5
    assert all(torch.equal(before[k], v) for k, v in linear.state_dict().items())


def test_from_linear_with_zero_and_tiny_weights_stays_finite():
    linear = nn.Linear(6, 4)
    with torch.no_grad():
        linear.weight[1] = 0.0  # a dead output (as shrink refits can produce)
        linear.weight[:, 2:4] = 0.0  # a whole zero pair
        linear.weight[2, 0] = 1e-39  # subnormal
    layer = LMKANLinear.from_linear(linear, 8)
    assert torch.isfinite(layer.table).all()
    x = torch.randn(9, 6) * 100
    assert rel_err(layer(x), linear(x)) < 1e-5


CONV_VARIANTS = [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=(3, 2), padding=(1, 2), dilation=(2, 1)),
    dict(in_channels=6, out_channels=9, kernel_size=3, padding=1, groups=3),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),  # depthwise
    dict(in_channels=3, out_channels=4, kernel_size=1),  # pointwise
    dict(in_channels=3, out_channels=4, kernel_size=3, padding="same", bias=False),
    dict(in_channels=3, out_channels=4, kernel_size=4, padding="same", dilation=2),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="replicate"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="circular"),
]


@pytest.mark.parametrize("kwargs", CONV_VARIANTS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("with_stats", [False, True])
def test_from_conv_every_variant(kwargs, with_stats):
    conv = nn.Conv2d(**kwargs)
    c = kwargs["in_channels"]
    stats = dict(input_mean=torch.randn(c), input_std=torch.rand(c) + 0.2) if with_stats else {}
    layer = LMKANConv2d.from_conv(conv, 8, **stats)
    for scale in SCALES:
        x = torch.randn(2, c, 9, 8) * scale
        expected = conv(x)
        assert layer(x).shape == expected.shape
        assert rel_err(layer(x), expected) < 1e-5, scale


def test_from_conv_float64():
    conv = nn.Conv2d(3, 4, 3, padding=1, groups=1).double()
    layer = LMKANConv2d.from_conv(conv, 12, input_mean=torch.randn(3), input_std=torch.rand(3) + 0.5)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64) * 1e3
    assert rel_err(layer(x), conv(x)) < 1e-12
