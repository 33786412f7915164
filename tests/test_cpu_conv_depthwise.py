"""The direct CPU convolution with one output channel per group (depthwise): the pixel-vectorised forward and
backward kernels and the group-parallel backward, against the float64 naive-patch reference; every ISA path,
layouts, threads, batch 0, inputs up to 1e30."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d

from conv_oracles import check_gradients, grads_at_threads, reference_conv, reference_grads
from isa import isa_path


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_depthwise_kernel_on_every_path(native, isa):
    """One output channel per group takes the pixel-vectorised kernel (8 pixels per vector, a tail of 1-7): odd
    channel count, strides (1, 2), both layouts, 20% of the inputs far outside the grid, a bfloat16 table."""
    with isa_path(native, isa):
        torch.manual_seed(7)
        for dtype in (None, torch.bfloat16):
            layer = LMKANConv2d(13, 13, 3, stride=(1, 2), padding=1, groups=13, init_scale=2.0, table_dtype=dtype)
            with torch.no_grad():
                layer.bias.normal_()
            x = 3 * torch.randn(2, 13, 9, 19)
            x = torch.where(torch.rand(x.shape) < 0.2, 1e3 * (2 * torch.rand(x.shape) - 1), x)
            truth = reference_conv(layer, x)
            for memory_format in (torch.contiguous_format, torch.channels_last):
                with torch.no_grad():
                    y = layer(x.contiguous(memory_format=memory_format))
                assert (y.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


def test_depthwise_kernel_threads_and_inputs_up_to_1e30(native):
    """1 and 2 threads agree bitwise (96 channels at 28x28: above the serial cut), and a depthwise layer whose table
    has a zero cross term (T = A[i] + B[j], as exact conversion builds) stays finite and within float32 rounding of
    the float64 reference for |x| up to 1e30 (the zero cross term is skipped, never inf * 0)."""
    torch.manual_seed(8)
    layer = LMKANConv2d(96, 96, 3, padding=1, groups=96)
    step = 2.0**-12
    shape = layer.table.shape  # [groups, P, n, n, 1]
    a = torch.round(torch.randn(*shape[:3], 1, 1) / step) * step
    b = torch.round(torch.randn(*shape[:2], 1, shape[3], 1) / step) * step
    with torch.no_grad():
        layer.table.copy_(a + b)
    x = torch.randn(2, 96, 28, 28)
    x = torch.where(torch.rand(x.shape) < 0.3, 1e30 * (2 * torch.rand(x.shape) - 1), x)
    threads = torch.get_num_threads()
    outs = []
    try:
        with torch.no_grad():
            for count in (1, 2):
                torch.set_num_threads(count)
                outs.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.isfinite(outs[0]).all()
    truth = reference_conv(layer, x)
    assert (outs[0].double() - truth).abs().max().item() <= 1e-5 * truth.abs().max().item()


def test_many_groups_backward_one_group_per_thread(native):
    """With at least twice as many groups as threads each group's backward runs on one thread (depthwise and a
    grouped layer with 8 outputs per group): the same bits as on one thread, and the float64 gradients."""
    torch.manual_seed(23)
    for layer in (LMKANConv2d(12, 12, 3, padding=1, groups=12, init_scale=2.0),
                  LMKANConv2d(8, 32, 3, stride=2, padding=1, groups=4, init_scale=2.0)):
        x = (2 * torch.randn(3, layer.in_channels, 30, 30)).requires_grad_(True)
        dy = torch.randn(layer(x).shape)
        runs = grads_at_threads(layer, x, dy)
        assert all(torch.equal(a, b) for a, b in zip(*runs)), layer
        rx, rt = reference_grads(layer, x, dy)
        assert (runs[1][0].double() - rx).abs().max().item() <= 2e-5 * max(1.0, rx.abs().max().item()), layer
        assert (runs[1][1].double() - rt).abs().max().item() <= 2e-5 * max(1.0, rt.abs().max().item()), layer


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_depthwise_backward_pixel_vectorised_on_every_path(native, isa):
    """One output per group and >= 2 groups: the pixel-vectorised backward (no records). NCHW stride 1 (8 consecutive
    windows: vector loads and x-gradient stores), stride (1, 2) with dilation and channels_last (element by
    element), 2 input channels per group, odd sizes (a 1-7 pixel tail), 15% of the inputs 12 away, float16 and
    bfloat16 tables, x-only and table-only gradients: vs float64 autograd through the naive reference, 1 and 2
    threads bitwise equal."""
    with isa_path(native, isa):
        cases = ((10, 10, 1, 1, torch.contiguous_format, None, 5),
                 (7, 7, (1, 2), 2, torch.channels_last, torch.float16, 8),
                 (12, 6, 1, (2, 1), torch.contiguous_format, torch.bfloat16, 3))
        for seed, (c_in, groups, stride, dilation, memory_format, dtype, grids) in enumerate(cases):
            torch.manual_seed(40 + seed)
            layer = LMKANConv2d(c_in, groups, 3, stride, padding=1, dilation=dilation, groups=groups,
                                num_grids=grids, init_scale=2.0, table_dtype=dtype)
            x = 2 * torch.randn(2, c_in, 13, 11)
            x = torch.where(torch.rand(x.shape) < 0.15, 12 * (2 * torch.rand(x.shape) - 1), x)
            x = x.contiguous(memory_format=memory_format).requires_grad_(True)
            dy = torch.randn(layer(x).shape)
            gx, gt = check_gradients(layer, x, dy)
            (only_x,) = torch.autograd.grad(layer(x), [x], dy)
            assert torch.equal(only_x, gx)  # the same kernel without the table gradient
            (only_table,) = torch.autograd.grad(layer(x.detach()), [layer.table], dy)
            assert torch.equal(only_table, gt)


def test_depthwise_backward_batch_0_and_chunks_in_order(native):
    """Batch 0 gives a zero table gradient; a batch of 3 (pixel blocks across image boundaries) gives the x
    gradients of 3 one-image calls and their table gradients' sum (to float32 rounding: the blocks differ)."""
    torch.manual_seed(45)
    layer = LMKANConv2d(9, 9, 3, padding=1, groups=9, init_scale=2.0)
    empty = torch.zeros(0, 9, 8, 8, requires_grad=True)
    (gt0,) = torch.autograd.grad(layer(empty).sum(), [layer.table])
    assert gt0.shape == layer.table.shape and not gt0.any()
    x = torch.randn(3, 9, 17, 15, requires_grad=True)
    dy = torch.randn(3, 9, 17, 15)
    gx, gt = torch.autograd.grad(layer(x), [x, layer.table], dy)
    single = [torch.autograd.grad(layer(x[i:i + 1]), [x, layer.table], dy[i:i + 1]) for i in range(3)]
    own = sum(g[0].double() for g in single)  # each image's x gradient comes from its own pixels only
    assert (gx.double() - own).abs().max().item() <= 1e-6 * own.abs().max().item()
    total = sum(g[1].double() for g in single)
    assert (gt.double() - total).abs().max().item() <= 1e-5 * total.abs().max().item()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_depthwise_channels_last_groups_per_vector_same_bits(native, isa):
    """Channels-last input with one channel per group takes 8 groups per vector (here 19 groups: two vectors and 3
    groups by pixels), NCHW 8 pixels per vector: per output the same arithmetic, so both layouts give the same
    forward bits (far inputs and a float16 table included), and the float64 reference agrees; the backward's runs of
    8 groups: both gradients vs float64, 1 and 2 threads bitwise equal."""
    with isa_path(native, isa):
        torch.manual_seed(47)
        for dtype in (None, torch.float16):
            layer = LMKANConv2d(19, 19, 3, padding=1, groups=19, init_scale=2.0, table_dtype=dtype)
            x = 2 * torch.randn(2, 19, 11, 10)
            x = torch.where(torch.rand(x.shape) < 0.2, 40 * (2 * torch.rand(x.shape) - 1), x)
            with torch.no_grad():
                y_nchw = layer(x)
                y_last = layer(x.contiguous(memory_format=torch.channels_last))
            assert torch.equal(y_nchw, y_last.contiguous())
            truth = reference_conv(layer, x)
            assert (y_last.double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()
            x_last = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            dy = torch.randn(y_last.shape)
            check_gradients(layer, x_last, dy)
