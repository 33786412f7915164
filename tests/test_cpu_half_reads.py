"""How the CPU kernels read half-precision tables (Round 15): the depthwise corner gathers straight from a
bfloat16 table (one 32-bit gather per two adjacent corners), a float16 depthwise table widened once per call, and
the widened copy of the Linear forward's half tables on a 64-byte line. Every way gives the float32 table's bits
(the conversions are exact), on every ISA path, with 1 and 2 threads."""

from __future__ import annotations

import pytest
import torch

from conv_oracles import reference_conv
from isa import isa_path
from lmkan_surgery.nn import LMKANConv2d

HALVES = (torch.float16, torch.bfloat16)


def at_threads(count: int, fn):
    """fn() run with `count` torch threads (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def depthwise_layer(channels: int, grids: int, seed: int) -> LMKANConv2d:
    torch.manual_seed(seed)
    return LMKANConv2d(channels, channels, 3, padding=1, groups=channels, num_grids=grids, init_scale=2.0)


def far_inputs(shape: tuple[int, ...], share: float = 0.15) -> torch.Tensor:
    """Unit-scale inputs with `share` of them far outside the grid (the difference form)."""
    x = 2 * torch.randn(shape)
    return torch.where(torch.rand(shape) < share, 40 * (2 * torch.rand(shape) - 1), x)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", HALVES)
def test_depthwise_half_table_gives_the_float32_tables_bits(native, isa, dtype):
    """A depthwise convolution with a half table equals, bitwise, the one with the float32 table of its values:
    NCHW (8 pixels per vector: the corner gathers) and channels-last (8 groups per vector), widened (784 pixels >=
    4 (G+1)^2) and read as it is (a 5x7 image, batch 1: 35 pixels), an odd channel count (a 1-7 tail of groups and
    pixels), G = 5 and 8 (the last cell's corners at the end of a group's table), 15% far inputs; 1 and 2 threads
    bitwise; and the float64 reference agrees."""
    with isa_path(native, isa):
        for channels, grids, batch, h, w in ((19, 8, 1, 28, 28), (13, 5, 1, 5, 7), (11, 8, 3, 9, 13)):
            layer = depthwise_layer(channels, grids, seed=channels)
            table = layer.table.detach().to(dtype)
            x = torch.nn.functional.pad(far_inputs((batch, channels, h, w)), (1, 1, 1, 1))
            geometry = ([3, 3], [1, 1], [1, 1])
            for fmt in (torch.contiguous_format, torch.channels_last):
                xf = x.contiguous(memory_format=fmt)
                half = [at_threads(n, lambda: native.conv2d_forward(xf, table, *geometry)) for n in (1, 2)]
                full = native.conv2d_forward(xf, table.float(), *geometry)
                assert torch.equal(half[0], half[1]) and torch.equal(half[0], full), (channels, fmt)
            with torch.no_grad():
                layer.table.copy_(table.float())
                layer.bias.zero_()
            truth = reference_conv(layer, x[:, :, 1:-1, 1:-1])
            assert (half[0].double() - truth).abs().max().item() <= 2e-5 * truth.abs().max().item()


@pytest.mark.parametrize("dtype", HALVES)
def test_depthwise_half_table_at_batch_0_and_1(native, dtype):
    """Batch 0 gives an empty output, batch 1 of a 1x1 image (one pixel, the zero partner in every pair but one)
    the float32 table's bits."""
    layer = depthwise_layer(9, 8, seed=3)
    table = layer.table.detach().to(dtype)
    geometry = ([3, 3], [1, 1], [1, 1])
    assert native.conv2d_forward(torch.zeros(0, 9, 3, 3), table, *geometry).shape == (0, 9, 1, 1)
    x = torch.nn.functional.pad(far_inputs((1, 9, 1, 1)), (1, 1, 1, 1))
    assert torch.equal(native.conv2d_forward(x, table, *geometry), native.conv2d_forward(x, table.float(), *geometry))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_widened_linear_half_tables_give_the_float32_tables_bits(native, isa):
    """The Linear forward widens a half table into a line-aligned copy from 4 (G+1)^2 samples on: bitwise the float32
    table's output, odd output counts (a narrow last tile) and 1 output (the few-output path), 1 and 2 threads."""
    with isa_path(native, isa):
        for batch, n_in, n_out, grids in ((400, 30, 37, 8), (1200, 14, 70, 16), (100, 10, 1, 4)):
            torch.manual_seed(n_out)
            x = far_inputs((batch, n_in))
            table = 0.1 * torch.randn(n_in // 2, grids + 1, grids + 1, n_out)
            for dtype in HALVES:
                half = table.to(dtype)
                outs = [at_threads(n, lambda: native.forward(x, half)) for n in (1, 2)]
                assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], native.forward(x, half.float()))
