"""The CPU kernels' few-output path (N_out < 8: 8 samples per vector) and the vector tails of wider layers, against
the float64 reference: far and NaN inputs, half tables, batches 0 and 1, and thread-count independence."""

from __future__ import annotations

import pytest
import torch

from lmkan_surgery.ops.reference import forward_reference
from isa import isa_path
from lookup_checks import assert_as_accurate, check_against_reference, lookup_inputs, separable_table

# (B, P, G, N_out): every few-output count, batches not a multiple of 8, G above 16 (the grid read from memory, not
# registers), N_out = 8 and 9 around the switch, and wide layers with a narrow rest (13, 61: vector tails).
SHAPES = [(1, 1, 3, 1), (13, 5, 4, 2), (29, 7, 8, 3), (40, 3, 16, 4), (9, 17, 20, 5), (64, 4, 8, 6), (23, 6, 28, 7),
          (17, 3, 8, 8), (31, 5, 4, 9), (37, 4, 8, 13), (256, 31, 8, 61), (2, 64, 4, 1)]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("shape", SHAPES)
def test_few_outputs_match_reference(native, shape, isa):
    """Forward, grad_x and grad_table with 20% of the inputs up to 1e3 away (far records: the difference form)."""
    x, table, grad_out = lookup_inputs(shape, seed=sum(shape))
    with isa_path(native, isa):
        check_against_reference(native, x, table, grad_out)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_few_outputs_nan_and_inf_rows(native, isa):
    """A NaN input makes its sample's outputs NaN and an infinite one non-finite; the other samples of the same
    8-sample vector stay as accurate as the reference."""
    x, table, _ = lookup_inputs((16, 9, 8, 3), seed=11)
    x[5, 17] = float("nan")
    x[9, 0] = float("inf")
    with isa_path(native, isa):
        y = native.forward(x, table)
    assert torch.isnan(y[5]).all() and not torch.isfinite(y[9]).any()
    keep = torch.ones(16, dtype=torch.bool)
    keep[[5, 9]] = False
    assert_as_accurate(y[keep], forward_reference(x[keep], table), forward_reference(x[keep].double(), table.double()))


def test_few_outputs_exact_linear_table_far_away(native):
    """T = A[i] + B[j] (no cross term, as exact init builds) stays finite and float32-accurate for |x| up to 1e20 on
    the lane path too."""
    pairs, grids, n_out = 6, 8, 2
    gen = torch.Generator().manual_seed(4)
    table = separable_table(pairs, grids, n_out, gen)
    x = torch.randn(40, 2 * pairs, generator=gen) * torch.logspace(0, 20, 40)[:, None]
    y = native.forward(x, table).double()
    truth = forward_reference(x.double(), table.double())
    assert torch.isfinite(y).all()
    # float32 rounding of terms up to |x| (the 4-weight form would overflow: t1 t2 ~ 1e40)
    scale = truth.abs().amax(1, keepdim=True) + 1.0
    assert ((y - truth).abs() <= 1e-5 * scale).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [3, 200])  # read as half lane by lane; widened to float32 first
def test_few_outputs_half_tables_give_the_float32_bits(native, dtype, batch):
    x, table, grad_out = lookup_inputs((batch, 7, 8, 3), seed=batch)
    half = table.to(dtype)
    same = half.float()
    y, (gx, gt) = native.forward(x, half), native.backward(grad_out, x, half, True, True)
    y32, (gx32, gt32) = native.forward(x, same), native.backward(grad_out, x, same, True, True)
    assert torch.equal(y, y32) and torch.equal(gx, gx32)
    assert gt.dtype == dtype and torch.equal(gt, gt32.to(dtype))


def test_few_outputs_empty_and_single_sample(native):
    table = torch.randn(3, 5, 5, 2)
    assert native.forward(torch.zeros(0, 6), table).shape == (0, 2)
    grad_x, grad_table = native.backward(torch.zeros(0, 2), torch.zeros(0, 6), table, True, True)
    assert grad_x.shape == (0, 6) and torch.equal(grad_table, torch.zeros_like(table))
    x, table, grad_out = lookup_inputs((1, 3, 4, 2), seed=2)
    check_against_reference(native, x, table, grad_out)


def test_few_outputs_only_requested_gradients(native):
    x, table, grad_out = lookup_inputs((21, 4, 8, 1), seed=8)
    gx_both, gt_both = native.backward(grad_out, x, table, True, True)
    gx, gt = native.backward(grad_out, x, table, True, False)
    assert torch.equal(gx, gx_both) and gt.numel() == 0
    gx, gt = native.backward(grad_out, x, table, False, True)
    assert gx.numel() == 0 and torch.equal(gt, gt_both)


def test_few_outputs_one_and_two_threads_bitwise(native):
    """Above the serial cut (2^17 evaluations) two threads split grad_x by samples and grad_table by pairs; one
    thread computes both in one pass: the same bits."""
    threads = torch.get_num_threads()
    try:
        for shape in [(4100, 40, 8, 1), (1000, 30, 4, 5)]:
            x, table, grad_out = lookup_inputs(shape, seed=9)
            runs = []
            for count in (1, 2):
                torch.set_num_threads(count)
                runs.append((native.forward(x, table), *native.backward(grad_out, x, table, True, True)))
            for a, b in zip(*runs):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
