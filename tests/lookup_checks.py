"""Checks shared by the lookup kernel tests: random cases with far inputs, exact-init-like tables, and "as accurate
as the float32 reference" against float64."""

from __future__ import annotations

import torch

from lmkan_surgery.ops.reference import backward_reference, forward_reference


def lookup_inputs(shape, seed, scale=3.0, far=1e3):
    """x with a mix of in-grid values and values up to |far|, a random table and an output gradient."""
    batch, pairs, grids, n_out = shape
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(batch, 2 * pairs, generator=gen)
    mask = torch.rand(batch, 2 * pairs, generator=gen) < 0.2
    x = torch.where(mask, far * (2 * torch.rand(batch, 2 * pairs, generator=gen) - 1), x)
    table = torch.randn(pairs, grids + 1, grids + 1, n_out, generator=gen)
    grad_out = torch.randn(batch, n_out, generator=gen)
    return x, table, grad_out


def assert_as_accurate(out, ref32, ref64, rel=1e-5):
    """out is within rel * max|ref64| of the float64 reference, plus twice the float32 reference's own error."""
    scale = ref64.abs().max().item()
    own = (ref32.double() - ref64).abs().max().item()
    err = (out.double() - ref64).abs().max().item()
    assert err <= rel * scale + 2 * own, f"error {err:.3g} vs scale {scale:.3g} (float32 reference error {own:.3g})"


def separable_table(pairs, grids, n_out, gen):
    """T = A[i] + B[j] with entries on a 2^-12 lattice: no cross term (as exact init builds), exactly representable."""
    step = 2.0**-12
    a = torch.round(torch.randn(pairs, grids + 1, n_out, generator=gen) / step) * step
    b = torch.round(torch.randn(pairs, grids + 1, n_out, generator=gen) / step) * step
    return (a[:, :, None, :] + b[:, None, :, :]).contiguous()


def check_against_reference(native, x, table, grad_out):
    """The native forward, grad_x and grad_table as accurate as the float32 reference is (float64 as the truth)."""
    y = native.forward(x, table)
    grad_x, grad_table = native.backward(grad_out, x, table, True, True)
    assert_as_accurate(y, forward_reference(x, table), forward_reference(x.double(), table.double()))
    gx32, gt32 = backward_reference(grad_out, x, table)
    gx64, gt64 = backward_reference(grad_out.double(), x.double(), table.double())
    assert_as_accurate(grad_x, gx32, gx64)
    assert_as_accurate(grad_table, gt32, gt64)
