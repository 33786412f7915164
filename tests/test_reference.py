"""The pure-PyTorch reference (through the op, forced to the reference backend) against an independent loop."""

import pytest
import torch

from lmkan_surgery.ops import backward_reference, forward_reference, lmkan_lookup, lookup2d_op
from lmkan_surgery.ops import reference as reference_module
from oracles import naive_lookup, rel_err


@pytest.fixture(autouse=True)
def _reference_backend(monkeypatch):
    monkeypatch.setenv("LMKAN_BACKEND", "reference")


@pytest.mark.parametrize("batch,pairs,outputs,g", [(1, 1, 1, 3), (7, 3, 5, 8), (16, 4, 3, 28), (5, 2, 9, 64)])
def test_forward_matches_naive_loop(batch, pairs, outputs, g):
    x = torch.randn(batch, 2 * pairs, dtype=torch.float64) * 2
    x[0, 0] = 40.0  # far outside the grid on both sides
    x[-1, -1] = -35.0
    table = torch.randn(pairs, g + 1, g + 1, outputs, dtype=torch.float64)
    assert rel_err(forward_reference(x, table), naive_lookup(x, table)) < 1e-12


def test_float32_close_to_float64():
    x = torch.randn(64, 10)
    table = torch.randn(5, 9, 9, 7)
    assert rel_err(forward_reference(x, table), naive_lookup(x, table)) < 1e-5


def test_chunking_does_not_change_the_result(monkeypatch):
    x = torch.randn(37, 6, dtype=torch.float64)
    table = torch.randn(3, 5, 5, 4, dtype=torch.float64)
    gy = torch.randn(37, 4, dtype=torch.float64)
    whole = forward_reference(x, table), *backward_reference(gy, x, table)
    monkeypatch.setattr(reference_module, "CHUNK_BYTES", 1)  # one row per chunk
    chunked = forward_reference(x, table), *backward_reference(gy, x, table)
    for a, b in zip(chunked, whole):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13)


def test_explicit_backward_matches_autograd_of_the_naive_loop():
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    table = torch.randn(4, 6, 6, 3, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(6, 3, dtype=torch.float64)
    # the reference forward is built from differentiable torch ops: autograd through it is a second oracle
    grad_x, grad_table = torch.autograd.grad(forward_reference(x, table), (x, table), gy)
    ours_x, ours_table = backward_reference(gy, x.detach(), table.detach())
    assert rel_err(ours_x, grad_x) < 1e-12
    assert rel_err(ours_table, grad_table) < 1e-12


def test_table_gradient_keeps_the_cross_weight_where_the_cross_difference_is_zero():
    """Autograd through the forward is an oracle for the kernels' table gradients (the conv tests use it): a cell whose
    cross difference is exactly 0 (a separable pair, as exact init makes) must still get the weight t1 t2 -- a mask
    on the cross term dropped it, off by t1 t2 gy (hundreds) at inputs far outside the grid."""
    nodes = torch.arange(9, dtype=torch.float64)
    separable = (nodes[:, None] + 2 * nodes[None, :])[..., None].repeat(1, 1, 3)  # cross difference exactly 0
    table = torch.stack([separable, torch.randn(9, 9, 3, dtype=torch.float64)]).requires_grad_(True)
    x = torch.tensor([[30.0, -25.0, 0.4, 18.0], [-0.3, 0.2, -40.0, -33.0], [1e3, 2e3, 0.1, 0.1]],
                     dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 3, dtype=torch.float64)
    ours_x, ours_table = torch.autograd.grad(forward_reference(x, table), (x, table), gy)
    naive_table, = torch.autograd.grad(naive_lookup(x, table), (table,), gy)
    explicit_x, explicit_table = backward_reference(gy, x.detach(), table.detach())
    assert rel_err(ours_table, naive_table) < 1e-12
    assert rel_err(ours_table, explicit_table) < 1e-12 and rel_err(ours_x, explicit_x) < 1e-12
    # inputs so far out that t1 t2 overflows: the zero-cross pair stays finite, in value and gradient
    huge = torch.tensor([[1e200, -1e200, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = forward_reference(huge, table.detach())
    assert torch.isfinite(y).all()
    assert torch.isfinite(torch.autograd.grad(y.sum(), huge)[0]).all()


def test_gradcheck_float64():
    # keep inputs away from cell borders (the kinks) and include both extrapolation regions
    x = torch.tensor([[0.31, -0.77, 5.2, -0.05], [-6.4, 1.13, 0.52, 2.71]], dtype=torch.float64, requires_grad=True)
    table = torch.randn(2, 5, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lookup2d_op, (x, table))


def test_low_precision_inputs_compute_in_float32():
    x = torch.randn(4, 3, 6)
    table = torch.randn(3, 9, 9, 5)
    for dtype in (torch.float16, torch.bfloat16):
        y = lmkan_lookup(x.to(dtype), table)
        assert y.dtype == dtype and y.shape == (4, 3, 5)
        expected = lmkan_lookup(x.to(dtype).float(), table)
        assert torch.equal(y, expected.to(dtype))


def test_non_finite_inputs_propagate_instead_of_crashing():
    x = torch.tensor([[float("nan"), 1.0, 0.5, -0.25], [0.1, 0.2, 0.3, 0.4]])
    y = lmkan_lookup(x, torch.randn(2, 9, 9, 3))
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()
