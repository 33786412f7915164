"""The AVX-512 path's pre-pass for G <= 16 (16 pairs per zmm: cells by a binary search over the thresholds, records
written as whole vectors into the pair-chunk-major layout) against the AVX2 path's 8-pair pre-pass, bit for bit, and
against the float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkan_surgery.nn import LMKANConv2d
from isa import isa_path, on_avx512_and_avx2
from lookup_checks import check_against_reference, lookup_inputs

# (B, P, G, N_out): P around multiples of 16 (a masked last group, one pair, whole groups), every counted G class
# (fused pair chunks of 56, 25, 12 and 7 pairs at G = 5, 8, 12, 16: groups of 16 pairs split across chunks), the
# large-table forward (a 14.8 MB table) and the backward's records.
SHAPES = [
    (37, 1, 3, 24),
    (50, 7, 5, 70),
    (41, 15, 8, 32),
    (64, 16, 16, 32),
    (29, 17, 12, 130),
    (33, 31, 16, 24),
    (45, 33, 8, 64),
    (20, 64, 16, 200),
]


def _inputs(shape, seed):
    """lookup_inputs with a NaN, +inf and -inf among the inputs (their samples' outputs are non-finite)."""
    x, table, grad_out = lookup_inputs(shape, seed=seed)
    x[3, -1], x[5, 0], x[7, x.shape[1] // 2] = float("nan"), float("inf"), -float("inf")
    return x, table, grad_out


@pytest.mark.parametrize("shape", SHAPES)
def test_avx512_prepass_gives_the_avx2_bits(native, shape):
    """Forward, grad_x and grad_table on the AVX-512 path equal the AVX2 path's bit for bit (near, far, NaN and
    infinite inputs), and the finite samples match the float64 reference."""
    x, table, grad_out = _inputs(shape, seed=sum(shape))
    wide, narrow = on_avx512_and_avx2(
        native, lambda: (native.forward(x, table), *native.backward(grad_out, x, table, True, True)))
    for a, b in zip(wide, narrow):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    finite = torch.isfinite(x).all(dim=1)
    with isa_path(native, "avx512"):
        check_against_reference(native, x[finite], table, grad_out[finite])


def test_avx512_conv_cells_give_the_avx2_bits(native):
    """The direct convolution locates its inputs with the same 16-lane search (locate_span): same bits as AVX2."""
    gen = torch.Generator().manual_seed(7)
    layer = LMKANConv2d(6, 20, 3, padding=1, num_grids=16, init_scale=2.0)
    xc = F.pad(3 * torch.randn(2, 6, 9, 7, generator=gen), layer._pads())
    geometry = (list(layer.kernel_size), list(layer.stride), list(layer.dilation))
    wide, narrow = on_avx512_and_avx2(native, lambda: native.conv2d_forward(xc, layer.table.detach(), *geometry))
    assert torch.equal(wide, narrow)
