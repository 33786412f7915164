"""Drop-in semantics against nn.Linear / nn.Conv2d themselves: reduced-precision inputs come back in their own
dtype (with bias, affine normalisation, preconditioning), and LMKANConv2d takes empty batches and unbatched CHW
input and keeps channels_last like nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANConv2d, LMKANLinear, ShapeError

LOW = [torch.float16, torch.bfloat16]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("dtype", LOW)
def test_linear_returns_the_input_dtype(dtype):
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(4, 3, 16)
    stats = (torch.randn(16), torch.rand(16) + 0.5)
    layers = [LMKANLinear.from_linear(linear), LMKANLinear.from_linear(linear, 8, *stats),
              LMKANLinear(16, 8, 6, preconditioning="relu_last")]
    for layer in layers:
        y = layer(x.to(dtype))
        assert y.dtype == dtype and y.shape == (4, 3, 8)
        assert rel(y, layer(x.to(dtype).float())) < 1e-2  # the float32 result, rounded once
    assert rel(layers[0](x.to(dtype)), linear(x.to(dtype).float())) < 1e-2


@pytest.mark.parametrize("dtype", LOW)
def test_conv_returns_the_input_dtype(dtype):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = LMKANConv2d.from_conv(conv, input_mean=torch.randn(4), input_std=torch.rand(4) + 0.5)
    x = torch.randn(2, 4, 7, 7).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and rel(y, conv(x.float())) < 1e-2


def test_conv_empty_batch_matches_nn_conv2d():
    conv = nn.Conv2d(4, 6, 3, stride=2, groups=2)
    layer = LMKANConv2d.from_conv(conv)
    x = torch.randn(0, 4, 9, 9)
    y = layer(x)
    assert y.shape == conv(x).shape == (0, 6, 4, 4)
    y.sum().backward()
    assert layer.table.grad is not None and layer.table.grad.abs().sum() == 0


def test_conv_unbatched_chw_input():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, padding="same", padding_mode="reflect")
    layer = LMKANConv2d.from_conv(conv)
    x = torch.randn(3, 8, 6)
    y = layer(x)
    assert y.shape == conv(x).shape == (5, 8, 6)
    assert torch.equal(y, layer(x.unsqueeze(0))[0]) and rel(y, conv(x)) < 1e-5
    with pytest.raises(ShapeError, match=r"NCHW \(or unbatched CHW\) input with C=3"):
        layer(torch.randn(3, 8))


def test_conv_keeps_channels_last():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer = LMKANConv2d.from_conv(conv)
    x = torch.randn(2, 4, 6, 6)
    xl = x.contiguous(memory_format=torch.channels_last)
    ref = conv(xl)
    y = layer(xl)
    assert ref.is_contiguous(memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, layer(x)) and layer(x).is_contiguous() and rel(y, ref) < 1e-5
