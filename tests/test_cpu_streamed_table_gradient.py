"""The fused conv backward's streamed table gradient (a group's gradient from 4x LMKAN_CPU_LARGE_TABLE_BYTES on is
accumulated in a per-thread scratch and written out with non-temporal stores): the same bits as the gradient written
in place, within the float64 reference's tolerance, 1 vs 2 threads bitwise, on every instruction-set path."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.nn import LMKANConv2d
from conv_oracles import check_gradients, grads_at_threads
from isa import isa_path

LARGE_TABLE_ENV = "LMKAN_CPU_LARGE_TABLE_BYTES"  # "0": every group's table gradient streamed (where rows are lines)


def _layer_and_input(out_channels: int, groups: int, batch: int, size: int, table_dtype=None):
    """A training layer (both gradients, so the fused backward) at G = 3 and its input, 10% of it far outside the
    grid."""
    torch.manual_seed(out_channels + batch)
    layer = LMKANConv2d(30, out_channels, 3, padding=1, groups=groups, num_grids=3, init_scale=2.0,
                        table_dtype=table_dtype)
    x = torch.randn(batch, 30, size, size)
    x = torch.where(torch.rand(x.shape) < 0.1, 40 * (2 * torch.rand(x.shape) - 1), x)
    return layer, x.requires_grad_(True), torch.randn(batch, out_channels, size, size)


# (outputs, groups, batch, size): 2 groups of 32 outputs (rows of two lines), 68 pairs in one chunk, 1152 pixels in
# two blocks; one image (one block) of 48 outputs; 40 outputs (rows not whole lines: written in place either way)
SHAPES = [(64, 2, 2, 24), (48, 1, 1, 9), (40, 1, 1, 7)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", SHAPES)
def test_streamed_table_gradient_same_bits_as_in_place(native, shape, isa, monkeypatch):
    """Streamed (threshold 0) and in place (default threshold: these gradients are small) give the same bits; the
    streamed run also against float64 and on 1 and 2 threads (check_gradients). Each call twice: the second on the
    scratch the first left (zeroed again after each chunk)."""
    layer, x, dy = _layer_and_input(*shape)
    with isa_path(native, isa):
        monkeypatch.delenv(LARGE_TABLE_ENV, raising=False)
        in_place = grads_at_threads(layer, x, dy, counts=(2,))[0]
        monkeypatch.setenv(LARGE_TABLE_ENV, "0")
        for _ in range(2):
            streamed = check_gradients(layer, x, dy)
            assert all(torch.equal(a, b) for a, b in zip(in_place, streamed))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_streamed_table_gradient_with_half_tables(native, dtype, monkeypatch):
    """A half table's gradient (float32 sums, returned in the table's dtype) is streamed as a float32 table's."""
    layer, x, dy = _layer_and_input(64, 2, 1, 11, table_dtype=dtype)
    in_place = grads_at_threads(layer, x, dy, counts=(1,))[0]
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    streamed = check_gradients(layer, x, dy)
    assert all(torch.equal(a, b) for a, b in zip(in_place, streamed))


def test_streamed_table_gradient_at_batch_zero(native, monkeypatch):
    """No images: both gradients zero, as in place."""
    monkeypatch.setenv(LARGE_TABLE_ENV, "0")
    layer, x, dy = _layer_and_input(32, 1, 0, 5)
    gx, gt = torch.autograd.grad(layer(x), [x, layer.table], dy, allow_unused=True)
    assert gx.shape == x.shape and not gx.any()
    assert gt is None or not gt.any()
