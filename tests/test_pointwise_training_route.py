"""Which kernel a 1x1 one-group LMKANConv2d trains on: the Linear lookup over pixel rows for tables up to
CONV_KERNEL_TRAINING_TABLE_BYTES, the convolution kernel (its own backward) above, where it measured faster; inference
keeps the one-call Linear route whatever the table. Both routes against float64 autograd through the naive reference."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops import conv as conv_ops

from conv_oracles import reference_conv, reference_grads
from test_conv_training_graph import _graph_nodes


def _layer(c_in: int, c_out: int, stride: int, grids: int = 5) -> LMKANConv2d:
    layer = LMKANConv2d(c_in, c_out, 1, stride=stride, num_grids=grids, init_scale=2.0, input_norm="affine")
    with torch.no_grad():
        layer.input_scale.copy_(torch.linspace(0.5, 1.5, c_in))
        layer.input_shift.copy_(torch.linspace(-0.3, 0.3, c_in))
        layer.bias.copy_(torch.linspace(-1, 1, c_out))
    return layer


@pytest.mark.parametrize("stride, channels_last", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("threshold, kernel_route", [(0, True), (1 << 40, False)])
def test_training_route_follows_the_table_size_and_both_match_float64(stride, channels_last, threshold, kernel_route,
                                                                      monkeypatch):
    monkeypatch.setattr(conv_ops, "CONV_KERNEL_TRAINING_TABLE_BYTES", threshold)
    layer = _layer(10, 7, stride)
    gen = torch.Generator().manual_seed(stride + 2 * channels_last)
    x = 2.5 * torch.randn(2, 10, 7, 6, generator=gen)  # a fifth or so of the inputs past the grid's outer edges
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    nodes = _graph_nodes(y.grad_fn)
    assert ("_DirectConv2dBackward" in nodes) == kernel_route
    assert ("_EagerLookupBackward" in nodes) != kernel_route
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # the reference of the lookup and bias, on the affine map's output
    x_mapped = x.detach() * layer.input_scale.detach().view(1, -1, 1, 1) + layer.input_shift.detach().view(1, -1, 1, 1)
    ref = reference_conv(_plain(layer), x_mapped)
    assert (y.double() - ref).abs().max().item() <= 2e-5 * max(1.0, ref.abs().max().item())
    dy = torch.randn(y.shape, generator=gen)
    gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
    rx, rt = reference_grads(_plain(layer), x_mapped, dy)
    rx = rx * layer.input_scale.detach().double().view(1, -1, 1, 1)
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item())
    assert (gt.double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item())


def _plain(layer: LMKANConv2d) -> LMKANConv2d:
    """The same lookup and bias with no input map: the reference of the kernel's own gradients."""
    plain = LMKANConv2d(layer.in_channels, layer.out_channels, 1, stride=layer.stride, num_grids=layer.num_grids)
    plain.load_state_dict({"table": layer.table.detach(), "bias": layer.bias.detach()}, strict=False)
    return plain


def test_inference_keeps_the_linear_route_whatever_the_table_size(monkeypatch):
    layer = _layer(10, 7, 1)
    x = 2.5 * torch.randn(2, 10, 5, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = layer(x)
        monkeypatch.setattr(conv_ops, "CONV_KERNEL_TRAINING_TABLE_BYTES", 0)
        assert torch.equal(layer(x), expected)


def test_the_threshold_splits_real_layer_sizes():
    """mobilenet_v2-like 384->160 (9.5 MiB at G = 8) trains on the convolution kernel, 64->384 (3.8 MiB) on the
    Linear lookup."""
    for c_in, c_out, kernel_route in ((384, 160, True), (64, 384, False)):
        layer = LMKANConv2d(c_in, c_out, 1, num_grids=8)
        x = torch.randn(1, c_in, 2, 2, requires_grad=True)
        assert ("_DirectConv2dBackward" in _graph_nodes(layer(x).grad_fn)) == kernel_route
