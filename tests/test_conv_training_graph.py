"""The steps of an LMKANConv2d training call around the kernels: the groups' tables and patches taken as views
(squeeze / unbind), never by indexing (the backward of `table[g]` zero-fills a gradient the size of the whole table
and copies into it: a quarter of a 1x1 960->160 training step); zero padding with the affine input map, and the bias
with the output layout, each one pass. Against float64 autograd through the naive reference, and against the plain
ops (F.pad, addcmul, add, contiguous) bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkan_surgery.nn import LMKANConv2d
from lmkan_surgery.ops.conv import add_bias, affine_padded
from lmkan_surgery.ops.dispatch import BACKEND_ENV

from conv_oracles import reference_conv, reference_grads


def _graph_nodes(root: torch.autograd.graph.Node) -> set[str]:
    seen, names, todo = set(), set(), [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo += [next_node for next_node, _ in node.next_functions]
    return names


@pytest.mark.parametrize("kernel, groups, backend", [
    (1, 1, None),  # the 1x1 Linear route of the native kernels
    (3, 1, "reference"),  # the patch path (no direct kernel), one group
    (3, 3, "reference"),  # the patch path, a table per group
])
def test_training_graph_selects_no_table_or_patch_and_gradients_match_float64(kernel, groups, backend, monkeypatch):
    if backend is not None:
        monkeypatch.setenv(BACKEND_ENV, backend)
    layer = LMKANConv2d(6, 9, kernel, padding=kernel // 2, groups=groups, num_grids=5, init_scale=2.0)
    gen = torch.Generator().manual_seed(kernel + groups)
    x = (2 * torch.randn(2, 6, 5, 7, generator=gen)).requires_grad_(True)
    y = layer(x)
    assert "SelectBackward0" not in _graph_nodes(y.grad_fn)
    dy = torch.randn(y.shape, generator=gen)
    gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
    rx, rt = reference_grads(layer, x, dy)
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item())
    assert (gt.double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item())


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return list(torch.autograd.grad(out, inputs, dy))


@pytest.mark.parametrize("pads, channels_last, needs", [
    ((1, 1, 1, 1), False, (True, False, False)),  # a 3x3 'same' convolution's input, a training step
    ((0, 1, 2, 0), True, (True, True, True)),  # uneven borders ('same' with even kernels), a trained input map
    ((3, 0, 0, 0), False, (False, True, True)),  # one border only, no gradient for x
])
def test_affine_padded_equals_pad_then_affine_map_bit_for_bit(pads, channels_last, needs):
    gen = torch.Generator().manual_seed(sum(pads))
    x = 3 * torch.randn(2, 5, 6, 7, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shift, scale = torch.randn(5, generator=gen), torch.rand(5, generator=gen) + 0.5
    x, shift, scale = (t.requires_grad_(need) for t, need in zip((x, shift, scale), needs))
    fused = affine_padded(x, shift, scale, pads)
    plain = torch.addcmul(shift.view(1, -1, 1, 1), F.pad(x, pads), scale.view(1, -1, 1, 1))
    assert torch.equal(fused, plain)
    assert fused.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    wanted = [t for t, need in zip((x, shift, scale), needs) if need]
    got, expected = _grads(fused, wanted, 1), _grads(plain, wanted, 1)
    if needs[0]:
        assert torch.equal(got.pop(0), expected.pop(0))  # the same products
    for g, e in zip(got, expected):  # sums over the batch and pixels, maybe in another order
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-5)


def test_bias_in_layout_under_autograd_equals_sum_then_layout_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(2, 4, 3, 5, generator=gen).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels last
    y.requires_grad_(True)
    bias = torch.randn(4, generator=gen, requires_grad=True)
    fused = add_bias(y, bias, torch.contiguous_format)
    plain = (y + bias.view(1, -1, 1, 1)).contiguous()
    assert fused.is_contiguous() and torch.equal(fused, plain)
    for got, expected in zip(_grads(fused, [y, bias], 4), _grads(plain, [y, bias], 4)):
        assert torch.equal(got, expected)


def test_zero_padded_affine_layer_pads_in_one_pass_and_matches_float64(monkeypatch):
    layer = LMKANConv2d(4, 6, 3, padding=1, num_grids=5, input_norm="affine", init_scale=2.0)
    unpadded = LMKANConv2d(4, 6, 3, padding=0, num_grids=5, input_norm="none")  # the oracle's layer: no map, no pad
    with torch.no_grad():
        layer.input_scale.uniform_(0.5, 2.0)
        layer.input_shift.normal_()
        layer.bias.normal_()
        unpadded.bias.copy_(layer.bias)
    x = (2 * torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(5))).requires_grad_(True)
    y = layer(x)
    assert "ConstantPadNdBackward0" not in _graph_nodes(y.grad_fn)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6))
    gx, gt = torch.autograd.grad(y, [x, layer.table], dy)
    x64, t64 = x.detach().double().requires_grad_(True), layer.table.detach().double().requires_grad_(True)
    scale, shift = (b.double().view(1, -1, 1, 1) for b in (layer.input_scale, layer.input_shift))
    y64 = reference_conv(unpadded, F.pad(x64, (1, 1, 1, 1)) * scale + shift, t64)
    rx, rt = torch.autograd.grad(y64, [x64, t64], dy.double())
    assert (y.detach().double() - y64).abs().max().item() <= 2e-5 * y64.abs().max().item()
    assert (gx.double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item())
    assert (gt.double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item())
    monkeypatch.setattr("lmkan_surgery.nn.conv.affine_padded", lambda *args: None)  # the plain ops: F.pad, addcmul
    y_plain = layer(x)
    assert "ConstantPadNdBackward0" in _graph_nodes(y_plain.grad_fn)
    assert torch.equal(y, y_plain)
    for got, expected in zip((gx, gt), torch.autograd.grad(y_plain, [x, layer.table], dy)):
        assert torch.equal(got, expected)
